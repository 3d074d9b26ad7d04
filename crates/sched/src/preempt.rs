//! The preemption ticker: a thread that calls a callback every interval.
//!
//! The runtime's own ticker advances an epoch that [`should_yield`](crate::should_yield) compares
//! with the epoch at which the running task was resumed; wasm layers hook the same tick (see
//! [`Builder::on_tick`](crate::Builder::on_tick)) to advance a wasmtime engine epoch, so a guest
//! stuck in a loop reaches a yield point.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// State shared by a ticker thread and its owners.
pub(crate) struct TickerState {
    stopped: Mutex<bool>,
    condvar: Condvar,
    paused: AtomicBool,
}

impl TickerState {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restarts a ticker that paused itself (one atomic load when it is running).
    pub(crate) fn resume_if_paused(&self) {
        if self.paused.load(Ordering::SeqCst) {
            self.paused.store(false, Ordering::SeqCst);
            drop(self.lock());
            self.condvar.notify_all();
        }
    }
}

/// A thread calling a callback every `interval` until the `Ticker` is dropped.
pub struct Ticker {
    state: Arc<TickerState>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Ticker {
    /// Starts the ticker thread. Ticks are scheduled on a fixed grid from the start time (no
    /// drift); a callback that overruns skips the ticks it missed.
    pub fn start(
        interval: Duration,
        callback: impl FnMut() + Send + 'static,
    ) -> io::Result<Ticker> {
        Ticker::start_pausable(interval, || false, callback)
    }

    /// Like `start`, but at a tick where `idle()` holds the ticker pauses (no wake-ups at all)
    /// until [`TickerState::resume_if_paused`]. `idle` is checked again after the pause is
    /// published, so a resume racing with it is never lost.
    pub(crate) fn start_pausable(
        interval: Duration,
        idle: impl Fn() -> bool + Send + 'static,
        mut callback: impl FnMut() + Send + 'static,
    ) -> io::Result<Ticker> {
        if interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ticker interval must be positive",
            ));
        }
        let state = Arc::new(TickerState {
            stopped: Mutex::new(false),
            condvar: Condvar::new(),
            paused: AtomicBool::new(false),
        });
        let thread_state = state.clone();
        let thread = thread::Builder::new()
            .name("weft-ticker".to_string())
            .spawn(move || {
                let state = &*thread_state;
                let mut next = Instant::now() + interval;
                let mut guard = state.lock();
                loop {
                    if *guard {
                        return;
                    }
                    let now = Instant::now();
                    if now < next {
                        guard = state
                            .condvar
                            .wait_timeout(guard, next - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    if idle() {
                        state.paused.store(true, Ordering::SeqCst);
                        if idle() {
                            while state.paused.load(Ordering::SeqCst) && !*guard {
                                guard =
                                    state.condvar.wait(guard).unwrap_or_else(|e| e.into_inner());
                            }
                            next = Instant::now() + interval;
                            continue;
                        }
                        state.paused.store(false, Ordering::SeqCst);
                    }
                    drop(guard);
                    callback();
                    let after = Instant::now();
                    next += interval;
                    if next <= after {
                        let missed = (after - next).as_nanos() / interval.as_nanos() + 1;
                        next += interval * missed as u32;
                    }
                    guard = state.lock();
                }
            })?;
        Ok(Ticker {
            state,
            thread: Some(thread),
        })
    }

    pub(crate) fn state(&self) -> &Arc<TickerState> {
        &self.state
    }

    /// Stops the ticker and waits for its thread (also done on drop).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        *self.state.lock() = true;
        self.state.condvar.notify_all();
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

#[cfg(all(test, not(loom)))]
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
    fn a_paused_ticker_does_not_tick_until_resumed() {
        let idle = Arc::new(AtomicBool::new(true));
        let count = Arc::new(AtomicUsize::new(0));
        let (i, c) = (idle.clone(), count.clone());
        let (tx, rx) = mpsc::channel();
        let ticker = Ticker::start_pausable(
            Duration::from_millis(1),
            move || i.load(Ordering::SeqCst),
            move || {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = tx.send(());
                }
            },
        )
        .unwrap();
        // Idle: wait until it has paused itself, then make sure no tick happens.
        while !ticker.state().paused.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(5));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        idle.store(false, Ordering::SeqCst);
        ticker.state().resume_if_paused();
        rx.recv().unwrap();
        ticker.stop();
    }

    #[test]
    fn zero_interval_is_rejected() {
        assert!(Ticker::start(Duration::ZERO, || {}).is_err());
    }
}
