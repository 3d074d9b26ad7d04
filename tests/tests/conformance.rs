//! The conformance guests of `guests/conformance/`: one rule of the WASIX context ABI
//! (`docs/wasix-context-abi.md`) per guest, or per argument of a table-driven
//! guest. Every guest also checks itself and exits 1 with a `FAIL` line on a violation; the
//! tests compare the whole stdout and the exit code.

use weft_e2e::{Outcome, run_guest, run_guest_with};

/// `weft run`'s exit status for a guest that trapped (wasmtime's convention: 128 + SIGABRT).
const TRAP_EXIT_CODE: i32 = 134;
/// `weft run`'s exit status when a context's entrypoint returned (the WASIX convention).
const ENTRYPOINT_RETURNED_EXIT_CODE: i32 = 129;

fn assert_trapped(outcome: &Outcome, trap_message: &str) {
    outcome
        .assert_exit_code(TRAP_EXIT_CODE)
        .assert_stderr_contains(&[trap_message, "wasm backtrace"]);
}

#[test]
fn lifecycle_create_runs_nothing_switch_starts_and_resumes_destroy_releases() {
    run_guest("lifecycle", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "main: main context id is 0
main: created a context with a non-zero id
main: the entrypoint has not run yet
worker: first run (step 1)
main: back in main (step 1)
worker: resumed where it stopped (step 2)
main: back in main again (step 2)
main: a second context got a different id
main: destroyed both contexts
",
        );
}

#[test]
fn create_with_a_bad_entrypoint_is_einval() {
    run_guest("create_einval", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok create(null slot 0) -> EINVAL
ok create(index 0x7fffffff, past the table) -> EINVAL
ok create(index 0xffffffff, past the table) -> EINVAL
ok create(index 100000 past a function) -> EINVAL
ok create(int (*)(int)) -> EINVAL
ok create(int (*)(void)) -> EINVAL
ok create(void (*)(long long)) -> EINVAL
ok create(double (*)(void)) -> EINVAL
ok wasix_context_create(null) -> -1, errno EINVAL
ok wasix_context_create(int (*)(int)) -> -1, errno EINVAL
ok create(void (*)(void)) -> SUCCESS
ok destroy(it) -> SUCCESS
",
        );
}

#[test]
fn create_with_a_bad_id_pointer_is_efault() {
    run_guest("create_efault", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok create(id in the last 8 bytes of memory) -> SUCCESS
ok switch(the id read back from there) -> SUCCESS
ok destroy(it) -> SUCCESS
ok create(id at 0xfffffff8, outside memory) -> EFAULT
ok create(id at 0xffffffff, outside memory) -> EFAULT
ok create(id at the end of memory) -> EFAULT
ok create(id straddling the end of memory by 4 bytes) -> EFAULT
ok create(id straddling the end of memory by 1 byte) -> EFAULT
ok create(id at an unaligned address) -> SUCCESS
ok switch(the id read back from the unaligned address) -> SUCCESS
ok destroy(it) -> SUCCESS
",
        );
}

#[test]
fn switch_to_the_active_context_is_a_no_op() {
    run_guest("switch_self", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok main: switch(main) -> SUCCESS
ok main: wasix_context_switch(wasix_context_main) -> 0
ok main: switch(main) with a context suspended -> SUCCESS
ok context: switch(its own id) -> SUCCESS
ok context: switch(its own id) again -> SUCCESS
ok main: switch(context) -> SUCCESS
main: the context ran to its switch back without interruption
",
        );
}

#[test]
fn switch_to_a_context_that_is_not_suspended_is_einval() {
    run_guest("switch_einval", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok switch(1), never created -> EINVAL
ok switch(12345), never created -> EINVAL
ok switch(UINT64_MAX), never created -> EINVAL
ok switch(1 << 63), never created -> EINVAL
ok switch(live id ^ 1 << 32) -> EINVAL
ok switch(live id + 1 << 32) -> EINVAL
ok switch(live id ^ 1 << 63) -> EINVAL
ok switch(live id) -> SUCCESS
ok switch(id destroyed before it ran) -> EINVAL
ok switch(id destroyed after it ran) -> EINVAL
ok wasix_context_switch(destroyed id) -> -1, errno EINVAL
main: no failed switch ran a context
",
        );
}

#[test]
fn destroy_rules_main_active_suspended_deleted() {
    run_guest("destroy_rules", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok destroy(main) -> EINVAL
ok wasix_context_destroy(wasix_context_main) -> -1, errno EINVAL
ok destroy(suspended, never ran) -> SUCCESS
ok destroy(it again: deleted) -> SUCCESS
ok switch(it) -> EINVAL
ok destroy(suspended in a 50-deep recursion) -> SUCCESS
ok destroy(it again: deleted) -> SUCCESS
ok switch(it) -> EINVAL
ok destroy(424242, never created) -> SUCCESS
ok context: destroy(main) -> EINVAL
ok context: destroy(itself, the active context) -> EINVAL
ok context: destroy(another suspended context) -> SUCCESS
ok context: switch(the context it destroyed) -> EINVAL
ok destroy(the destroyer) -> SUCCESS
ok destroy(the victim: already deleted) -> SUCCESS
",
        );
}

#[test]
fn destroy_releases_resources_over_twenty_thousand_rounds() {
    run_guest("destroy_releases", &[])
        .assert_exit_code(0)
        .assert_stdout("ok 20000 rounds of create, run, destroy\n");
}

#[test]
fn a_thousand_live_contexts_with_unique_never_reused_ids() {
    run_guest("many_contexts", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok 1000 contexts created and started
ok 1000 contexts resumed in reverse order with their locals intact
ok 1000 contexts destroyed
ok all ids non-zero and unique, deleted ids never reused
",
        );
}

#[test]
fn contexts_switch_to_each_other_without_main() {
    run_guest("ring", &[]).assert_exit_code(0).assert_stdout(
        "context 2: lap 100 done, 100 hops of my own, back to main
main: the token went around 100 times (300 hops)
",
    );
}

#[test]
fn printf_arrays_varargs_and_recursion_keep_their_data_in_every_context() {
    let mut expected = String::new();
    for round in 0..6 {
        for (index, name) in ["A", "B", "C", "D"].iter().enumerate() {
            let sum = 512 * (index as i64 * 100_000 + round) + 511 * 512 / 2;
            let scale = (1.0 + index as f64 / 4.0) * round as f64;
            expected.push_str(&format!(
                "worker-{name} round {round}: sum={sum} scale={scale:.2} intact\n"
            ));
        }
        expected.push_str(&format!("main: round {round}, main's array intact\n"));
    }
    for name in ["A", "B", "C", "D"] {
        expected.push_str(&format!("worker-{name}: done\n"));
    }
    expected.push_str("main: round 6, main's array intact\n");
    expected.push_str("main: the five stack arrays lie in separate memory\n");
    run_guest("shadow_stack", &[])
        .assert_exit_code(0)
        .assert_stdout(&expected);
}

#[test]
fn host_grown_shadow_stacks_and_the_guest_heap_never_overlap() {
    run_guest("heap_and_stacks", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "ok 48 heap blocks and 16 context stacks are disjoint and intact\n\
             ok malloc still works after the contexts are gone\n",
        );
}

#[test]
fn a_guest_declaring_the_imports_like_wasix_libc_runs_unchanged() {
    run_guest("wasix_libc_style", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "hello from context != 0\nmain: errno of a bad switch: 28\nmain: destroy -> 0\n",
        );
}

#[test]
fn constructors_may_already_use_contexts() {
    run_guest("constructors", &[])
        .assert_exit_code(0)
        .assert_stdout(
            "constructor: created and ran a context, count = 1\n\
         main: the constructor's context still runs, count = 3\n",
        );
}

#[test]
fn an_entrypoint_that_returns_exits_with_129() {
    run_guest("entry_return", &["direct"])
        .assert_exit_code(ENTRYPOINT_RETURNED_EXIT_CODE)
        .assert_stdout(
            "main: switching to a context whose entrypoint returns\n\
             context: returning from its entrypoint\n",
        )
        .assert_stderr_contains(&["returned from its entrypoint"]);
}

#[test]
fn an_entrypoint_that_returns_in_a_nested_context_exits_with_129() {
    run_guest("entry_return", &["nested"])
        .assert_exit_code(ENTRYPOINT_RETURNED_EXIT_CODE)
        .assert_stdout(
            "main: switching to context A\n\
             context A: switching to context B\n\
             context: returning from its entrypoint\n",
        )
        .assert_stderr_contains(&["returned from its entrypoint"]);
}

fn trap_in_context(kind: &str, trap_message: &str) {
    let outcome = run_guest("traps", &[kind]);
    outcome.assert_stdout(&format!(
        "main: switching to context A\ncontext: about to trap ({kind})\n"
    ));
    assert_trapped(&outcome, trap_message);
}

#[test]
fn unreachable_in_a_context_is_a_clean_trap() {
    trap_in_context("unreachable", "unreachable");
}

#[test]
fn division_by_zero_in_a_context_is_a_clean_trap() {
    trap_in_context("divide-by-zero", "integer divide by zero");
}

#[test]
fn out_of_bounds_access_in_a_context_is_a_clean_trap() {
    trap_in_context("out-of-bounds", "out of bounds memory access");
}

#[test]
fn mistyped_indirect_call_in_a_context_is_a_clean_trap() {
    trap_in_context("bad-indirect-call", "indirect call type mismatch");
}

#[test]
fn trap_in_a_context_started_by_another_context_is_a_clean_trap() {
    let outcome = run_guest("traps", &["nested"]);
    outcome.assert_stdout(
        "main: switching to context A\n\
         context A: switching to context B\n\
         context: about to trap (unreachable)\n",
    );
    assert_trapped(&outcome, "unreachable");
}

#[test]
fn deep_recursion_in_a_context_is_a_clean_stack_overflow_trap() {
    let outcome = run_guest("stack_overflow", &["first"]);
    outcome.assert_stdout("main: switching to the context\ncontext: recursing without end\n");
    assert_trapped(&outcome, "call stack exhausted");
}

#[test]
fn deep_recursion_in_a_resumed_context_is_a_clean_stack_overflow_trap() {
    let outcome = run_guest("stack_overflow", &["resumed"]);
    outcome.assert_stdout(
        "main: switching to the context
context: round 0
main: switching to the context
context: round 1
main: switching to the context
context: round 2
main: switching to the context
context: recursing without end
",
    );
    assert_trapped(&outcome, "call stack exhausted");
}

#[test]
fn exit_inside_a_context_flushes_and_exits_with_its_status() {
    run_guest("exits", &["exit-in-context"])
        .assert_exit_code(7)
        .assert_stdout("main: switching to context A\ncontext A: calling exit(7)");
}

#[test]
fn proc_exit_inside_a_nested_context_exits_with_its_status() {
    run_guest("exits", &["proc-exit-nested"])
        .assert_exit_code(9)
        .assert_stdout(
            "main: switching to context A\n\
             context A: switching to context B\n\
             context B: calling _Exit(9)\n",
        );
}

#[test]
fn main_returning_with_suspended_contexts_exits_with_its_status() {
    run_guest("exits", &["main-returns"])
        .assert_exit_code(3)
        .assert_stdout(
            "main: switching to context A\n\
             context A: switching to context B\n\
             context A: switching to main\n\
             main: returning 3 with two contexts suspended\n",
        );
}

/// Contexts that each hold a native stack are refused at create with `EAGAIN` once the live
/// context budget is used up, far below `--max-contexts`: never a trap when the OS refuses a
/// stack at a first switch. (A small budget keeps it fast and independent of the machine's
/// mapping limit.)
#[test]
fn starting_contexts_until_the_live_budget_is_used_up_gives_eagain() {
    run_guest_with(
        &["--max-contexts", "200000", "--max-live-contexts", "300"],
        "exhaust_contexts",
        &[],
    )
    .assert_exit_code(0)
    .assert_stdout(
        "300 contexts started; the next create -> EAGAIN\n\
         ok create(in the room it made) -> SUCCESS\n",
    );
}

const SHADOW_STACK_OVERFLOW: &str =
    "WASIX context 1 overflowed its shadow stack (size 65536; raise --shadow-stack-size)";

#[test]
fn a_context_overflowing_its_shadow_stack_traps_at_its_next_switch() {
    for mode in ["live", "popped"] {
        let outcome = run_guest("shadow_overflow", &[mode]);
        outcome.assert_stdout(&format!(
            "main: switching to the context\n\
             context: a 96 KiB frame ({mode})\n"
        ));
        assert_trapped(&outcome, SHADOW_STACK_OVERFLOW);
    }
}

#[test]
fn a_larger_shadow_stack_holds_the_same_frames() {
    run_guest_with(
        &["--shadow-stack-size", "262144"],
        "shadow_overflow",
        &["live"],
    )
    .assert_exit_code(0)
    .assert_stdout(
        "main: switching to the context\n\
         context: a 96 KiB frame (live)\n\
         main: back in main\n",
    );
}
