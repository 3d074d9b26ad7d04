//! `weft serve`: serve HTTP from a guest (crate `weft-serve`) until SIGINT or SIGTERM, then
//! drain. What is left here is the process's part: signals, the ready line, the exit status.

use std::io::Write;

use weft_serve::{ServeConfig, ServeError, Server};

/// Exit status when the guest cannot be loaded or the address cannot be bound.
pub const EXIT_LOAD_ERROR: i32 = 1;

/// Checks one `-S OPTION[=VALUE]` of `wasmtime serve`'s command line, so that a command line
/// written for it works here unchanged where it means what weft does: weft serve always links
/// `wasi:cli` and `wasi:http` for components, so `cli` and `http` (on) are accepted and change
/// nothing. Turning either off, or any other option, is refused: `Err` holds the message.
pub fn check_wasi_option(option: &str) -> Result<(), String> {
    const ACCEPTED: &str = "weft serve accepts only `-S cli` and `-S http` (both always on)";
    let (name, value) = match option.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    if name != "cli" && name != "http" {
        return Err(format!(
            "`-S {option}`: unsupported WASI option `{name}`; {ACCEPTED}"
        ));
    }
    // The spellings of a boolean `wasmtime serve` takes.
    match value {
        None | Some("y" | "yes" | "true") => Ok(()),
        Some("n" | "no" | "false") => Err(format!(
            "`-S {option}`: weft serve always provides wasi:{name} to components; it cannot be \
             turned off"
        )),
        Some(other) => Err(format!(
            "`-S {option}`: `{other}` is not y, yes, true, n, no or false; {ACCEPTED}"
        )),
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts later, so they can be
/// taken synchronously by [`wait_for_signal`]. Call before starting the server.
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: `set` is a local, initialised by `sigemptyset` before use; `pthread_sigmask`
    // only reads it. Blocking signals has no memory-safety consequence.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the signals in `set` (blocked beforehand); returns its number.
pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` is a valid, initialised signal set and `signal` a valid out-pointer.
    let result = unsafe { libc::sigwait(set, &mut signal) };
    if result == 0 { signal } else { libc::SIGTERM }
}

/// Runs `weft serve` until SIGINT/SIGTERM, then drains; returns the exit status.
pub fn serve(config: ServeConfig) -> i32 {
    let signals = block_stop_signals();
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(error) => {
            report_load_error(&error);
            return EXIT_LOAD_ERROR;
        }
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "weft serve: listening on http://{}",
        server.local_addr()
    );
    if let Some(metrics) = server.metrics_addr() {
        // After the listening line, which scripts read first.
        let _ = writeln!(stdout, "weft serve: metrics on http://{metrics}/metrics");
    }
    let _ = stdout.flush();
    let shutdown = server.shutdown_handle();
    std::thread::spawn(move || {
        let signal = wait_for_signal(&signals);
        eprintln!(
            "weft serve: {} received, draining",
            if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            }
        );
        shutdown.shutdown();
    });
    match server.wait() {
        Ok(report) if !report.killed.is_empty() => {
            eprintln!(
                "weft serve: the shutdown deadline passed with {} requests still live; killed: {}",
                report.killed.len(),
                report.killed.join(", ")
            );
            1
        }
        Ok(report) => {
            eprintln!(
                "weft serve: drained, {} requests served ({} refused, {} failed, {} stragglers)",
                report.served,
                report.stats.refused_loop
                    + report.stats.refused_overload
                    + report.stats.refused_shutdown,
                report.stats.failed,
                report.stats.stragglers
            );
            0
        }
        Err(error) => {
            eprintln!("error: cannot finish the trace file: {error}");
            1
        }
    }
}

fn report_load_error(error: &ServeError) {
    eprintln!("error: {error}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cli_and_http_on_are_accepted() {
        for ok in ["cli", "http", "cli=y", "http=yes", "cli=true"] {
            assert_eq!(check_wasi_option(ok), Ok(()), "{ok}");
        }
        for off in ["cli=n", "http=no", "cli=false"] {
            let message = check_wasi_option(off).unwrap_err();
            assert!(message.contains("always provides"), "{message}");
        }
        for other in ["inherit-env", "tcp=y", "cli=maybe", ""] {
            let message = check_wasi_option(other).unwrap_err();
            assert!(
                message.contains("accepts only `-S cli` and `-S http`"),
                "{message}"
            );
        }
    }
}
