//! `weft`: run WebAssembly guests with stackful WASIX contexts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_cli::run::{EXIT_LOAD_ERROR, RunOptions};
use weft_wasix_context::{ContextBudget, ContextConfig};

mod limit_args;

use limit_args::{LimitArgs, contexts};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Run WebAssembly guests with WASIX context switching"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WASI preview 1 command (core module) with the WASIX context API
    Run(RunArgs),
    /// Serve HTTP: each request runs as a WASIX context of a reused guest instance, or in a
    /// reused instance of a standard wasi:http component (0.2 proxy or 0.3 service)
    Serve(Box<ServeArgs>),
}

/// What a guest is given of the host, for `weft run` and `weft serve` alike.
#[derive(clap::Args)]
struct GuestEnvArgs {
    /// Pass an environment variable to the guest (`NAME=VALUE`, or `NAME` to copy the host's)
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Give the guest a host directory, read-write (`HOST` or `HOST::GUEST`)
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dir: Vec<String>,
}

impl GuestEnvArgs {
    /// The variables as (name, value); `Err` with the message for a `NAME` the host lacks.
    fn env(&self) -> Result<Vec<(String, String)>, String> {
        self.env
            .iter()
            .map(|var| match var.split_once('=') {
                Some((key, value)) => Ok((key.to_string(), value.to_string())),
                None => std::env::var(var)
                    .map(|value| (var.clone(), value))
                    .map_err(|_| {
                        format!("`--env {var}`: the host has no variable `{var}` to pass on")
                    }),
            })
            .collect()
    }

    /// The directories as (host path, guest path); without `::` the guest sees the host's path.
    fn dirs(&self) -> Vec<(PathBuf, String)> {
        self.dir
            .iter()
            .map(|dir| {
                let (host, guest) = dir.split_once("::").unwrap_or((dir.as_str(), dir.as_str()));
                (PathBuf::from(host), guest.to_string())
            })
            .collect()
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the ready line on stdout names it)
    #[arg(
        long,
        visible_alias = "addr",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    listen: std::net::SocketAddr,
    /// Scheduler worker threads [default: available parallelism]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    workers: Option<u64>,
    /// Requests in flight (not yet answered) per instance
    #[arg(long, visible_alias = "max-instance-concurrent-reuse-count", value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_in_flight: u64,
    /// Requests an instance serves before it is retired [default: 128; 1024 for 0.2
    /// components, whose instances serve one request at a time]
    #[arg(long, visible_alias = "max-instance-reuse-count", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: Option<u64>,
    /// Instances taking requests; retiring ones come on top, up to as many again [default: one
    /// per worker]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_instances: Option<u64>,
    /// Requests that may wait for an instance; beyond it: 503 [default: 1024 x workers]
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Seconds work for a request may go on after its response (then it is killed)
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    drain_timeout: f64,
    /// Wasm run time per request, in milliseconds, beyond which the request traps
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    cpu_budget_ms: u64,
    /// One fresh instance per request (no reuse), for comparison
    #[arg(long)]
    per_request_instance: bool,
    /// Write Chrome trace events (Perfetto) to this file
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
    /// No access log on stderr
    #[arg(long)]
    quiet: bool,
    /// Maximum live contexts per instance
    #[arg(long, value_name = "N", default_value_t = ContextConfig::default().max_contexts as u64, value_parser = contexts::max_contexts())]
    max_contexts: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// W3C Trace Context: continue incoming `traceparent`, send it on with every fetch, log ids
    #[arg(long)]
    trace_context: bool,
    /// Share the listening port with other processes (SO_REUSEPORT)
    #[arg(long)]
    reuse_port: bool,
    /// Export spans to this OpenTelemetry collector (OTLP/HTTP protobuf); implies --trace-context
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    guest_env: GuestEnvArgs,
    /// A `wasmtime serve` WASI option (repeatable, comma-separated): only `cli` and `http`, always on
    #[arg(short = 'S', value_name = "OPTION[=VALUE]", value_delimiter = ',')]
    wasi_options: Vec<String>,
    /// The guest: a `.wasm` module (or `.wat` text) exporting `weft_http_handle`
    wasm: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    guest_env: GuestEnvArgs,
    /// Maximum live contexts per instance; `context_create` beyond it fails with EAGAIN
    #[arg(long, value_name = "N", default_value_t = ContextConfig::default().max_contexts as u64, value_parser = contexts::max_contexts())]
    max_contexts: u64,
    /// Live contexts that may hold a native stack; context_create beyond it fails with EAGAIN [default: from vm.max_map_count]
    #[arg(long, value_name = "N", value_parser = contexts::max_live_contexts())]
    max_live_contexts: Option<u64>,
    /// Native stack wasm may use in each context (and main), in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ContextConfig::default().stack_size as u64, value_parser = contexts::stack_size())]
    context_stack_size: u64,
    /// Linear-memory (C shadow) stack of each context, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ContextConfig::default().shadow_stack_size as u64, value_parser = contexts::shadow_stack_size())]
    shadow_stack_size: u64,
    /// The guest: a `.wasm` module (or `.wat` text)
    wasm: PathBuf,
    /// Arguments for the guest (everything after the module, `--` optional)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Serve(args) => serve(*args),
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit statuses are 8 bits on Unix; the guest's code is passed through as is.
    ExitCode::from(code as u8)
}

fn run(args: RunArgs) -> i32 {
    // The parsers bound every value far below `usize::MAX`.
    let mut options = RunOptions::new(&args.wasm).contexts(ContextConfig {
        max_contexts: args.max_contexts as usize,
        stack_size: args.context_stack_size as usize,
        shadow_stack_size: args.shadow_stack_size as usize,
        live_context_budget: args
            .max_live_contexts
            .map_or_else(ContextBudget::process, |n| ContextBudget::new(n as usize)),
        ..ContextConfig::default()
    });
    let mut guest_args = args.args;
    if guest_args.first().map(String::as_str) == Some("--") {
        guest_args.remove(0);
    }
    options = options.args(guest_args);
    match args.guest_env.env() {
        Ok(env) => options.env = env,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_LOAD_ERROR;
        }
    }
    options.dirs = args.guest_env.dirs();
    match options.run() {
        Ok(outcome) => {
            if let Some(error) = outcome.error {
                let _ = std::io::stdout().flush();
                eprintln!("error: failed to run `{}`\n\n{error}", args.wasm.display());
            }
            outcome.exit_code
        }
        Err(error) => {
            eprintln!("error: {error}");
            EXIT_LOAD_ERROR
        }
    }
}

fn serve(args: ServeArgs) -> i32 {
    for option in &args.wasi_options {
        if let Err(message) = weft_cli::serve::check_wasi_option(option) {
            eprintln!("error: {message}");
            return 2;
        }
    }
    let mut config = weft_serve::ServeConfig::new(&args.wasm);
    match args.guest_env.env() {
        Ok(env) => config.env = env,
        Err(message) => {
            eprintln!("error: {message}");
            return weft_cli::serve::EXIT_LOAD_ERROR;
        }
    }
    config.dirs = args.guest_env.dirs();
    config.listen = args.listen;
    if let Some(workers) = args.workers {
        config.workers = workers as usize;
    }
    let mut policy = weft_serve::Policy::for_workers(config.workers);
    policy.max_in_flight_per_instance = args.max_in_flight as usize;
    if let Some(max_requests) = args.max_requests {
        policy.max_requests_per_instance = max_requests;
        config.sequential_max_requests = max_requests;
    }
    if let Some(max_instances) = args.max_instances {
        policy.max_instances = max_instances as usize;
    }
    if let Some(queue) = args.queue {
        policy.queue_capacity = queue;
    }
    if !(args.drain_timeout.is_finite() && args.drain_timeout >= 0.0) {
        eprintln!("error: `--drain-timeout` must be a non-negative number of seconds");
        return 2;
    }
    policy.drain_timeout = std::time::Duration::from_secs_f64(args.drain_timeout);
    config.policy = policy;
    config.cpu_budget = std::time::Duration::from_millis(args.cpu_budget_ms);
    config.per_request_instance = args.per_request_instance;
    config.trace = args.trace;
    config.access_log = !args.quiet;
    config.contexts.max_contexts = args.max_contexts as usize;
    args.limits.apply(&mut config.limits);
    config.metrics_addr = args.metrics_addr;
    config.trace_context = args.trace_context;
    config.reuse_port = args.reuse_port;
    config.otlp_endpoint = args.otlp_endpoint;
    weft_cli::serve::serve(config)
}
