//! `cargo xtask bench wasix`: the WASIX context API measured from a C guest
//! (`guests/bench/bench_wasix.c`), which times its own loops with WASI's monotonic clock.
//! Each figure is the median of several runs, each in a fresh store.
//!
//! `WEFT_BENCH_STACKS=pool|wasmtime` picks where context stacks come from (default: the
//! crate's default); `wasix.churn_ns` is a create, first switch in, switch back and destroy;
//! `WEFT_BENCH_REWRITE=0` runs the guest as built, without the load-time rewrite that weft's
//! front ends apply (`rewrite_guest`: the guest saves its own `__stack_pointer`).

use std::path::{Path, PathBuf};
use std::process::Command;

use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use weft_wasix_context::{ContextConfig, HostContexts, WasixContexts};

const RUNS: usize = 5;

struct Host {
    wasi: WasiP1Ctx,
    contexts: WasixContexts,
}

fn contexts(host: &mut Host) -> &mut WasixContexts {
    &mut host.contexts
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The bench guest, (re)built with the project's toolchain when missing or stale.
fn guest() -> PathBuf {
    let root = workspace_root();
    let source = root.join("guests/bench/bench_wasix.c");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let wasm = target.join("guests/bench_wasix.wasm");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&wasm) < modified(&source) {
        std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["xtask", "cc"])
            .arg(&source)
            .arg("-o")
            .arg(&wasm)
            .status()
            .expect("cannot run `cargo xtask cc`");
        assert!(status.success(), "building {} failed", source.display());
    }
    wasm
}

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

struct Bench {
    engine: Engine,
    module: Module,
    linker: Linker<Host>,
    config: ContextConfig,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn new() -> Self {
        let defaults = ContextConfig::default();
        let pooled_stacks = match std::env::var("WEFT_BENCH_STACKS").as_deref() {
            Ok("pool") => true,
            Ok("wasmtime") => false,
            _ => defaults.pooled_stacks,
        };
        let config = ContextConfig {
            max_contexts: 20_000,
            pooled_stacks,
            ..defaults
        };
        let mut engine_config = Config::new();
        config.configure_engine(&mut engine_config);
        let engine = Engine::new(&engine_config).unwrap();
        let wasm = std::fs::read(guest()).unwrap();
        let module = if std::env::var("WEFT_BENCH_REWRITE").as_deref() == Ok("0") {
            Module::new(&engine, &wasm).unwrap()
        } else {
            Module::new(&engine, &*weft_wasix_context::rewrite_guest(&wasm)).unwrap()
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |host: &mut Host| &mut host.wasi)
            .unwrap();
        weft_wasix_context::add_to_linker(&mut linker, contexts).unwrap();
        linker
            .func_wrap("weft_bench", "rss_bytes", rss_bytes)
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Bench {
            engine,
            module,
            linker,
            config,
            runtime,
        }
    }

    /// Runs the guest once with `args`; returns the number it printed.
    fn run_once(&self, args: &[&str]) -> f64 {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let wasi = WasiCtxBuilder::new()
            .arg("bench_wasix")
            .args(args)
            .stdout(stdout.clone())
            .inherit_stderr()
            .build_p1();
        let mut store = Store::new(
            &self.engine,
            Host {
                wasi,
                contexts: WasixContexts::new(self.config.clone()),
            },
        );
        self.runtime.block_on(async {
            let instance = self
                .linker
                .instantiate_async(&mut store, &self.module)
                .await
                .unwrap();
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .unwrap();
            if let Err(error) = start.call_async(&mut store, ()).await {
                let exited_ok = error
                    .downcast_ref::<wasmtime_wasi::I32Exit>()
                    .is_some_and(|exit| exit.0 == 0);
                assert!(exited_ok, "bench guest failed: {error:?}");
            }
        });
        HostContexts::new(contexts)
            .release_all(&mut store)
            .expect("the guest returned, so no context runs");
        let output = String::from_utf8_lossy(&stdout.contents()).into_owned();
        output
            .lines()
            .find_map(|line| line.strip_prefix("result "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no result line in {output:?}"))
    }

    fn median(&self, args: &[&str]) -> f64 {
        let mut samples: Vec<f64> = (0..RUNS).map(|_| self.run_once(args)).collect();
        samples.sort_by(f64::total_cmp);
        samples[RUNS / 2]
    }
}

fn main() {
    // `WEFT_BENCH_ONLY=roundtrip|ring|create|churn|rss` runs one measurement and
    // `WEFT_BENCH_N=<count>` overrides its loop count (both for profiling).
    let only = std::env::var("WEFT_BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|only| only == name);
    let count = |default: &'static str| std::env::var("WEFT_BENCH_N").unwrap_or(default.into());
    let bench = Bench::new();
    if wanted("roundtrip") {
        let roundtrip = bench.median(&["roundtrip", &count("200000")]);
        println!("bench wasix.switch_roundtrip_ns weft={roundtrip:.0}");
    }
    if wanted("ring") {
        let ring = bench.median(&["ring", "8", &count("200000")]);
        println!("bench wasix.ring_switch_ns weft={ring:.0}");
    }
    if wanted("create") {
        let create = bench.median(&["create", &count("200000")]);
        println!("bench wasix.create_destroy_ns weft={create:.0}");
    }
    if wanted("churn") {
        let churn = bench.median(&["churn", &count("20000")]);
        let stacks = if bench.config.pooled_stacks {
            ""
        } else {
            " stacks=wasmtime"
        };
        println!("bench wasix.churn_ns weft={churn:.0}{stacks}");
    }
    if wanted("rss") {
        let rss = bench.median(&["rss", &count("10000")]);
        println!("bench wasix.rss_per_context_kib weft={:.2}", rss / 1024.0);
    }
}
