//! `weft run`: a WASI preview 1 command with the WASIX context API, as a library call.

use std::path::PathBuf;

use wasmtime::{Config, Engine, Linker, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};
use weft_wasix_context::{
    ContextConfig, EntrypointReturned, HostContexts, WasixContexts, grant_host_access,
};

pub use weft_wasix_context::LoadError;

/// The exit status of a run whose context entrypoint returned (as in Wasmer).
pub const EXIT_ENTRYPOINT_RETURNED: i32 = 129;
/// The exit status of a trapped run (128 + SIGABRT, as `wasmtime run` on Unix).
pub const EXIT_TRAP: i32 = 134;
/// The exit status when the guest could not be loaded.
pub const EXIT_LOAD_ERROR: i32 = 1;

/// Limit of captured output per stream.
const CAPTURE_LIMIT: usize = 64 * 1024 * 1024;

/// What a WASI command's host provides, for the unknown-import message.
const PROVIDED: &str =
    "wasi_snapshot_preview1 and wasix_32v1.context_create/context_switch/context_destroy";

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// What `weft run` exits with: the guest's own code, [`EXIT_TRAP`] or
    /// [`EXIT_ENTRYPOINT_RETURNED`].
    pub exit_code: i32,
    /// The guest's output, when captured.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The trap or entrypoint-returned error (with its wasm backtrace), as printed.
    pub error: Option<String>,
}

/// A guest to run and how.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub wasm: PathBuf,
    /// Arguments after `argv[0]` (which is `wasm` as given).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Preopened directories: (host path, guest path).
    pub dirs: Vec<(PathBuf, String)>,
    pub contexts: ContextConfig,
    /// Capture stdout/stderr into the outcome instead of inheriting them.
    pub capture_output: bool,
}

impl RunOptions {
    pub fn new(wasm: impl Into<PathBuf>) -> Self {
        RunOptions {
            wasm: wasm.into(),
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            contexts: ContextConfig::default(),
            capture_output: false,
        }
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.dirs.push((host.into(), guest.into()));
        self
    }

    pub fn contexts(mut self, config: ContextConfig) -> Self {
        self.contexts = config;
        self
    }

    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = capture;
        self
    }

    /// Loads and runs the guest to its end. `Err` only when it could not be started.
    pub fn run(&self) -> Result<RunOutcome, LoadError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadError::Setup(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(self.run_async())
    }

    /// [`run`](Self::run) inside an existing tokio runtime.
    pub async fn run_async(&self) -> Result<RunOutcome, LoadError> {
        let path = &self.wasm;
        let mut config = Config::new();
        self.contexts.configure_engine(&mut config);
        let engine = Engine::new(&config).map_err(|e| LoadError::Setup(format!("{e:?}")))?;
        let module = weft_wasix_context::load_core_module(&engine, path)?;
        weft_wasix_context::check_entry(&module, path, "_start", "a WASI command")?;

        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut GuestState| {
            &mut state.wasi
        })
        .map_err(|e| LoadError::Setup(format!("{e:?}")))?;
        weft_wasix_context::add_to_linker(&mut linker, contexts)
            .map_err(|e| LoadError::Setup(format!("{e:?}")))?;

        let (wasi, output) = self.wasi_ctx()?;
        let mut store = Store::new(
            &engine,
            GuestState {
                wasi,
                contexts: WasixContexts::new(self.contexts.clone()),
            },
        );
        weft_wasix_context::check_imports(&linker, &mut store, &module, path, PROVIDED)?;
        let instance = linker
            .instantiate_async(&mut store, &module)
            .await
            .map_err(|e| LoadError::Instantiate {
                path: path.clone(),
                message: format!("{e:?}"),
            })?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| LoadError::Instantiate {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;

        let result = start.call_async(&mut store, ()).await;
        // Suspended contexts die with the run: release them before anything else. (`Busy`
        // is impossible once `_start` returned; dropping the store would release them anyway.)
        let _ = HostContexts::new(contexts).release_all(&mut store);
        drop(store);

        let (exit_code, error) = match result {
            Ok(()) => (0, None),
            Err(error) => {
                if let Some(exit) = error.downcast_ref::<I32Exit>() {
                    (exit.0, None)
                } else if error.downcast_ref::<EntrypointReturned>().is_some() {
                    (EXIT_ENTRYPOINT_RETURNED, Some(describe(&error)))
                } else {
                    (EXIT_TRAP, Some(describe(&error)))
                }
            }
        };
        let (stdout, stderr) = match output {
            Some((stdout, stderr)) => (stdout.contents().to_vec(), stderr.contents().to_vec()),
            None => (Vec::new(), Vec::new()),
        };
        Ok(RunOutcome {
            exit_code,
            stdout,
            stderr,
            error,
        })
    }

    #[allow(clippy::type_complexity)]
    fn wasi_ctx(
        &self,
    ) -> Result<(WasiP1Ctx, Option<(MemoryOutputPipe, MemoryOutputPipe)>), LoadError> {
        let mut builder = WasiCtxBuilder::new();
        let argv0 = self.wasm.to_string_lossy().into_owned();
        builder.arg(argv0);
        builder.args(&self.args);
        grant_host_access(&mut builder, &self.env, &self.dirs)?;
        let output = if self.capture_output {
            let stdout = MemoryOutputPipe::new(CAPTURE_LIMIT);
            let stderr = MemoryOutputPipe::new(CAPTURE_LIMIT);
            builder.stdout(stdout.clone()).stderr(stderr.clone());
            Some((stdout, stderr))
        } else {
            builder.inherit_stdio();
            None
        };
        Ok((builder.build_p1(), output))
    }
}

struct GuestState {
    wasi: WasiP1Ctx,
    contexts: WasixContexts,
}

fn contexts(state: &mut GuestState) -> &mut WasixContexts {
    &mut state.contexts
}

fn describe(error: &wasmtime::Error) -> String {
    let mut text = String::new();
    for (depth, cause) in error.chain().enumerate() {
        match depth {
            0 => text.push_str(&cause.to_string()),
            1 => text.push_str(&format!("\n\nCaused by:\n    {cause}")),
            _ => text.push_str(&format!("\n    {cause}")),
        }
    }
    text
}
