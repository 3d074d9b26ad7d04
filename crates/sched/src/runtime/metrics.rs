//! Event counters: one set per worker (plus one for threads outside the runtime), written
//! without locked instructions and summed into a [`Metrics`] snapshot on demand.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Per-worker event counters (never reset), readable through
/// [`Runtime::metrics`](crate::Runtime::metrics).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) polls: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) spawned: AtomicU64,
    pub(super) parks: AtomicU64,
    pub(super) idle_rounds: AtomicU64,
    pub(super) steals: AtomicU64,
    pub(super) timers_fired: AtomicU64,
    pub(super) io_events: AtomicU64,
    pub(super) stale_entries: AtomicU64,
}

/// Adds to a counter that only its own worker writes (a plain load and store, no locked
/// read-modify-write on the hot path). Readers may see a slightly old value, never a torn one.
pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// A snapshot of what the runtime has done since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Number of worker threads.
    pub workers: usize,
    /// Tasks spawned.
    pub spawned: u64,
    /// Tasks whose body returned or panicked.
    pub completed: u64,
    /// Times a task's fiber was resumed.
    pub polls: u64,
    /// Times a worker blocked in the OS (condition variable or epoll) because it had no work.
    pub parks: u64,
    /// Times a worker ran out of local work and went looking (each is a bounded search).
    pub idle_rounds: u64,
    /// Successful steals from the injector or another worker.
    pub steals: u64,
    /// Timers that fired (cancelled timers never do).
    pub timers_fired: u64,
    /// I/O readiness events delivered.
    pub io_events: u64,
    /// Queue entries found not to be runnable (always 0: no task is ever queued twice).
    pub stale_entries: u64,
    /// Timers currently pending.
    pub pending_timers: usize,
}

impl Metrics {
    /// Sums every counter set into one snapshot.
    pub(super) fn sum(
        workers: usize,
        pending_timers: usize,
        counters: &[CachePadded<Counters>],
    ) -> Metrics {
        let mut m = Metrics {
            workers,
            pending_timers,
            ..Metrics::default()
        };
        for c in counters {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            m.spawned += get(&c.spawned);
            m.completed += get(&c.completed);
            m.polls += get(&c.polls);
            m.parks += get(&c.parks);
            m.idle_rounds += get(&c.idle_rounds);
            m.steals += get(&c.steals);
            m.timers_fired += get(&c.timers_fired);
            m.io_events += get(&c.io_events);
            m.stale_entries += get(&c.stale_entries);
        }
        m
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bump_adds() {
        let counter = AtomicU64::new(5);
        bump(&counter, 1);
        bump(&counter, 10);
        assert_eq!(counter.load(Ordering::Relaxed), 16);
    }

    #[test]
    fn sum_adds_every_counter_of_every_worker() {
        let counters: Vec<CachePadded<Counters>> = (0..3)
            .map(|_| CachePadded::new(Counters::default()))
            .collect();
        for (i, c) in counters.iter().enumerate() {
            let i = i as u64 + 1;
            bump(&c.polls, i);
            bump(&c.completed, 10 * i);
            bump(&c.spawned, 100 * i);
            bump(&c.parks, 1);
            bump(&c.idle_rounds, 2);
            bump(&c.steals, 3);
            bump(&c.timers_fired, 4);
            bump(&c.io_events, 5);
        }
        let m = Metrics::sum(2, 9, &counters);
        assert_eq!(
            m,
            Metrics {
                workers: 2,
                spawned: 600,
                completed: 60,
                polls: 6,
                parks: 3,
                idle_rounds: 6,
                steals: 9,
                timers_fired: 12,
                io_events: 15,
                stale_entries: 0,
                pending_timers: 9,
            }
        );
    }

    #[test]
    fn a_fresh_runtime_reports_zero_events() {
        let m = Metrics::sum(4, 0, &[CachePadded::new(Counters::default())]);
        assert_eq!(
            m,
            Metrics {
                workers: 4,
                ..Metrics::default()
            }
        );
    }
}
