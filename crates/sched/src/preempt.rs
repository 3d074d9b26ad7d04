//! The preemption ticker: a thread that calls a callback every interval.
//!
//! The runtime's own ticker advances an epoch that [`should_yield`](crate::should_yield) compares
//! with the epoch at which the running task was resumed; wasm layers hook the same tick (see
//! [`Builder::on_tick`](crate::Builder::on_tick)) to advance a wasmtime engine epoch, so a guest
//! stuck in a loop reaches a yield point.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A thread calling a callback every `interval` until the `Ticker` is dropped.
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Ticker {
    /// Starts the ticker thread. Ticks are scheduled on a fixed grid from the start time (no
    /// drift); a callback that overruns skips the ticks it missed.
    pub fn start(
        interval: Duration,
        mut callback: impl FnMut() + Send + 'static,
    ) -> io::Result<Ticker> {
        if interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ticker interval must be positive",
            ));
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = stop.clone();
        let thread = thread::Builder::new()
            .name("weft-ticker".to_string())
            .spawn(move || {
                let (stopped, condvar) = &*thread_stop;
                let mut next = Instant::now() + interval;
                let mut guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let now = Instant::now();
                    if now < next {
                        if *guard {
                            return;
                        }
                        guard = condvar
                            .wait_timeout(guard, next - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        if *guard {
                            return;
                        }
                        continue;
                    }
                    drop(guard);
                    callback();
                    let after = Instant::now();
                    next += interval;
                    if next <= after {
                        let missed = (after - next).as_nanos() / interval.as_nanos() + 1;
                        next += interval * missed as u32;
                    }
                    guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the ticker and waits for its thread (also done on drop).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let (stopped, condvar) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        condvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn ticks_until_dropped() {
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let c = count.clone();
        let ticker = Ticker::start(Duration::from_millis(1), move || {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                let _ = tx.send(());
            }
        })
        .unwrap();
        rx.recv().unwrap();
        ticker.stop();
        let after_stop = count.load(Ordering::SeqCst);
        assert!(after_stop >= 3);
        thread::sleep(Duration::from_millis(5));
        assert_eq!(
            count.load(Ordering::SeqCst),
            after_stop,
            "no tick after stop"
        );
    }

    #[test]
    fn zero_interval_is_rejected() {
        assert!(Ticker::start(Duration::ZERO, || {}).is_err());
    }
}
