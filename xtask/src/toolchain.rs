//! Finding (or installing) a C toolchain that targets wasm32-wasi, and the project's standard
//! compiler flags for guests.
//!
//! Order: wasi-sdk when `WASI_SDK_PATH` is set; Debian clang + lld + wasi-libc; zig (a `zig` on
//! `PATH`, or `python3 -m ziglang`). When none is present: install the Debian packages when root
//! with apt, else pip-install `ziglang` into the target dir, else say exactly what to install.
//! `WEFT_GUEST_TOOLCHAIN=wasi-sdk|debian|zig` forces one of them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{Result, describe, ensure_packages, have, is_root, target_dir, workspace_root};

/// The Debian packages that make up the default toolchain, as `(file that proves it is
/// installed, package)` pairs for `util::ensure_packages`.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("clang-19", "clang-19"),
    ("wasm-ld-19", "lld-19"),
    ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
    (
        "/usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a",
        "libclang-rt-19-dev-wasm32",
    ),
];

/// Debian clang versions accepted when already installed (19 is the one the xtask installs).
const DEBIAN_VERSIONS: &[u32] = &[19, 20, 18];

const INSTALL_HELP: &str = "\
no C toolchain for wasm32-wasi found. Install one of:
    Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y --no-install-recommends \\
                   clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32
    zig:           python3 -m pip install ziglang      (or put a `zig` binary on PATH)
    wasi-sdk:      unpack a release from https://github.com/WebAssembly/wasi-sdk/releases
                   and set WASI_SDK_PATH to its folder";

/// A C compiler for wasm32-wasi: a program, the arguments that select the target, and the
/// environment it needs.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// Short name shown to the user: `wasi-sdk`, `debian-clang-19`, `zig`.
    pub name: String,
    program: PathBuf,
    target_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Toolchain {
    /// A compiler command with the target selected and the project's standard flags applied.
    pub fn command(&self) -> Command {
        self.command_omitting(&[])
    }

    /// Like [`Toolchain::command`], without the standard flags listed in `omitted`.
    pub fn command_omitting(&self, omitted: &[String]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.target_args).args(
            standard_flags()
                .into_iter()
                .filter(|flag| !omitted.iter().any(|o| flag.to_str() == Some(o.as_str()))),
        );
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// A compiler command with the target selected and none of the WASIX guests' flags: a
    /// component guest imports nothing from `wasix_32v1` and must not export its table or stack
    /// pointer (the host never switches its stacks).
    pub fn bare_command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.target_args);
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// A stable text naming the compiler and every flag, so that outputs built with a different
    /// toolchain or flags count as out of date.
    pub fn fingerprint(&self) -> String {
        let mut text = describe(&self.command());
        for (key, value) in &self.env {
            text.push_str(&format!(
                "\n{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
        text
    }
}

/// The flags every guest is compiled with, whatever the toolchain.
///
/// - `-I guests/include`: `<wasix/context.h>`.
/// - `--export-table`: the host resolves a context's entrypoint (a C function pointer, i.e. an
///   index into `__indirect_function_table`) through the exported table.
/// - `--export=__stack_pointer`: every context needs its own shadow stack; the host saves and
///   restores the shared `__stack_pointer` global around each switch, so it must be exported.
pub fn standard_flags() -> Vec<OsString> {
    let include = workspace_root().join("guests").join("include");
    let mut flags: Vec<OsString> = vec!["-O2".into(), "-I".into(), include.into_os_string()];
    flags.extend(
        ["-Wl,--export-table", "-Wl,--export=__stack_pointer"]
            .into_iter()
            .map(OsString::from),
    );
    flags
}

/// Finds a toolchain, installing one when none is present and that is possible.
pub fn find_or_install() -> Result<Toolchain> {
    if let Some(forced) = std::env::var_os("WEFT_GUEST_TOOLCHAIN") {
        return match forced.to_string_lossy().as_ref() {
            "wasi-sdk" => wasi_sdk()?.ok_or_else(|| {
                "WEFT_GUEST_TOOLCHAIN=wasi-sdk needs WASI_SDK_PATH to name an unpacked wasi-sdk"
                    .to_string()
            }),
            "debian" => debian().map_or_else(install_debian, Ok),
            "zig" => zig().map_or_else(install_zig, Ok),
            other => Err(format!(
                "WEFT_GUEST_TOOLCHAIN={other}: expected wasi-sdk, debian or zig"
            )),
        };
    }
    if let Some(found) = wasi_sdk()? {
        return Ok(found);
    }
    if let Some(found) = debian().or_else(zig) {
        return Ok(found);
    }
    let mut tried = Vec::new();
    if is_root() && have("apt-get") {
        match install_debian() {
            Ok(found) => return Ok(found),
            Err(e) => tried.push(e),
        }
    }
    if have("python3") {
        match install_zig() {
            Ok(found) => return Ok(found),
            Err(e) => tried.push(e),
        }
    }
    let mut message = INSTALL_HELP.to_string();
    for failure in tried {
        message.push_str("\n(tried: ");
        message.push_str(&failure);
        message.push(')');
    }
    Err(message)
}

/// Installs Debian's clang, lld and wasi-libc (root with apt only; otherwise says how).
fn install_debian() -> Result<Toolchain> {
    ensure_packages("the wasm32-wasi C toolchain", DEBIAN_PACKAGES)?;
    debian().ok_or_else(|| {
        "the Debian packages are installed but clang-19 still lacks wasm-ld, wasi-libc or the \
         wasm32 builtins"
            .to_string()
    })
}

/// Installs the `ziglang` wheel into the target directory with pip.
fn install_zig() -> Result<Toolchain> {
    let dir = zig_pip_dir();
    eprintln!(
        "xtask: installing the ziglang wheel into {} (about 100 MB)",
        dir.display()
    );
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .arg("--target")
    .arg(&dir)
    .arg("ziglang");
    crate::util::run(&mut pip)?;
    zig().ok_or_else(|| {
        format!(
            "pip installed ziglang into {} but `python3 -m ziglang` does not run",
            dir.display()
        )
    })
}

fn wasi_sdk() -> Result<Option<Toolchain>> {
    let Some(root) = std::env::var_os("WASI_SDK_PATH") else {
        return Ok(None);
    };
    let root = PathBuf::from(root);
    let clang = root.join("bin").join("clang");
    if !clang.is_file() {
        return Err(format!(
            "WASI_SDK_PATH={} has no bin/clang: point it at an unpacked wasi-sdk release, or unset it",
            root.display()
        ));
    }
    let sysroot = root.join("share").join("wasi-sysroot");
    // wasi-sdk 22 and later name the target wasm32-wasip1; older ones only know wasm32-wasi.
    let target = if sysroot.join("lib").join("wasm32-wasip1").is_dir() {
        "wasm32-wasip1"
    } else {
        "wasm32-wasi"
    };
    let mut sysroot_arg = OsString::from("--sysroot=");
    sysroot_arg.push(&sysroot);
    Ok(Some(Toolchain {
        name: "wasi-sdk".into(),
        program: clang,
        target_args: vec![format!("--target={target}").into(), sysroot_arg],
        env: Vec::new(),
    }))
}

fn debian() -> Option<Toolchain> {
    if !Path::new("/usr/lib/wasm32-wasi/libc.a").is_file() {
        return None;
    }
    DEBIAN_VERSIONS.iter().find_map(|version| {
        let clang = format!("clang-{version}");
        let llvm = PathBuf::from(format!("/usr/lib/llvm-{version}"));
        let builtins = llvm.join(format!(
            "lib/clang/{version}/lib/wasi/libclang_rt.builtins-wasm32.a"
        ));
        let linker_present = llvm.join("bin/wasm-ld").is_file();
        (have(&clang) && linker_present && builtins.is_file()).then(|| Toolchain {
            name: format!("debian-clang-{version}"),
            program: clang.into(),
            // Debian's wasi-libc layout only matches the `wasm32-wasi` triple, not `wasm32-wasip1`.
            target_args: vec!["--target=wasm32-wasi".into()],
            env: Vec::new(),
        })
    })
}

fn zig_pip_dir() -> PathBuf {
    target_dir().join("ziglang-pip")
}

fn zig() -> Option<Toolchain> {
    let zig_args = || -> Vec<OsString> {
        ["cc", "-target", "wasm32-wasi"]
            .into_iter()
            .map(OsString::from)
            .collect()
    };
    if have("zig") {
        return Some(Toolchain {
            name: "zig".into(),
            program: "zig".into(),
            target_args: zig_args(),
            env: Vec::new(),
        });
    }
    if !have("python3") {
        return None;
    }
    let mut python_path = vec![zig_pip_dir()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        python_path.extend(std::env::split_paths(&existing));
    }
    let python_path = std::env::join_paths(python_path).ok()?;
    let works = Command::new("python3")
        .args(["-m", "ziglang", "version"])
        .env("PYTHONPATH", &python_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    works.then(|| {
        let mut target_args: Vec<OsString> = vec!["-m".into(), "ziglang".into()];
        target_args.extend(zig_args());
        Toolchain {
            name: "zig".into(),
            program: "python3".into(),
            target_args,
            env: vec![("PYTHONPATH".into(), python_path)],
        }
    })
}
