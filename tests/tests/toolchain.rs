//! `cargo xtask cc`, the way users build their own guests: a C file written for wasix-libc
//! compiles unchanged with the project's toolchain and flags and runs on `weft run`.

use std::process::Command;

use weft_e2e::{run, weft};

const USER_GUEST: &str = r#"
#include <stdio.h>
#include <string.h>
#include <wasix/context.h>

static wasix_context_id_t other;
static char message[32];

static void other_main(void) {
  char local[32];
  snprintf(local, sizeof local, "hello from %s", "a context");
  strcpy(message, local);
  wasix_context_switch(wasix_context_main);
}

int main(int argc, char **argv) {
  if (wasix_context_create(&other, other_main) != 0) {
    perror("wasix_context_create");
    return 1;
  }
  wasix_context_switch(other);
  printf("%s, %d argument(s)\n", message, argc - 1);
  wasix_context_destroy(other);
  return 0;
}
"#;

#[test]
fn xtask_cc_builds_a_user_guest_that_runs_on_weft() {
    let dir = std::env::temp_dir().join(format!("weft-e2e-cc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    let source = dir.join("user_guest.c");
    let output = dir.join("user_guest.wasm");
    std::fs::write(&source, USER_GUEST).expect("write the guest source");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cc = Command::new(cargo);
    cc.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["xtask", "cc"])
        .arg(&source)
        .arg("-o")
        .arg(&output);
    run(cc).assert_exit_code(0);
    assert!(
        output.is_file(),
        "`cargo xtask cc` wrote no {}",
        output.display()
    );

    let mut weft_run = Command::new(weft());
    weft_run.arg("run").arg(&output).args(["--", "x"]);
    run(weft_run)
        .assert_exit_code(0)
        .assert_stdout("hello from a context, 1 argument(s)\n");
    let _ = std::fs::remove_dir_all(&dir);
}
