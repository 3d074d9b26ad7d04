//! `weft`: run WebAssembly guests with stackful WASIX contexts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_cli::run::{EXIT_LOAD_ERROR, RunOptions};
use weft_wasix_context::ContextConfig;

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
}

#[derive(clap::Args)]
struct RunArgs {
    /// Pass an environment variable to the guest (`NAME=VALUE`, or `NAME` to copy the host's)
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Give the guest a host directory (`HOST` or `HOST::GUEST`)
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dir: Vec<String>,
    /// Maximum live contexts per instance; `context_create` beyond it fails with EAGAIN
    #[arg(long, value_name = "N", default_value_t = ContextConfig::default().max_contexts)]
    max_contexts: usize,
    /// Native stack wasm may use in each context (and main), in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ContextConfig::default().stack_size)]
    context_stack_size: usize,
    /// Linear-memory (C shadow) stack of each context, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ContextConfig::default().shadow_stack_size)]
    shadow_stack_size: usize,
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
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit statuses are 8 bits on Unix; the guest's code is passed through as is.
    ExitCode::from(code as u8)
}

fn run(args: RunArgs) -> i32 {
    let mut options = RunOptions::new(&args.wasm).contexts(ContextConfig {
        max_contexts: args.max_contexts,
        stack_size: args.context_stack_size,
        shadow_stack_size: args.shadow_stack_size,
        ..ContextConfig::default()
    });
    let mut guest_args = args.args;
    if guest_args.first().map(String::as_str) == Some("--") {
        guest_args.remove(0);
    }
    options = options.args(guest_args);
    for var in &args.env {
        match var.split_once('=') {
            Some((key, value)) => options = options.env(key, value),
            None => match std::env::var(var) {
                Ok(value) => options = options.env(var, value),
                Err(_) => {
                    eprintln!("error: `--env {var}`: the host has no variable `{var}` to pass on");
                    return EXIT_LOAD_ERROR;
                }
            },
        }
    }
    for dir in &args.dir {
        let (host, guest) = dir.split_once("::").unwrap_or((dir.as_str(), dir.as_str()));
        options = options.dir(host, guest);
    }
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
