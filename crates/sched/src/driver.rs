//! The I/O reactor: one `mio::Poll` per runtime, owned by whichever idle worker holds the driver
//! lock. That worker blocks in `epoll_wait` until an I/O event, the nearest timer deadline (a
//! timerfd armed with nanosecond precision on Linux), or a `mio::Waker` kick for new work.
//!
//! Registered sources live in a slab; a token is `generation << 32 | index`, so events for a
//! source that was deregistered (and its slot reused) are recognised as stale and dropped.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mio::event::Source;
use mio::{Events, Interest, Registry, Token};

const WAKER_TOKEN: Token = Token(usize::MAX);
#[cfg(target_os = "linux")]
const TIMER_TOKEN: Token = Token(usize::MAX - 1);

pub(crate) const READABLE: usize = 0b0001;
pub(crate) const WRITABLE: usize = 0b0010;
const READ_CLOSED: usize = 0b0100;
const WRITE_CLOSED: usize = 0b1000;
const READINESS_MASK: usize = 0xffff;
const TICK_ONE: usize = 1 << 16;

/// Which way a task waits on a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Direction {
    fn mask(self) -> usize {
        match self {
            Direction::Read => READABLE | READ_CLOSED,
            Direction::Write => WRITABLE | WRITE_CLOSED,
        }
    }
}

/// Readiness observed at some tick; `clear` only clears it if no newer event arrived since.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadyEvent {
    tick: usize,
}

#[derive(Default)]
struct IoWaiters {
    readers: Vec<Waker>,
    writers: Vec<Waker>,
}

/// Readiness of one registered source plus the wakers waiting on it.
#[derive(Default)]
pub(crate) struct ScheduledIo {
    /// Low 16 bits: readiness flags; high bits: event counter.
    readiness: AtomicUsize,
    waiters: Mutex<IoWaiters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScheduledIo {
    fn set_readiness(&self, flags: usize) {
        let _ = self
            .readiness
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(
                    (cur & !READINESS_MASK).wrapping_add(TICK_ONE) | (cur & READINESS_MASK) | flags,
                )
            });
        let woken = {
            let mut waiters = lock(&self.waiters);
            let mut woken = Vec::new();
            if flags & (READABLE | READ_CLOSED) != 0 {
                woken.append(&mut waiters.readers);
            }
            if flags & (WRITABLE | WRITE_CLOSED) != 0 {
                woken.append(&mut waiters.writers);
            }
            woken
        };
        for waker in woken {
            waker.wake();
        }
    }

    fn wake_all(&self) {
        self.set_readiness(READABLE | WRITABLE | READ_CLOSED | WRITE_CLOSED);
    }

    pub(crate) fn snapshot(&self) -> ReadyEvent {
        ReadyEvent {
            tick: self.readiness.load(Ordering::Acquire) >> 16,
        }
    }

    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>, dir: Direction) -> Poll<ReadyEvent> {
        let current = self.readiness.load(Ordering::Acquire);
        if current & dir.mask() != 0 {
            return Poll::Ready(ReadyEvent {
                tick: current >> 16,
            });
        }
        let mut waiters = lock(&self.waiters);
        let list = match dir {
            Direction::Read => &mut waiters.readers,
            Direction::Write => &mut waiters.writers,
        };
        if !list.iter().any(|w| w.will_wake(cx.waker())) {
            list.push(cx.waker().clone());
        }
        // An event that landed before we registered would otherwise be missed.
        let current = self.readiness.load(Ordering::Acquire);
        if current & dir.mask() != 0 {
            return Poll::Ready(ReadyEvent {
                tick: current >> 16,
            });
        }
        Poll::Pending
    }

    /// The operation hit WouldBlock: forget the readiness seen at `event`, unless a newer event
    /// arrived meanwhile. Closed flags are sticky.
    pub(crate) fn clear(&self, event: ReadyEvent, dir: Direction) {
        let clear = match dir {
            Direction::Read => READABLE,
            Direction::Write => WRITABLE,
        };
        let _ = self
            .readiness
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur >> 16 == event.tick).then_some(cur & !clear)
            });
    }
}

struct IoSlab {
    entries: Vec<(u32, Option<Arc<ScheduledIo>>)>,
    free: Vec<u32>,
}

/// Registration side of the reactor: usable from any thread.
pub(crate) struct IoRegistry {
    registry: Registry,
    slab: Mutex<IoSlab>,
    registered: AtomicUsize,
}

impl IoRegistry {
    pub(crate) fn register(
        &self,
        source: &mut impl Source,
    ) -> io::Result<(Token, Arc<ScheduledIo>)> {
        let io = Arc::new(ScheduledIo::default());
        let token = {
            let mut slab = lock(&self.slab);
            let index = match slab.free.pop() {
                Some(i) => i,
                None => {
                    slab.entries.push((0, None));
                    u32::try_from(slab.entries.len() - 1).expect("too many I/O sources")
                }
            };
            let entry = &mut slab.entries[index as usize];
            entry.1 = Some(io.clone());
            Token(((entry.0 as usize) << 32) | index as usize)
        };
        if let Err(e) =
            self.registry
                .register(source, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.release(token);
            return Err(e);
        }
        self.registered.fetch_add(1, Ordering::Relaxed);
        Ok((token, io))
    }

    pub(crate) fn deregister(&self, source: &mut impl Source, token: Token) {
        let _ = self.registry.deregister(source);
        self.release(token);
        self.registered.fetch_sub(1, Ordering::Relaxed);
    }

    fn release(&self, token: Token) {
        let index = token.0 & 0xffff_ffff;
        let mut slab = lock(&self.slab);
        let entry = &mut slab.entries[index];
        entry.0 = entry.0.wrapping_add(1);
        entry.1 = None;
        slab.free.push(index as u32);
    }

    fn lookup(&self, token: Token) -> Option<Arc<ScheduledIo>> {
        let index = token.0 & 0xffff_ffff;
        let generation = (token.0 >> 32) as u32;
        let slab = lock(&self.slab);
        let (entry_generation, io) = slab.entries.get(index)?;
        if *entry_generation != generation {
            return None;
        }
        io.clone()
    }

    pub(crate) fn has_sources(&self) -> bool {
        self.registered.load(Ordering::Relaxed) > 0
    }

    /// Wakes every waiter (runtime shutdown) so nothing stays blocked on a dead reactor.
    pub(crate) fn wake_all(&self) {
        let all: Vec<_> = lock(&self.slab)
            .entries
            .iter()
            .filter_map(|e| e.1.clone())
            .collect();
        for io in all {
            io.wake_all();
        }
    }
}

/// The blocking side of the reactor, owned by the worker holding the driver lock.
pub(crate) struct Driver {
    poll: mio::Poll,
    events: Events,
    #[cfg(target_os = "linux")]
    timer: Option<TimerFd>,
}

/// Creates the reactor: the driver, the shared registry, and the waker that interrupts a poll.
pub(crate) fn new_reactor(
    monotonic_base_ns: Option<u64>,
) -> io::Result<(Driver, IoRegistry, mio::Waker)> {
    let poll = mio::Poll::new()?;
    let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
    let registry = poll.registry().try_clone()?;
    #[cfg(target_os = "linux")]
    let timer = match monotonic_base_ns {
        Some(base) => TimerFd::new(poll.registry(), base).ok(),
        None => None,
    };
    #[cfg(not(target_os = "linux"))]
    let _ = monotonic_base_ns;
    Ok((
        Driver {
            poll,
            events: Events::with_capacity(1024),
            #[cfg(target_os = "linux")]
            timer,
        },
        IoRegistry {
            registry,
            slab: Mutex::new(IoSlab {
                entries: Vec::new(),
                free: Vec::new(),
            }),
            registered: AtomicUsize::new(0),
        },
        waker,
    ))
}

impl Driver {
    /// Blocks until an event, a kick, or `deadline` (ns since the timer base; `now` is the current
    /// time on that clock). `deadline == Some(now)` polls without blocking.
    pub(crate) fn park(&mut self, now: u64, deadline: Option<u64>) {
        let timeout = match deadline {
            None => None,
            Some(d) if d <= now => Some(Duration::ZERO),
            Some(d) => Some(self.timeout_until(now, d)),
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.events.clear(),
            Err(e) => panic!("weft-sched reactor: epoll failed: {e}"),
        }
    }

    fn timeout_until(&mut self, now: u64, deadline: u64) -> Duration {
        let exact = Duration::from_nanos(deadline - now);
        #[cfg(target_os = "linux")]
        if let Some(timer) = &mut self.timer
            && timer.arm(deadline).is_ok()
        {
            // The timerfd gives the precise wake-up; epoll's millisecond-rounded timeout is only
            // a backstop.
            return exact + Duration::from_millis(1);
        }
        exact
    }

    /// Hands the events of the last `park` to their sources (waking their tasks).
    pub(crate) fn dispatch(&mut self, registry: &IoRegistry) -> usize {
        let mut count = 0;
        for event in self.events.iter() {
            let token = event.token();
            if token == WAKER_TOKEN {
                continue;
            }
            #[cfg(target_os = "linux")]
            if token == TIMER_TOKEN {
                if let Some(timer) = &mut self.timer {
                    timer.acknowledge();
                }
                continue;
            }
            let Some(io) = registry.lookup(token) else {
                continue;
            };
            let mut flags = 0;
            if event.is_readable() {
                flags |= READABLE;
            }
            if event.is_writable() {
                flags |= WRITABLE;
            }
            if event.is_read_closed() || event.is_error() {
                flags |= READ_CLOSED;
            }
            if event.is_write_closed() || event.is_error() {
                flags |= WRITE_CLOSED;
            }
            io.set_readiness(flags);
            count += 1;
        }
        self.events.clear();
        count
    }
}

/// A CLOCK_MONOTONIC timerfd registered with the poll, armed with absolute deadlines.
#[cfg(target_os = "linux")]
struct TimerFd {
    fd: std::os::fd::OwnedFd,
    monotonic_base_ns: u64,
    armed: Option<u64>,
}

#[cfg(target_os = "linux")]
impl TimerFd {
    fn new(registry: &Registry, monotonic_base_ns: u64) -> io::Result<TimerFd> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: timerfd_create takes no pointers and has no preconditions; a negative result
        // is checked below before the descriptor is used.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        registry.register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            TIMER_TOKEN,
            Interest::READABLE,
        )?;
        Ok(TimerFd {
            fd,
            monotonic_base_ns,
            armed: None,
        })
    }

    fn arm(&mut self, deadline: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if self.armed == Some(deadline) {
            return Ok(());
        }
        let absolute = self.monotonic_base_ns.saturating_add(deadline);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (absolute / 1_000_000_000) as libc::time_t,
                tv_nsec: (absolute % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `fd` is our timerfd; `spec` is a valid itimerspec; the old value is not wanted.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            self.armed = None;
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(deadline);
        Ok(())
    }

    fn acknowledge(&mut self) {
        use std::os::fd::AsRawFd;
        let mut expirations = 0u64;
        // SAFETY: the pointer and length describe a live local u64 that `read` may fill; the
        // descriptor is our own open timerfd (owned by `self.fd`, non-blocking). A failed or
        // short read leaves the local as it was, and its value is not used anyway.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut expirations as *mut u64).cast(),
                8,
            )
        };
        self.armed = None;
    }
}

/// CLOCK_MONOTONIC now, in ns (what `Instant` uses on Linux).
#[cfg(target_os = "linux")]
pub(crate) fn monotonic_now_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable local timespec, the only memory clock_gettime writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn monotonic_now_ns() -> Option<u64> {
    None
}
