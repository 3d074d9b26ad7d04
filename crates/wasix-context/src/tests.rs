//! Behaviour tests with hand-written WAT guests (no C toolchain needed).
//!
//! Every guest below gets the same header: the three imports, `env.log` to report values
//! to the host, an exported memory, `__stack_pointer` and a table with
//! `1 = $a`, `2 = $b`, `3 = $wrong_signature` and a null slot 0.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use wasmtime::{Config, Engine, Linker, Module, Store, Trap};

use crate::*;

struct Host {
    wasi: wasmtime_wasi::p1::WasiP1Ctx,
    contexts: WasixContexts,
    log: Vec<i64>,
    /// Lifecycle events drained at each `env.log` call, as an embedder drains at each of
    /// its host calls (empty unless the config records them).
    events: Vec<ContextEvent>,
}

fn contexts(host: &mut Host) -> &mut WasixContexts {
    &mut host.contexts
}

const MAIN_SP: i32 = 65536;

fn header(body: &str) -> String {
    format!(
        r#"(module
        (import "wasix_32v1" "context_create" (func $create (param i32 i32) (result i32)))
        (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
        (import "wasix_32v1" "context_destroy" (func $destroy (param i64) (result i32)))
        (import "env" "log" (func $log (param i64)))
        (import "env" "panic" (func $panic))
        (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
        (memory (export "memory") 2)
        (global $sp (export "__stack_pointer") (mut i32) (i32.const {MAIN_SP}))
        (table (export "__indirect_function_table") 4 funcref)
        (elem (i32.const 1) $a $b $wrong_signature)
        (func $wrong_signature (param i32))
        (func $id (param $ptr i32) (result i64) (i64.load (local.get $ptr)))
        (func $logi (param i32) (call $log (i64.extend_i32_s (local.get 0))))
        {body})"#
    )
}

thread_local! {
    /// Set by [`the_behaviour_tests_pass_on_guests_as_built_too`]: compile guests as written
    /// instead of rewritten.
    static AS_BUILT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A test guest as weft's front ends load it: [`rewrite_guest`] so that it saves its own
/// `__stack_pointer` around `context_switch` (unless [`AS_BUILT`] is set).
fn compile(engine: &Engine, text: impl AsRef<[u8]>) -> wasmtime::Result<Module> {
    let wasm = wat::parse_bytes(text.as_ref())?;
    if AS_BUILT.get() {
        Module::new(engine, &wasm)
    } else {
        let rewritten = rewrite_guest(&wasm);
        Module::new(engine, &*rewritten)
    }
}

fn engine() -> Engine {
    engine_with(false)
}

fn engine_with(pooled_stacks: bool) -> Engine {
    let mut config = Config::new();
    ContextConfig {
        stack_size: 256 * 1024,
        pooled_stacks,
        ..ContextConfig::default()
    }
    .configure_engine(&mut config);
    Engine::new(&config).unwrap()
}

fn linker(engine: &Engine) -> Linker<Host> {
    let mut linker = Linker::new(engine);
    add_to_linker(&mut linker, contexts).unwrap();
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |host: &mut Host| &mut host.wasi).unwrap();
    linker
        .func_wrap(
            "env",
            "log",
            |mut caller: wasmtime::Caller<'_, Host>, v: i64| {
                let host = caller.data_mut();
                host.log.push(v);
                host.events.extend(host.contexts.take_events());
            },
        )
        .unwrap();
    linker
        .func_wrap("env", "panic", |_: wasmtime::Caller<'_, Host>| -> () {
            panic!("host function panicked on purpose")
        })
        .unwrap();
    linker
}

fn store(engine: &Engine, config: ContextConfig) -> Store<Host> {
    Store::new(
        engine,
        Host {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            contexts: WasixContexts::new(config),
            log: Vec::new(),
            events: Vec::new(),
        },
    )
}

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

/// Runs the guest's `main` export; returns its result and the values it logged.
fn run_with(body: &str, config: ContextConfig) -> (wasmtime::Result<()>, Vec<i64>) {
    let engine = engine_with(config.pooled_stacks);
    let module = compile(&engine, header(body)).unwrap();
    check_module(&module).unwrap();
    assert_eq!(
        module.imports().any(|i| i.module() == SAVING_MODULE),
        !AS_BUILT.get(),
        "guests are rewritten unless asked not to be"
    );
    let mut store = store(&engine, config);
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    let result = block_on(main.call_async(&mut store, ()));
    let log = std::mem::take(&mut store.data_mut().log);
    (result, log)
}

fn run(body: &str) -> (wasmtime::Result<()>, Vec<i64>) {
    run_with(body, ContextConfig::default())
}

#[test]
fn main_and_context_ping_pong_with_separate_stack_pointers() {
    let (result, log) = run(r#"
        (func $a
            (local $i i32)
            (call $logi (global.get $sp))
            (loop $again
                (call $logi (i32.add (i32.const 100) (local.get $i)))
                (global.set $sp (i32.sub (global.get $sp) (i32.const 16)))
                (drop (call $switch (i64.const 0)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $again)))
        (func $b)
        (func (export "main")
            (call $logi (call $create (i32.const 0) (i32.const 1)))
            (global.set $sp (i32.const 1000))
            (call $logi (call $switch (call $id (i32.const 0))))
            (call $logi (global.get $sp))
            (call $logi (call $switch (call $id (i32.const 0))))
            (call $logi (call $switch (call $id (i32.const 0))))
            (call $logi (global.get $sp))
            (call $logi (call $destroy (call $id (i32.const 0)))))
    "#);
    result.unwrap();
    assert_eq!(log[0], 0, "create succeeds");
    let context_sp = log[1];
    assert!(
        context_sp >= 2 * 65536,
        "the context's stack lies in host-grown pages"
    );
    assert_eq!(context_sp % 16, 0);
    assert_eq!(&log[2..], &[100, 0, 1000, 101, 0, 102, 0, 1000, 0]);
}

#[test]
fn each_abi_rule_returns_its_errno() {
    let (result, log) = run(r#"
        (func $a
            ;; The active context cannot destroy itself; main cannot be destroyed.
            (call $logi (call $destroy (call $id (i32.const 0))))
            (call $logi (call $destroy (i64.const 0)))
            ;; Switching to itself is a no-op.
            (call $logi (call $switch (call $id (i32.const 0))))
            (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (call $logi (call $create (i32.const 0) (i32.const 1)))
            (call $logi (call $create (i32.const 8) (i32.const 0)))      ;; null slot
            (call $logi (call $create (i32.const 8) (i32.const 3)))      ;; wrong signature
            (call $logi (call $create (i32.const 8) (i32.const 4)))      ;; out of the table
            (call $logi (call $create (i32.const 8) (i32.const -1)))     ;; far out of the table
            (call $logi (call $create                                    ;; id would straddle the end
                (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 4)) (i32.const 2)))
            (call $logi (call $create (i32.const -8) (i32.const 2)))     ;; far outside memory
            (call $logi (call $switch (i64.const 0)))                    ;; self
            (call $logi (call $switch (i64.const 77)))                   ;; never created
            (call $logi (call $switch (i64.const -1)))
            (call $logi (call $destroy (i64.const 0)))                   ;; main
            (call $logi (call $destroy (i64.const 77)))                  ;; never created: no-op
            (call $logi (call $switch (call $id (i32.const 0))))
            (call $logi (call $destroy (call $id (i32.const 0))))
            (call $logi (call $destroy (call $id (i32.const 0))))        ;; already deleted
            (call $logi (call $switch (call $id (i32.const 0)))))       ;; deleted
    "#);
    result.unwrap();
    assert_eq!(
        log,
        [
            0, 28, 28, 28, 28, 21, 21, 0, 28, 28, 28, 0, 28, 28, 0, 0, 0, 0, 28
        ]
    );
}

#[test]
fn failed_creates_leave_no_trace() {
    let (result, log) = run(r#"
        (func $a)
        (func $b)
        (func (export "main")
            (i64.store (i32.const 0) (i64.const -5))
            (call $logi (call $create (i32.const -8) (i32.const 1)))
            (call $log (call $id (i32.const 0)))
            (call $logi (call $create (i32.const 0) (i32.const 1)))
            (call $log (call $id (i32.const 0))))
    "#);
    result.unwrap();
    assert_eq!(log, [21, -5, 0, 1], "the first id handed out is 1");
}

#[test]
fn context_to_context_ring_and_destroy_from_another_context() {
    // main -> a -> b -> a -> main; then b destroys a, which is suspended.
    let (result, log) = run(r#"
        (func $a
            (call $logi (i32.const 1))
            (drop (call $switch (call $id (i32.const 8))))
            (call $logi (i32.const 3))
            (drop (call $switch (i64.const 0)))
            (unreachable))
        (func $b
            (call $logi (i32.const 2))
            (drop (call $switch (call $id (i32.const 0))))
            (call $logi (i32.const 5))
            (call $logi (call $destroy (call $id (i32.const 0))))
            (call $logi (call $switch (call $id (i32.const 0))))
            (drop (call $switch (i64.const 0))))
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $create (i32.const 8) (i32.const 2)))
            (call $logi (call $switch (call $id (i32.const 0))))
            (call $logi (i32.const 4))
            (call $logi (call $switch (call $id (i32.const 8))))
            (call $logi (global.get $sp)))
    "#);
    result.unwrap();
    assert_eq!(log, [1, 2, 3, 0, 4, 5, 0, 28, 0, i64::from(MAIN_SP)]);
}

#[test]
fn returning_entrypoint_terminates_and_traps_main() {
    let (result, log) = run(r#"
        (func $a (call $logi (i32.const 7)))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (call $logi (i32.const 99)))
    "#);
    let error = result.unwrap_err();
    assert_eq!(
        error.downcast_ref::<EntrypointReturned>(),
        Some(&EntrypointReturned { id: 1 })
    );
    assert_eq!(log, [7]);
}

#[test]
fn a_trap_in_a_context_is_the_same_trap_in_main() {
    let (result, _) = run(r#"
        (func $a (drop (i32.div_u (i32.const 1) (i32.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0)))))
    "#);
    let error = result.unwrap_err();
    assert_eq!(
        error.downcast_ref::<Trap>(),
        Some(&Trap::IntegerDivisionByZero)
    );
    let backtrace = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .expect("traps carry a wasm backtrace");
    assert!(
        backtrace
            .frames()
            .iter()
            .any(|f| f.func_name() == Some("a")),
        "the backtrace shows the context's frames: {backtrace:?}"
    );
}

#[test]
fn deep_recursion_in_a_context_is_a_clean_stack_overflow() {
    let (result, _) = run(r#"
        (func $a (call $a))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0)))))
    "#);
    assert_eq!(
        result.unwrap_err().downcast_ref::<Trap>(),
        Some(&Trap::StackOverflow)
    );
}

#[test]
fn the_live_context_limit_gives_eagain_until_one_is_destroyed() {
    let config = ContextConfig {
        max_contexts: 2,
        ..ContextConfig::default()
    };
    let (result, log) = run_with(
        r#"
        (func $a)
        (func $b)
        (func (export "main")
            (call $logi (call $create (i32.const 0) (i32.const 1)))
            (call $logi (call $create (i32.const 8) (i32.const 1)))
            (call $logi (call $create (i32.const 16) (i32.const 1)))
            ;; argument errors come before the limit
            (call $logi (call $create (i32.const -8) (i32.const 1)))
            (call $logi (call $create (i32.const 16) (i32.const 0)))
            (call $logi (call $destroy (call $id (i32.const 8))))
            (call $logi (call $create (i32.const 16) (i32.const 1))))
    "#,
        config,
    );
    result.unwrap();
    assert_eq!(log, [0, 0, 6, 21, 28, 0, 0]);
}

#[test]
fn shadow_stack_regions_are_recycled() {
    let (result, log) = run(r#"
        (func $a (call $logi (global.get $sp)) (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (drop (call $destroy (call $id (i32.const 0))))
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (call $logi (memory.size)))
    "#);
    result.unwrap();
    assert_eq!(
        log[0], log[1],
        "the second context reuses the first one's region"
    );
    assert_eq!(log[2], 3, "one page was grown for both");
}

#[test]
fn proc_exit_inside_a_context_exits_with_its_code() {
    let (result, _) = run(r#"
        (func $a (call $proc_exit (i32.const 42)))
        (func $b (drop (call $switch (i64.const 0))))
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $create (i32.const 8) (i32.const 2)))
            (drop (call $switch (call $id (i32.const 8))))
            (drop (call $switch (call $id (i32.const 0)))))
    "#);
    let error = result.unwrap_err();
    assert_eq!(
        error.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0),
        Some(42)
    );
}

/// Suspended contexts left behind by every kind of ending: normal return, trap, exit.
/// The store (and with it each suspended fiber) must go away cleanly.
/// Destroying a context suspended in `context_switch` ends its call at that switch (none of
/// its code runs again) with the error `cancel` keeps per thread: made once, then handed
/// back by every trap (no backtrace is taken per destroy).
#[test]
fn destroying_a_suspended_context_runs_none_of_its_code_and_reuses_one_error() {
    let (result, log) = run(r#"
        (func $a
            (drop (call $switch (i64.const 0)))
            (call $log (i64.const 999))
            (unreachable))
        (func $b)
        (func (export "main")
            (local $i i32)
            (loop $again
                (call $logi (call $create (i32.const 0) (i32.const 1)))
                (call $logi (call $switch (call $id (i32.const 0))))
                (call $logi (call $destroy (call $id (i32.const 0))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $again (i32.lt_u (local.get $i) (i32.const 3)))))
    "#);
    result.unwrap();
    assert_eq!(log, [0; 9], "every create, switch and destroy succeeds");
    assert!(
        crate::cancel::spare_is_kept(),
        "the error came back to be reused"
    );
}

#[test]
fn suspended_contexts_are_released_on_every_ending() {
    for ending in ["", "(unreachable)", "(call $proc_exit (i32.const 3))"] {
        let body = format!(
            r#"
            (func $a (drop (call $switch (i64.const 0))) (unreachable))
            (func $b (drop (call $switch (i64.const 0))) (unreachable))
            (func (export "main")
                (drop (call $create (i32.const 0) (i32.const 1)))
                (drop (call $create (i32.const 8) (i32.const 2)))
                (drop (call $create (i32.const 16) (i32.const 2)))
                (drop (call $switch (call $id (i32.const 0))))
                (drop (call $switch (call $id (i32.const 8))))
                {ending})"#
        );
        let engine = engine();
        let module = compile(&engine, header(&body)).unwrap();
        // Both cleanup paths: explicit release, and dropping the store with them inside.
        for explicit in [true, false] {
            let mut store = store(&engine, ContextConfig::default());
            let instance =
                block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
            let main = instance
                .get_typed_func::<(), ()>(&mut store, "main")
                .unwrap();
            let _ = block_on(main.call_async(&mut store, ()));
            assert_eq!(store.data().contexts.live_contexts(), 3);
            if explicit {
                HostContexts::new(contexts).release_all(&mut store).unwrap();
                assert_eq!(store.data().contexts.live_contexts(), 0);
                // The instance stays usable.
                let again = block_on(main.call_async(&mut store, ()));
                assert_eq!(again.is_ok(), ending.is_empty());
            }
            drop(store);
        }
    }
}

#[test]
fn a_host_panic_inside_a_context_propagates_and_the_store_drops_cleanly() {
    let body = r#"
        (func $a (call $panic))
        (func $b (drop (call $switch (i64.const 0))))
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $create (i32.const 8) (i32.const 2)))
            (drop (call $switch (call $id (i32.const 8))))
            (drop (call $switch (call $id (i32.const 0)))))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut store = store(&engine, ContextConfig::default());
        let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
        let main = instance
            .get_typed_func::<(), ()>(&mut store, "main")
            .unwrap();
        let _ = block_on(main.call_async(&mut store, ()));
    }));
    let panic = outcome.unwrap_err();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"host function panicked on purpose")
    );
}

#[test]
fn cancelling_main_mid_switch_terminates_the_running_context() {
    // The context waits on a host future that never completes; the embedder gives up.
    // Per thread: the test also runs inside `the_behaviour_tests_pass_on_guests_as_built_too`.
    thread_local! {
        static POLLS: AtomicUsize = const { AtomicUsize::new(0) };
    }
    let engine = engine();
    let mut linker = linker(&engine);
    linker
        .func_wrap_async("env", "wait", |_: wasmtime::Caller<'_, Host>, ()| {
            Box::new(std::future::poll_fn(|_| {
                POLLS.with(|polls| polls.fetch_add(1, Ordering::SeqCst));
                Poll::<()>::Pending
            }))
        })
        .unwrap();
    let body = r#"
        (import "env" "wait" (func $wait))
        (func $a (call $wait))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0)))))"#;
    // Imports must come first in a module: splice the extra import into the header.
    let text = header(body).replacen("(import \"env\" \"wait\" (func $wait))", "", 1);
    let text = text.replacen(
        "(memory",
        "(import \"env\" \"wait\" (func $wait)) (memory",
        1,
    );
    let module = compile(&engine, text).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker.instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    {
        let mut call = std::pin::pin!(main.call_async(&mut store, ()));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(call.as_mut().poll(&mut cx).is_pending());
        }
    }
    assert_eq!(POLLS.with(|polls| polls.load(Ordering::SeqCst)), 3);
    let state = &store.data().contexts;
    assert_eq!(state.active(), MAIN_CONTEXT);
    assert_eq!(state.state(1), Some(ContextState::Terminated));
    assert_eq!(
        instance
            .get_global(&mut store, "__stack_pointer")
            .unwrap()
            .get(&mut store)
            .i32(),
        Some(MAIN_SP)
    );
}

#[test]
fn guests_without_an_exported_stack_pointer_are_refused() {
    let wat = r#"(module
        (import "wasix_32v1" "context_create" (func $create (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $sp (mut i32) (i32.const 4096))
        (table (export "__indirect_function_table") 2 funcref)
        (elem (i32.const 1) $a)
        (func $a)
        (func (export "main") (drop (call $create (i32.const 0) (i32.const 1)))))"#;
    let engine = engine();
    let module = compile(&engine, wat).unwrap();
    assert_eq!(
        check_module(&module),
        Err(IncompatibleGuest::MissingStackPointer)
    );
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    let error = block_on(main.call_async(&mut store, ())).unwrap_err();
    assert_eq!(
        error.downcast_ref::<IncompatibleGuest>(),
        Some(&IncompatibleGuest::MissingStackPointer)
    );
    let no_table = Module::new(
        &engine,
        r#"(module (import "wasix_32v1" "context_switch" (func (param i64) (result i32)))
            (memory (export "memory") 1)
            (global (export "__stack_pointer") (mut i32) (i32.const 0)))"#,
    )
    .unwrap();
    assert_eq!(
        check_module(&no_table),
        Err(IncompatibleGuest::MissingTable)
    );
    let plain = compile(&engine, "(module)").unwrap();
    assert_eq!(check_module(&plain), Ok(()));
}

#[test]
fn the_host_can_drive_contexts_with_no_guest_main() {
    // Each "request" runs as a context on an export; it yields to the host (main) once.
    let body = r#"
        (func $a)
        (func $b)
        (func (export "handle")
            (global.set $sp (i32.sub (global.get $sp) (i32.const 32)))
            (call $logi (global.get $sp))
            (drop (call $switch (i64.const 0)))
            (call $logi (i32.const 2)))
        (func (export "fail") (drop (call $switch (i64.const 0))) (unreachable))
        (func (export "main"))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let host = HostContexts::new(contexts);
    let first = host.spawn(&mut store, &instance, "handle").unwrap();
    let second = host.spawn(&mut store, &instance, "handle").unwrap();
    let failing = host.spawn(&mut store, &instance, "fail").unwrap();
    assert!(matches!(
        host.spawn(&mut store, &instance, "missing"),
        Err(HostCallError::NoSuchEntrypoint(_))
    ));
    assert_eq!(
        block_on(host.resume(&mut store, first)).unwrap(),
        Resumed::SwitchedToMain
    );
    assert_eq!(
        block_on(host.resume(&mut store, second)).unwrap(),
        Resumed::SwitchedToMain
    );
    assert_eq!(
        block_on(host.resume(&mut store, failing)).unwrap(),
        Resumed::SwitchedToMain
    );
    assert_eq!(
        block_on(host.resume(&mut store, first)).unwrap(),
        Resumed::Returned
    );
    let trap = block_on(host.resume(&mut store, failing)).unwrap_err();
    assert_eq!(
        trap.downcast_ref::<Trap>(),
        Some(&Trap::UnreachableCodeReached)
    );
    assert!(
        block_on(host.resume(&mut store, first)).is_err(),
        "terminated"
    );
    host.destroy(&mut store, first).unwrap();
    host.destroy(&mut store, failing).unwrap();
    assert_eq!(
        block_on(host.resume(&mut store, second)).unwrap(),
        Resumed::Returned
    );
    let log = &store.data().log;
    assert_ne!(log[0], log[1], "each request has its own shadow stack");
    assert_eq!(&log[2..], &[2, 2]);
    assert_eq!(
        store.data().contexts.state(second),
        Some(ContextState::Terminated)
    );
    // The instance's own stack pointer is untouched by all of this.
    let sp = instance.get_global(&mut store, "__stack_pointer").unwrap();
    assert_eq!(sp.get(&mut store).i32(), Some(MAIN_SP));
}

#[test]
fn pooled_stacks_run_contexts_and_recycle_their_stacks() {
    let config = ContextConfig {
        pooled_stacks: true,
        ..ContextConfig::default()
    };
    // Start and destroy contexts one after the other, then overflow one: the recycled
    // stacks still carry working stack limits.
    let (result, log) = run_with(
        r#"
        (func $a (call $logi (global.get $sp)) (drop (call $switch (i64.const 0))))
        (func $b (call $b))
        (func (export "main")
            (local $i i32)
            (loop $again
                (drop (call $create (i32.const 0) (i32.const 1)))
                (drop (call $switch (call $id (i32.const 0))))
                (drop (call $destroy (call $id (i32.const 0))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $again (i32.lt_u (local.get $i) (i32.const 5))))
            (drop (call $create (i32.const 8) (i32.const 2)))
            (drop (call $switch (call $id (i32.const 8)))))
        "#,
        config,
    );
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|sp| *sp == log[0]), "regions recycled too");
    assert_eq!(
        result.unwrap_err().downcast_ref::<Trap>(),
        Some(&Trap::StackOverflow)
    );
}

#[test]
fn a_second_instance_in_the_same_store_is_refused() {
    let body = r#"
        (func $a)
        (func $b)
        (func (export "main") (call $logi (call $create (i32.const 0) (i32.const 1))))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let linker = linker(&engine);
    let mut store = store(&engine, ContextConfig::default());
    let first = block_on(linker.instantiate_async(&mut store, &module)).unwrap();
    let second = block_on(linker.instantiate_async(&mut store, &module)).unwrap();
    let main = |instance: wasmtime::Instance, store: &mut Store<Host>| {
        let func = instance
            .get_typed_func::<(), ()>(&mut *store, "main")
            .unwrap();
        block_on(func.call_async(store, ()))
    };
    main(first, &mut store).unwrap();
    let error = main(second, &mut store).unwrap_err();
    assert_eq!(
        error.downcast_ref::<IncompatibleGuest>(),
        Some(&IncompatibleGuest::ForeignInstance)
    );
    main(first, &mut store).unwrap();
    assert_eq!(store.data().log, [0, 0]);
}

#[test]
fn an_epoch_yield_inside_a_context_reaches_the_embedder_and_resumes_it() {
    let body = r#"
        (func $a
            (local $i i32)
            (loop $spin
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $spin (i32.lt_u (local.get $i) (i32.const 2000000))))
            (call $logi (local.get $i))
            (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (call $logi (call $switch (call $id (i32.const 0))))
            (call $logi (global.get $sp)))"#;
    let mut config = Config::new();
    ContextConfig::default().configure_engine(&mut config);
    config.epoch_interruption(true);
    let engine = Engine::new(&config).unwrap();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    let mut pending = 0;
    {
        let mut call = std::pin::pin!(main.call_async(&mut store, ()));
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            engine.increment_epoch();
            match call.as_mut().poll(&mut cx) {
                Poll::Ready(result) => break result.unwrap(),
                Poll::Pending => pending += 1,
            }
        }
    }
    assert!(
        pending > 0,
        "the context's epoch yields reached the embedder"
    );
    assert_eq!(store.data().log, [2_000_000, 0, i64::from(MAIN_SP)]);
}

#[test]
fn release_all_refuses_while_a_context_runs() {
    // A host function called by a running context tries to release everything.
    let engine = engine();
    let mut linker = linker(&engine);
    linker
        .func_wrap(
            "env",
            "release",
            |mut caller: wasmtime::Caller<'_, Host>| -> i64 {
                match HostContexts::new(contexts).release_all(&mut caller) {
                    Err(HostCallError::Busy) => 1,
                    _ => 0,
                }
            },
        )
        .unwrap();
    let text = header(
        r#"
        (func $a (call $log (call $release)) (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (call $log (call $release)))"#,
    )
    .replacen(
        "(memory",
        "(import \"env\" \"release\" (func $release (result i64))) (memory",
        1,
    );
    let module = compile(&engine, text).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker.instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    block_on(main.call_async(&mut store, ())).unwrap();
    assert_eq!(store.data().log, [1, 0]);
    assert_eq!(store.data().contexts.live_contexts(), 0);
}

/// Invariant 5 of `context_future`: a state moved out of its store (safe code can) never
/// resumes its suspended contexts into a store that is gone; it leaks them instead.
#[test]
fn a_state_moved_out_of_its_store_never_touches_the_dead_store() {
    let body = r#"
        (func $a (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0)))))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    block_on(main.call_async(&mut store, ())).unwrap();
    let moved = std::mem::take(&mut store.data_mut().contexts);
    assert_eq!(moved.live_contexts(), 1);
    drop(store);
    drop(moved);
}

/// A state moved into another store traps instead of running another store's contexts.
#[test]
fn a_state_moved_into_another_store_refuses_to_run_its_contexts() {
    let body = r#"
        (func $a (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "start")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0)))))
        (func (export "main") (drop (call $switch (i64.const 1))))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let linker = linker(&engine);
    let mut first = store(&engine, ContextConfig::default());
    let instance = block_on(linker.instantiate_async(&mut first, &module)).unwrap();
    let start = instance
        .get_typed_func::<(), ()>(&mut first, "start")
        .unwrap();
    block_on(start.call_async(&mut first, ())).unwrap();
    // Context 1 is suspended in `first`; its state is swapped into `second`.
    let mut second = store(&engine, ContextConfig::default());
    let instance2 = block_on(linker.instantiate_async(&mut second, &module)).unwrap();
    std::mem::swap(
        &mut first.data_mut().contexts,
        &mut second.data_mut().contexts,
    );
    let main = instance2
        .get_typed_func::<(), ()>(&mut second, "main")
        .unwrap();
    let error = block_on(main.call_async(&mut second, ())).unwrap_err();
    assert!(error.downcast_ref::<MovedState>().is_some(), "{error:?}");
    drop(first);
    drop(second);
}

#[test]
fn a_host_playing_main_preempts_a_spinning_context_and_resumes_it_later() {
    // `spin` never switches: it counts iterations at address 1024 forever, checking on every
    // iteration that its own stack pointer is still in place. `other` logs 7 and returns.
    let body = r#"
        (func $a)
        (func $b)
        (func (export "spin")
            (local $mine i32)
            (global.set $sp (i32.sub (global.get $sp) (i32.const 32)))
            (local.set $mine (global.get $sp))
            (loop $forever
                (if (i32.ne (global.get $sp) (local.get $mine)) (then unreachable))
                (i32.store (i32.const 1024) (i32.add (i32.load (i32.const 1024)) (i32.const 1)))
                (br $forever)))
        (func (export "other") (call $logi (i32.const 7)))
        (func (export "main"))"#;
    let mut config = Config::new();
    ContextConfig::default().configure_engine(&mut config);
    config.epoch_interruption(true);
    let engine = Engine::new(&config).unwrap();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut store| {
        store.data_mut().contexts.preempt_to_main();
        Ok(wasmtime::UpdateDeadline::Yield(1))
    });
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    assert!(
        !store.data_mut().contexts.preempt_to_main(),
        "nothing to preempt while main is active"
    );
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let count = |store: &Store<Host>| {
        u32::from_le_bytes(memory.data(store)[1024..1028].try_into().unwrap())
    };
    let sp = instance.get_global(&mut store, "__stack_pointer").unwrap();

    // The spinner only ever stops because the ticker below advances the epoch.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                engine.increment_epoch();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let host = HostContexts::new(contexts);
    let spinner = host.spawn(&mut store, &instance, "spin").unwrap();
    let other = host.spawn(&mut store, &instance, "other").unwrap();
    // Each resume of the spinner ends in a preemption: it is suspended, main's stack is
    // back. A preemption may come before an iteration (the ticker runs on meanwhile), so
    // it is resumed until its count passes `beyond`.
    let spin_past = |store: &mut Store<Host>, beyond: u32| {
        for _ in 0..100_000 {
            assert_eq!(
                block_on(host.resume(&mut *store, spinner)).unwrap(),
                Resumed::SwitchedToMain
            );
            assert_eq!(store.data().contexts.active(), MAIN_CONTEXT);
            assert_eq!(
                store.data().contexts.state(spinner),
                Some(ContextState::Suspended)
            );
            assert_eq!(
                sp.get(&mut *store).i32(),
                Some(MAIN_SP),
                "main's stack is back"
            );
            if count(store) > beyond {
                return count(store);
            }
        }
        panic!("the spinner never counted past {beyond}");
    };
    let first = spin_past(&mut store, 0);

    // Another context runs while the spinner is preempted (it may be preempted too: the
    // ticker keeps going; each resume then gets it further).
    let mut resumes = 0;
    while block_on(host.resume(&mut store, other)).unwrap() == Resumed::SwitchedToMain {
        resumes += 1;
        assert!(resumes < 100_000, "a three-instruction context finishes");
    }
    assert_eq!(store.data().log, [7]);
    assert_eq!(count(&store), first, "the spinner did not run meanwhile");

    // Resumed, the spinner continues where it was (its loop and stack pointer intact).
    let second = spin_past(&mut store, first);
    spin_past(&mut store, second);
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();

    host.destroy(&mut store, other).unwrap();
    host.destroy(&mut store, spinner).unwrap();
    assert_eq!(store.data().contexts.state(spinner), None);
    assert_eq!(store.data().contexts.live_contexts(), 0);
}

/// The store after running the guest's `main` with lifecycle events recorded; returns
/// main's result too. `env.log` drained the events so far into `Host::events`.
fn run_recording(body: &str, config: ContextConfig) -> (wasmtime::Result<()>, Store<Host>) {
    let config = ContextConfig {
        record_events: true,
        ..config
    };
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, config);
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    let result = block_on(main.call_async(&mut store, ()));
    (result, store)
}

/// Events drained at `env.log` calls, then those still pending.
fn all_events(store: &mut Store<Host>) -> Vec<ContextEvent> {
    let host = store.data_mut();
    let mut events = std::mem::take(&mut host.events);
    assert_eq!(host.contexts.dropped_events(), 0);
    events.extend(host.contexts.take_events());
    events
}

/// Main creates A and C; A creates B, then control goes A -> C -> B -> main with no
/// embedder host call in between: B's creator is A, the context that called
/// `context_create`, not whichever ran last before the embedder looked.
#[test]
fn events_name_the_exact_creator_through_context_to_context_switches() {
    use ContextEvent::*;
    let (result, mut store) = run_recording(
        r#"
        (func $a
            (drop (call $create (i32.const 16) (i32.const 2)))  ;; B
            (i64.store (i32.const 24) (call $id (i32.const 16))) ;; C switches on to B
            (drop (call $switch (call $id (i32.const 8))))       ;; to C
            )                                                     ;; returns: terminated
        (func $b
            (local $target i64)
            (loop $forever
                (local.set $target (i64.load (i32.const 24)))
                (i64.store (i32.const 24) (i64.const 0))         ;; the next one goes to main
                (drop (call $switch (local.get $target)))
                (br $forever)))
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))   ;; A
            (drop (call $create (i32.const 8) (i32.const 2)))   ;; C
            (drop (call $switch (call $id (i32.const 0))))      ;; back from B
            (call $logi (call $destroy (call $id (i32.const 16))))
            (drop (call $switch (call $id (i32.const 0)))))     ;; A returns: trap
    "#,
        ContextConfig::default(),
    );
    let (a, c, b) = (1, 2, 3);
    assert_eq!(
        result.unwrap_err().downcast_ref::<EntrypointReturned>(),
        Some(&EntrypointReturned { id: a })
    );
    assert_eq!(store.data().log, [0]);
    assert_eq!(
        store.data().events,
        [
            Created {
                id: a,
                creator: MAIN_CONTEXT,
                entrypoint: Entrypoint::Table(1)
            },
            Created {
                id: c,
                creator: MAIN_CONTEXT,
                entrypoint: Entrypoint::Table(2)
            },
            Created {
                id: b,
                creator: a,
                entrypoint: Entrypoint::Table(2)
            },
            Destroyed { id: b },
        ],
        "drained at the host call"
    );
    store.data_mut().events.clear();
    assert_eq!(all_events(&mut store), [Terminated { id: a }]);
    HostContexts::new(contexts).release_all(&mut store).unwrap();
    assert_eq!(
        all_events(&mut store),
        [Destroyed { id: a }, Destroyed { id: c }],
        "in id order"
    );
    assert!(all_events(&mut store).is_empty(), "drained");
}

#[test]
fn host_spawns_trap_and_return_give_their_events() {
    use ContextEvent::*;
    let body = r#"
        (func $a)
        (func $b)
        (func (export "handle") (drop (call $switch (i64.const 0))))
        (func (export "fail") (unreachable))
        (func (export "main"))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let config = ContextConfig {
        record_events: true,
        ..ContextConfig::default()
    };
    let mut store = store(&engine, config);
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let host = HostContexts::new(contexts);
    let ok = host.spawn(&mut store, &instance, "handle").unwrap();
    let failing = host.spawn(&mut store, &instance, "fail").unwrap();
    let idle = host.spawn(&mut store, &instance, "handle").unwrap();
    assert_eq!(
        all_events(&mut store),
        [ok, failing, idle].map(|id| Created {
            id,
            creator: MAIN_CONTEXT,
            entrypoint: Entrypoint::Export
        })
    );
    assert!(block_on(host.resume(&mut store, failing)).is_err());
    assert_eq!(all_events(&mut store), [Terminated { id: failing }]);
    assert_eq!(
        block_on(host.resume(&mut store, ok)).unwrap(),
        Resumed::SwitchedToMain
    );
    assert!(all_events(&mut store).is_empty(), "a switch is no event");
    assert_eq!(
        block_on(host.resume(&mut store, ok)).unwrap(),
        Resumed::Returned
    );
    host.destroy(&mut store, ok).unwrap();
    host.destroy(&mut store, ok).unwrap();
    assert_eq!(
        all_events(&mut store),
        [Terminated { id: ok }, Destroyed { id: ok }],
        "destroying a deleted id is no event"
    );
    host.release_all(&mut store).unwrap();
    assert_eq!(
        all_events(&mut store),
        [Destroyed { id: failing }, Destroyed { id: idle }]
    );
}

#[test]
fn without_record_events_there_are_none() {
    let body = r#"
        (func $a (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (drop (call $destroy (call $id (i32.const 0))))
            (drop (call $create (i32.const 0) (i32.const 1)))
            (call $logi (i32.const 1))
            (drop (call $switch (call $id (i32.const 0))))
            (drop (call $switch (call $id (i32.const 0)))))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let main = instance
        .get_typed_func::<(), ()>(&mut store, "main")
        .unwrap();
    assert!(
        block_on(main.call_async(&mut store, ())).is_err(),
        "the second context returned"
    );
    assert_eq!(store.data().log, [1]);
    HostContexts::new(contexts).release_all(&mut store).unwrap();
    assert!(store.data().events.is_empty());
    assert_eq!(store.data_mut().contexts.take_events().count(), 0);
    assert_eq!(store.data().contexts.dropped_events(), 0);
}

/// A guest churning contexts with no embedder host call in between: the pending list
/// stops at `max_pending_events`, keeps the oldest, counts the rest.
#[test]
fn pending_events_are_bounded_and_the_excess_is_counted() {
    use ContextEvent::*;
    let (result, mut store) = run_recording(
        r#"
        (func $a)
        (func $b)
        (func (export "main")
            (local $i i32)
            (loop $churn
                (drop (call $create (i32.const 0) (i32.const 1)))
                (drop (call $destroy (call $id (i32.const 0))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $churn (i32.lt_u (local.get $i) (i32.const 1000)))))
    "#,
        ContextConfig {
            max_pending_events: 3,
            ..ContextConfig::default()
        },
    );
    result.unwrap();
    let contexts = &mut store.data_mut().contexts;
    assert_eq!(contexts.dropped_events(), 2000 - 3);
    assert_eq!(
        contexts.take_events().collect::<Vec<_>>(),
        [
            Created {
                id: 1,
                creator: MAIN_CONTEXT,
                entrypoint: Entrypoint::Table(1)
            },
            Destroyed { id: 1 },
            Created {
                id: 2,
                creator: MAIN_CONTEXT,
                entrypoint: Entrypoint::Table(1)
            },
        ]
    );
    assert_eq!(contexts.dropped_events(), 0, "reset by the drain");
}

/// Entrypoints are type-checked once per function, not once per table slot: a slot that
/// changes function is checked again.
#[test]
fn a_table_slot_that_changes_function_is_checked_again() {
    let (result, log) = run(r#"
        (func $a)
        (func $b)
        (func (export "main")
            (call $logi (call $create (i32.const 0) (i32.const 1)))
            (table.set (i32.const 1) (ref.func $wrong_signature))
            (call $logi (call $create (i32.const 8) (i32.const 1)))
            (call $logi (call $create (i32.const 8) (i32.const 3)))
            (table.set (i32.const 1) (ref.func $b))
            (call $logi (call $create (i32.const 8) (i32.const 1)))
            (table.set (i32.const 1) (ref.func $a))
            (call $logi (call $create (i32.const 8) (i32.const 1))))
    "#);
    result.unwrap();
    assert_eq!(log, [0, 28, 28, 0, 0]);
}

/// The stack budget is shared by every store naming it: contexts of one store use it up for
/// the other (guest creates and host spawns alike get `EAGAIN`), and a destroy, a terminate
/// or a `release_all` in either gives room back.
#[test]
fn a_shared_stack_budget_gives_eagain_across_stores_until_released() {
    let budget = ContextBudget::new(2);
    let config = ContextConfig {
        stack_size: 256 * 1024,
        pooled_stacks: true,
        live_context_budget: budget.clone(),
        ..ContextConfig::default()
    };
    let mut engine_config = Config::new();
    config.configure_engine(&mut engine_config);
    let engine = Engine::new(&engine_config).unwrap();
    let body = r#"
        (func $a (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "park") (drop (call $switch (i64.const 0))))
        (func (export "finish"))
        (func (export "main") (call $logi (call $create (i32.const 0) (i32.const 1))))"#;
    let module = compile(&engine, header(body)).unwrap();
    let host = HostContexts::new(contexts);
    let mut one = store(&engine, config.clone());
    let one_instance = block_on(linker(&engine).instantiate_async(&mut one, &module)).unwrap();
    let mut two = store(&engine, config);
    let two_instance = block_on(linker(&engine).instantiate_async(&mut two, &module)).unwrap();
    let main_of = |store: &mut Store<Host>, instance: &wasmtime::Instance| {
        let main = instance
            .get_typed_func::<(), ()>(&mut *store, "main")
            .unwrap();
        block_on(main.call_async(&mut *store, ())).unwrap();
        std::mem::take(&mut store.data_mut().log)
    };

    let parked = host.spawn(&mut one, &one_instance, "park").unwrap();
    let finishing = host.spawn(&mut one, &one_instance, "finish").unwrap();
    assert_eq!(
        block_on(host.resume(&mut one, parked)).unwrap(),
        Resumed::SwitchedToMain
    );
    assert_eq!(budget.reserved(), 2);
    assert!(
        budget.stacks_in_use() >= 1,
        "the parked context holds its stack"
    );
    assert!(matches!(
        host.spawn(&mut two, &two_instance, "park"),
        Err(HostCallError::Errno(Errno::Again))
    ));
    assert_eq!(
        main_of(&mut two, &two_instance),
        [6],
        "a guest create: EAGAIN"
    );

    // A context that ran to its end needs no stack any more, though it is not destroyed.
    assert_eq!(
        block_on(host.resume(&mut one, finishing)).unwrap(),
        Resumed::Returned
    );
    assert_eq!(one.data().contexts.live_contexts(), 2);
    assert_eq!(main_of(&mut two, &two_instance), [0]);
    assert_eq!(main_of(&mut two, &two_instance), [6]);

    host.destroy(&mut one, parked).unwrap();
    let spawned = host.spawn(&mut two, &two_instance, "park").unwrap();
    assert!(host.spawn(&mut one, &one_instance, "park").is_err());
    host.release_all(&mut two).unwrap();
    assert_eq!(budget.reserved(), 0);
    assert_eq!(two.data().contexts.state(spawned), None);
    assert_eq!(main_of(&mut one, &one_instance), [0]);
    drop(one);
    drop(two);
    assert_eq!(budget.reserved(), 0);
    assert_eq!(budget.stacks_in_use(), 0);
}

const OVERFLOW_OF_CONTEXT_1: &str =
    "WASIX context 1 overflowed its shadow stack (size 65536; raise --shadow-stack-size)";

fn assert_overflow_of_context_1(result: wasmtime::Result<()>) {
    let error = result.unwrap_err();
    let overflow = error
        .downcast_ref::<ShadowStackOverflow>()
        .unwrap_or_else(|| panic!("not an overflow: {error:?}"));
    assert_eq!(overflow.to_string(), OVERFLOW_OF_CONTEXT_1);
}

#[test]
fn a_stack_pointer_moved_below_its_region_traps_at_the_switch() {
    let (result, log) = run(r#"
        (func $a
            (global.set $sp (i32.sub (global.get $sp) (i32.const 65552)))
            (drop (call $switch (i64.const 0)))
            (call $logi (i32.const 7)))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (call $logi (i32.const 99)))
    "#);
    assert_overflow_of_context_1(result);
    assert_eq!(log, [] as [i64; 0], "neither the context nor main ran on");
}

#[test]
fn a_context_using_its_whole_shadow_stack_is_no_overflow() {
    // The lowest 16 bytes of the region are the canary; everything above is the context's.
    let (result, log) = run(r#"
        (func $a
            (global.set $sp (i32.sub (global.get $sp) (i32.const 65520)))
            (i64.store (global.get $sp) (i64.const -1))
            (i64.store offset=8 (global.get $sp) (i64.const -1))
            (i64.store (i32.add (global.get $sp) (i32.const 65512)) (i64.const -1))
            (drop (call $switch (i64.const 0)))
            (drop (call $create (i32.const 8) (i32.const 2)))
            (call $logi (i32.const 1))
            (drop (call $switch (i64.const 0))))
        (func $b)
        (func (export "main")
            (drop (call $create (i32.const 0) (i32.const 1)))
            (drop (call $switch (call $id (i32.const 0))))
            (drop (call $switch (call $id (i32.const 0))))
            (call $logi (i32.const 99)))
    "#);
    result.unwrap();
    assert_eq!(log, [1, 99]);
}

#[test]
fn a_clobbered_canary_traps_at_the_next_switch_or_host_call() {
    // The stack pointer stays inside; only the memory below the stack proper changed, as
    // when a large frame was written and popped again.
    for next in [
        "(drop (call $switch (i64.const 0)))",
        "(drop (call $create (i32.const 8) (i32.const 2)))",
        "(drop (call $destroy (i64.const 99)))",
        "(drop (call $switch (i64.const 99)))",
    ] {
        let (result, log) = run(&format!(
            r#"
            (func $a
                (i32.store8 (i32.sub (global.get $sp) (i32.const 65521)) (i32.const 0))
                {next}
                (call $logi (i32.const 7)))
            (func $b)
            (func (export "main")
                (drop (call $create (i32.const 0) (i32.const 1)))
                (drop (call $switch (call $id (i32.const 0))))
                (call $logi (i32.const 99)))
            "#
        ));
        assert_overflow_of_context_1(result);
        assert_eq!(log, [] as [i64; 0], "after {next}");
    }
}

#[test]
fn a_host_driven_context_that_overflowed_fails_when_it_returns() {
    let body = r#"
        (func $a)
        (func $b)
        (func (export "handle")
            (i64.store (i32.sub (global.get $sp) (i32.const 65536)) (i64.const 0)))
        (func (export "main"))"#;
    let engine = engine();
    let module = compile(&engine, header(body)).unwrap();
    let mut store = store(&engine, ContextConfig::default());
    let instance = block_on(linker(&engine).instantiate_async(&mut store, &module)).unwrap();
    let host = HostContexts::new(contexts);
    let id = host.spawn(&mut store, &instance, "handle").unwrap();
    assert_eq!(
        WasixContexts::check_active_shadow_stack(&mut store, contexts),
        Ok(()),
        "main's stack is never checked"
    );
    let error = block_on(host.resume(&mut store, id)).unwrap_err();
    assert_eq!(
        error.downcast_ref::<ShadowStackOverflow>(),
        Some(&ShadowStackOverflow {
            id,
            size: 64 * 1024
        })
    );
    assert_eq!(
        store.data().contexts.state(id),
        Some(ContextState::Terminated)
    );
    // Its region is recycled with a fresh canary: the next request is fine.
    host.destroy(&mut store, id).unwrap();
    let next = host.spawn(&mut store, &instance, "main").unwrap();
    assert_eq!(
        block_on(host.resume(&mut store, next)).unwrap(),
        Resumed::Returned
    );
}

/// Every behaviour test above that runs wasm, on guests compiled as built: the host then
/// saves and restores `__stack_pointer` itself (`Global::get/set`), as for an embedder that
/// compiles guests without [`rewrite_guest`].
#[test]
fn the_behaviour_tests_pass_on_guests_as_built_too() {
    AS_BUILT.set(true);
    main_and_context_ping_pong_with_separate_stack_pointers();
    each_abi_rule_returns_its_errno();
    failed_creates_leave_no_trace();
    context_to_context_ring_and_destroy_from_another_context();
    returning_entrypoint_terminates_and_traps_main();
    a_trap_in_a_context_is_the_same_trap_in_main();
    deep_recursion_in_a_context_is_a_clean_stack_overflow();
    the_live_context_limit_gives_eagain_until_one_is_destroyed();
    shadow_stack_regions_are_recycled();
    proc_exit_inside_a_context_exits_with_its_code();
    suspended_contexts_are_released_on_every_ending();
    a_host_panic_inside_a_context_propagates_and_the_store_drops_cleanly();
    cancelling_main_mid_switch_terminates_the_running_context();
    the_host_can_drive_contexts_with_no_guest_main();
    pooled_stacks_run_contexts_and_recycle_their_stacks();
    an_epoch_yield_inside_a_context_reaches_the_embedder_and_resumes_it();
    release_all_refuses_while_a_context_runs();
    a_host_playing_main_preempts_a_spinning_context_and_resumes_it_later();
    events_name_the_exact_creator_through_context_to_context_switches();
    host_spawns_trap_and_return_give_their_events();
    a_table_slot_that_changes_function_is_checked_again();
    a_stack_pointer_moved_below_its_region_traps_at_the_switch();
    a_context_using_its_whole_shadow_stack_is_no_overflow();
    a_clobbered_canary_traps_at_the_next_switch_or_host_call();
    a_host_driven_context_that_overflowed_fails_when_it_returns();
}
