//! `cargo bench -p weft-wasix-context --bench stack_switching`: what a backend on wasmtime's
//! stack-switching proposal (`Config::wasm_stack_switching`: `cont.new` / `resume` /
//! `suspend`) would gain, and what breaks on wasmtime 48 today. Not a backend: a measured
//! prototype, reported in the crate README ("Stack-switching backend: measured, not shipped").
//!
//! It prints, as `bench ...` lines (medians of 5 runs):
//! - `stack_switching.roundtrip_ns`: main resumes a continuation that suspends straight back;
//! - `stack_switching.roundtrip_bookkept_ns`: the same with what a WASIX backend would add in
//!   the guest: the context id looked up in a table of continuations, the continuation stored
//!   back, `__stack_pointer` saved and restored;
//! - `stack_switching.weft_roundtrip_ns`: the same round trip through weft's `context_switch`
//!   (a rewritten guest, as weft's front ends load it), for comparison in the same process;
//!
//! then one `probe <name>: <outcome>` line per question, each probe run in a child process
//! (some end in a panic or a signal): a host call from inside a continuation (sync and
//! async), a host call re-entering wasm from one, a trap and a stack overflow inside one,
//! an epoch yield inside one, a GC while one is suspended (with and without GC
//! types), a trap after a resume, and whether continuations are freed before the store.

use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use wasmtime::{Config, Engine, Linker, Module, Store, UpdateDeadline};
use weft_wasix_context::{ContextConfig, WasixContexts};

const RUNS: usize = 5;
const ROUND_TRIPS: i32 = 1_000_000;

/// The guest of the stack-switching measurements and probes.
const GUEST: &str = r#"(module
  (type $ft (func))
  (type $ct (cont $ft))
  (tag $yield)
  (import "host" "sync_call" (func $sync_call))
  (import "host" "async_call" (func $async_call))
  (import "host" "gc" (func $host_gc))
  (import "host" "reenter" (func $reenter))
  (memory (export "memory") 1)
  (global $sp (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table $contexts 16 (ref null $ct))

  (func $bounce (loop $forever (suspend $yield) (br $forever)))
  (func $calls_sync (call $sync_call) (suspend $yield))
  (func $calls_async (call $async_call) (suspend $yield))
  (func $spin (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 200000000)))))
  (func $parks (suspend $yield))
  (func $returns)
  (func $calls_reenter (call $reenter) (suspend $yield))
  (func $recurses (call $recurses))
  (func $traps (unreachable))
  (func (export "leaf"))
  (elem declare func $bounce $calls_sync $calls_async $spin $parks $returns $calls_reenter
    $recurses $traps)

  ;; Resumes `k` until it suspends; returns it (suspended) or null (returned).
  (func $run (param $k (ref null $ct)) (result (ref null $ct))
    (block $suspended (result (ref $ct))
      (resume $ct (on $yield $suspended) (local.get $k))
      (return (ref.null $ct)))
    (return))

  (func (export "roundtrip") (param $n i32)
    (local $k (ref null $ct))
    (local.set $k (cont.new $ct (ref.func $bounce)))
    (loop $again
      (local.set $k (call $run (local.get $k)))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))

  ;; Context 1 lives in the table; each round trip saves main's stack pointer in linear
  ;; memory, takes the context out, resumes it, puts it back, restores the stack pointer.
  (func (export "roundtrip_bookkept") (param $n i32)
    (table.set $contexts (i32.const 1) (cont.new $ct (ref.func $bounce)))
    (loop $again
      (i32.store (i32.const 16) (global.get $sp))
      (table.set $contexts (i32.const 1)
        (call $run (table.get $contexts (i32.const 1))))
      (global.set $sp (i32.load (i32.const 16)))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))

  (func (export "host_call_sync") (drop (call $run (cont.new $ct (ref.func $calls_sync)))))
  (func (export "host_call_async") (drop (call $run (cont.new $ct (ref.func $calls_async)))))
  (func (export "epoch_yield_inside") (drop (call $run (cont.new $ct (ref.func $spin)))))
  (func (export "gc_while_suspended")
    (table.set $contexts (i32.const 2) (call $run (cont.new $ct (ref.func $parks))))
    (call $host_gc))
  (func (export "reenter_from_continuation")
    (drop (call $run (cont.new $ct (ref.func $calls_reenter)))))
  (func (export "stack_overflow_inside") (drop (call $run (cont.new $ct (ref.func $recurses)))))
  (func (export "trap_inside") (drop (call $run (cont.new $ct (ref.func $traps)))))
  (func (export "trap_after_resume")
    (drop (call $run (cont.new $ct (ref.func $returns))))
    (unreachable))
  ;; `n` continuations, each started and left suspended, then dropped (overwritten).
  (func (export "abandon") (param $n i32)
    (loop $again
      (table.set $contexts (i32.const 3) (call $run (cont.new $ct (ref.func $parks))))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
)"#;

/// A guest allocating GC structs while a continuation is suspended (wasmtime#14239's shape).
const GC_GUEST: &str = r#"(module
  (type $ft (func))
  (type $ct (cont $ft))
  (type $s (struct (field i32)))
  (tag $yield)
  (func $parks (suspend $yield))
  (elem declare func $parks)
  (func (export "gc_types_while_suspended")
    (local $k (ref null $ct)) (local $i i32)
    (block $h (result (ref $ct))
      (resume $ct (on $yield $h) (cont.new $ct (ref.func $parks)))
      (return))
    (local.set $k)
    (loop $allocate
      (drop (struct.new $s (i32.const 7)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $allocate (i32.lt_u (local.get $i) (i32.const 1000000))))))"#;

/// The same round trip through weft: main switches to a context that switches straight back.
const WEFT_GUEST: &str = r#"(module
  (import "wasix_32v1" "context_create" (func $create (param i32 i32) (result i32)))
  (import "wasix_32v1" "context_switch" (func $switch (param i64) (result i32)))
  (memory (export "memory") 2)
  (global $sp (export "__stack_pointer") (mut i32) (i32.const 65536))
  (table (export "__indirect_function_table") 2 funcref)
  (elem (i32.const 1) $bounce)
  (func $bounce (loop $forever (drop (call $switch (i64.const 0))) (br $forever)))
  (func (export "roundtrip") (param $n i32)
    (drop (call $create (i32.const 0) (i32.const 1)))
    (loop $again
      (drop (call $switch (i64.load (i32.const 0))))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))"#;

fn stack_switching_engine(gc: bool, epochs: bool) -> Engine {
    let mut config = Config::new();
    config
        .wasm_function_references(true)
        .wasm_exceptions(true)
        .wasm_stack_switching(true)
        .wasm_gc(gc)
        .epoch_interruption(epochs);
    Engine::new(&config).expect("stack switching is supported on x86_64 Linux")
}

struct Host {
    contexts: WasixContexts,
}

fn linker(engine: &Engine) -> Linker<Host> {
    let mut linker = Linker::new(engine);
    linker.func_wrap("host", "sync_call", || {}).unwrap();
    linker
        .func_wrap_async("host", "async_call", |_, ()| Box::new(YieldOnce(false)))
        .unwrap();
    linker
        .func_wrap("host", "gc", |mut caller: wasmtime::Caller<'_, Host>| {
            caller.gc(None)
        })
        .unwrap();
    // Re-enters wasm from a host function (wasmtime#13322's shape), synchronously.
    linker
        .func_wrap_async(
            "host",
            "reenter",
            |mut caller: wasmtime::Caller<'_, Host>, ()| {
                Box::new(async move {
                    let leaf = caller.get_export("leaf").unwrap().into_func().unwrap();
                    leaf.typed::<(), ()>(&caller)?
                        .call_async(&mut caller, ())
                        .await
                })
            },
        )
        .unwrap();
    weft_wasix_context::add_to_linker(&mut linker, |host: &mut Host| &mut host.contexts).unwrap();
    linker
}

/// Pending once (waking itself), then ready: a host call that really suspends.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Polls to completion; returns the output and how many times it was pending.
fn block_on<F: Future>(future: F) -> (F::Output, usize) {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    let mut pending = 0;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return (output, pending);
        }
        pending += 1;
    }
}

fn store(engine: &Engine) -> Store<Host> {
    Store::new(
        engine,
        Host {
            contexts: WasixContexts::new(ContextConfig::default()),
        },
    )
}

/// Nanoseconds per round trip of export `name` called with `ROUND_TRIPS`, median of runs.
fn measure(engine: &Engine, wasm: &[u8], name: &str) -> f64 {
    let module = Module::new(engine, wasm).unwrap();
    let linker = linker(engine);
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let mut store = store(engine);
            let instance = block_on(linker.instantiate_async(&mut store, &module))
                .0
                .unwrap();
            let run = instance
                .get_typed_func::<i32, ()>(&mut store, name)
                .unwrap();
            block_on(run.call_async(&mut store, 1)).0.unwrap(); // warm-up
            let start = Instant::now();
            block_on(run.call_async(&mut store, ROUND_TRIPS)).0.unwrap();
            start.elapsed().as_nanos() as f64 / f64::from(ROUND_TRIPS)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

fn vm_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |maps| maps.lines().count())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One probe, in this (child) process; prints what happened when it returns at all.
fn probe(name: &str) {
    let epochs = name == "epoch_yield_inside";
    let gc = name == "gc_types_while_suspended";
    let engine = stack_switching_engine(gc, epochs);
    let source = if gc { GC_GUEST } else { GUEST };
    let module = Module::new(&engine, source).unwrap();
    let linker = linker(&engine);
    let mut store = store(&engine);
    if epochs {
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        let ticker = engine.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(1));
                ticker.increment_epoch();
            }
        });
    }
    let instance = block_on(linker.instantiate_async(&mut store, &module))
        .0
        .unwrap();
    if name == "abandon" {
        let abandon = instance
            .get_typed_func::<i32, ()>(&mut store, "abandon")
            .unwrap();
        let (maps, rss) = (vm_mappings(), rss_kib());
        let n = 2_000;
        block_on(abandon.call_async(&mut store, n)).0.unwrap();
        let (maps_after, rss_after) = (vm_mappings(), rss_kib());
        drop(store);
        println!(
            "{n} continuations started and dropped: +{} mappings, +{} KiB RSS while the store \
             lives; after the store drops: {} mappings, {} KiB RSS above the start",
            maps_after as i64 - maps as i64,
            rss_after as i64 - rss as i64,
            vm_mappings() as i64 - maps as i64,
            rss_kib() as i64 - rss as i64,
        );
        return;
    }
    let func = instance.get_typed_func::<(), ()>(&mut store, name).unwrap();
    let (result, pending) = block_on(func.call_async(&mut store, ()));
    match result {
        Ok(()) => println!("returned normally, the call was pending {pending} times"),
        Err(error) => {
            let error = format!("{error:#}");
            let last = error.lines().last().unwrap_or_default();
            println!("returned an error: ...{}", last.trim());
        }
    }
}

const PROBES: [&str; 10] = [
    "host_call_sync",
    "host_call_async",
    "reenter_from_continuation",
    "stack_overflow_inside",
    "trap_inside",
    "epoch_yield_inside",
    "gc_while_suspended",
    "gc_types_while_suspended",
    "trap_after_resume",
    "abandon",
];

fn main() {
    if let Ok(name) = std::env::var("WEFT_STACK_SWITCHING_PROBE") {
        probe(&name);
        return;
    }
    let engine = stack_switching_engine(false, false);
    let guest = wat::parse_str(GUEST).unwrap();
    let bare = measure(&engine, &guest, "roundtrip");
    println!("bench stack_switching.roundtrip_ns {bare:.1}");
    let bookkept = measure(&engine, &guest, "roundtrip_bookkept");
    println!("bench stack_switching.roundtrip_bookkept_ns {bookkept:.1}");

    let mut config = Config::new();
    ContextConfig::default().configure_engine(&mut config);
    let weft_engine = Engine::new(&config).unwrap();
    let weft_guest = wat::parse_str(WEFT_GUEST).unwrap();
    let rewritten = weft_wasix_context::rewrite_guest(&weft_guest);
    let weft = measure(&weft_engine, &rewritten, "roundtrip");
    println!("bench stack_switching.weft_roundtrip_ns {weft:.1}");

    let exe = std::env::current_exe().unwrap();
    for name in PROBES {
        let output = Command::new(&exe)
            .env("WEFT_STACK_SWITCHING_PROBE", name)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let panic = stderr
            .lines()
            .skip_while(|line| !line.contains("panicked at"))
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let outcome = match (output.status.code(), stdout.trim()) {
            (Some(0), said) => said.to_string(),
            (Some(code), _) if !panic.is_empty() => format!("exit {code}, {panic}"),
            (code, said) => {
                use std::os::unix::process::ExitStatusExt;
                let signal = output.status.signal();
                let last = stderr.lines().last().unwrap_or("");
                format!("exit {code:?} signal {signal:?}: {said} {last}")
            }
        };
        println!("probe {name}: {outcome}");
    }
}
