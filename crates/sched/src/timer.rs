//! The timer queue: one 4-ary min-heap per runtime, shared by all workers behind a mutex, indexed
//! so that a cancelled timer is removed at once in O(log n) (it never fires, never wakes a worker
//! and never delays another timer later).
//!
//! Entries are ordered by (deadline, insertion sequence), so timers with equal deadlines fire in
//! the order they were set. Deadlines are nanoseconds since the runtime's base `Instant`. The
//! earliest deadline is mirrored in an atomic so busy workers can check "anything due?" without
//! taking the lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::runtime::Shared;
use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, fence};

const NO_DEADLINE: u64 = u64::MAX;
const FREE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: u32,
    generation: u32,
}

#[derive(Clone, Copy)]
struct HeapEntry {
    deadline: u64,
    seq: u64,
    slot: u32,
}

impl HeapEntry {
    fn before(&self, other: &HeapEntry) -> bool {
        (self.deadline, self.seq) < (other.deadline, other.seq)
    }
}

struct Slot {
    generation: u32,
    /// Index in `heap`, or FREE.
    position: u32,
    waker: Option<Waker>,
}

/// An indexed 4-ary min-heap of wakers keyed by deadline.
#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: Vec<HeapEntry>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    next_seq: u64,
}

impl TimerHeap {
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn earliest(&self) -> Option<u64> {
        self.heap.first().map(|e| e.deadline)
    }

    pub(crate) fn insert(&mut self, deadline: u64, waker: Waker) -> TimerKey {
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    position: FREE,
                    waker: None,
                });
                u32::try_from(self.slots.len() - 1).expect("more than 4 billion timers")
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let position = self.heap.len();
        self.heap.push(HeapEntry {
            deadline,
            seq,
            slot,
        });
        let s = &mut self.slots[slot as usize];
        s.position = position as u32;
        s.waker = Some(waker);
        self.sift_up(position);
        TimerKey {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn live_slot(&mut self, key: TimerKey) -> Option<&mut Slot> {
        self.slots
            .get_mut(key.slot as usize)
            .filter(|s| s.generation == key.generation && s.position != FREE)
    }

    /// Replaces the waker of a pending timer; false if it already fired or was cancelled.
    pub(crate) fn update_waker(&mut self, key: TimerKey, waker: &Waker) -> bool {
        match self.live_slot(key) {
            Some(slot) => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    slot.waker = Some(waker.clone());
                }
                true
            }
            None => false,
        }
    }

    /// Removes a pending timer, returning its waker (to be dropped outside the lock).
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<Waker> {
        let position = self.live_slot(key)?.position as usize;
        Some(self.remove_at(position))
    }

    /// Pops every timer whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: u64, out: &mut Vec<Waker>) {
        while let Some(first) = self.heap.first() {
            if first.deadline > now {
                break;
            }
            let waker = self.remove_at(0);
            out.push(waker);
        }
    }

    /// Removes every timer (runtime shutdown).
    pub(crate) fn drain(&mut self, out: &mut Vec<Waker>) {
        while !self.heap.is_empty() {
            let last = self.heap.len() - 1;
            out.push(self.remove_at(last));
        }
    }

    fn remove_at(&mut self, position: usize) -> Waker {
        let removed = self.heap.swap_remove(position);
        let slot = &mut self.slots[removed.slot as usize];
        slot.position = FREE;
        slot.generation = slot.generation.wrapping_add(1);
        let waker = slot
            .waker
            .take()
            .expect("a pending timer always has a waker");
        self.free_slots.push(removed.slot);
        if position < self.heap.len() {
            self.slots[self.heap[position].slot as usize].position = position as u32;
            self.sift_down(position);
            self.sift_up(position);
        }
        waker
    }

    /// Puts `entry` at `i` and records its position in its slot.
    fn place(&mut self, i: usize, entry: HeapEntry) {
        self.slots[entry.slot as usize].position = i as u32;
        self.heap[i] = entry;
    }

    fn sift_up(&mut self, mut i: usize) {
        let entry = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if !entry.before(&self.heap[parent]) {
                break;
            }
            self.place(i, self.heap[parent]);
            i = parent;
        }
        self.place(i, entry);
    }

    fn sift_down(&mut self, mut i: usize) {
        let entry = self.heap[i];
        let len = self.heap.len();
        loop {
            let first = ARITY * i + 1;
            if first >= len {
                break;
            }
            let mut child = first;
            for c in first + 1..(first + ARITY).min(len) {
                if self.heap[c].before(&self.heap[child]) {
                    child = c;
                }
            }
            if !self.heap[child].before(&entry) {
                break;
            }
            self.place(i, self.heap[child]);
            i = child;
        }
        self.place(i, entry);
    }
}

/// Children per node of the timer heap. Four rather than two halves the depth, so popping an
/// expired timer (the last entry sinks from the root to the bottom) moves half as many entries
/// and touches half as many slots, at the cost of comparing four children per level, which sit
/// in one or two cache lines.
const ARITY: usize = 4;

/// The runtime's clock and timer heap.
pub(crate) struct Timers {
    base: Instant,
    heap: Mutex<TimerHeap>,
    earliest: AtomicU64,
    /// A worker is blocked in the driver with a deadline computed from `earliest` (the
    /// hand-off is described in `runtime/idle.rs`).
    driver_parked: AtomicBool,
    /// Timer wake-ups of an idle worker are at least this far apart: a timer due sooner after
    /// the previous firing waits for the rest of the window, so a burst of nearby deadlines
    /// costs a few wake-ups, not one each (sleeps are never shortened).
    coalesce_ns: u64,
    /// When timers last fired (ns since base).
    last_fired: AtomicU64,
    /// Set by `drain` (shutdown): from then on a timer that left the heap did not necessarily
    /// fire.
    drained: AtomicBool,
    /// Every timer in the heap with a deadline at or before this has fired (the largest `now`
    /// of a firing pass; written under the heap lock).
    fired_through: AtomicU64,
}

impl Timers {
    pub(crate) fn new(coalesce: Duration) -> Timers {
        Timers {
            base: Instant::now(),
            heap: Mutex::new(TimerHeap::default()),
            earliest: AtomicU64::new(NO_DEADLINE),
            driver_parked: AtomicBool::new(false),
            coalesce_ns: coalesce.as_nanos().min(u64::MAX as u128) as u64,
            last_fired: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            fired_through: AtomicU64::new(0),
        }
    }

    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    pub(crate) fn now(&self) -> u64 {
        self.to_ticks(Instant::now())
    }

    pub(crate) fn to_ticks(&self, at: Instant) -> u64 {
        at.checked_duration_since(self.base)
            .map_or(0, |d| d.as_nanos().min(NO_DEADLINE as u128 - 1) as u64)
    }

    fn lock(&self) -> MutexGuard<'_, TimerHeap> {
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the heap locked. `earliest` is written only under that lock, so a relaxed
    /// load here reads its latest value; an unchanged earliest deadline (most inserts, most
    /// cancellations) is not stored again, saving a fenced store.
    fn publish_earliest(&self, heap: &TimerHeap) {
        let earliest = heap.earliest().unwrap_or(NO_DEADLINE);
        if self.earliest.load(Ordering::Relaxed) != earliest {
            self.earliest.store(earliest, Ordering::SeqCst);
        }
    }

    /// The deadline a parking worker should wake up at: the earliest timer, but no sooner than
    /// the coalescing window after the last firing.
    pub(crate) fn wake_deadline(&self) -> Option<u64> {
        let earliest = self.earliest.load(Ordering::SeqCst);
        if earliest == NO_DEADLINE {
            return None;
        }
        let window_end = self
            .last_fired
            .load(Ordering::Relaxed)
            .saturating_add(self.coalesce_ns);
        Some(earliest.max(window_end))
    }

    /// A worker is about to block in the driver: returns the deadline to wake up at.
    pub(crate) fn enter_driver(&self) -> Option<u64> {
        self.driver_parked.store(true, Ordering::SeqCst);
        // F4, pairs with F3 in `driver_needs_kick`: either `wake_deadline` below sees a new
        // earliest deadline published before F3, or the inserter's load after F3 sees
        // `driver_parked` and kicks the poll.
        fence(Ordering::SeqCst);
        self.wake_deadline()
    }

    /// The worker is back from the driver.
    pub(crate) fn leave_driver(&self) {
        self.driver_parked.store(false, Ordering::SeqCst);
    }

    /// After `insert` published a new earliest deadline: true if a worker blocks in the driver
    /// with a deadline that may not include it, so the poll must be kicked to re-arm.
    pub(crate) fn driver_needs_kick(&self) -> bool {
        // F3, pairs with F4 in `enter_driver`: either this load sees `driver_parked`, or the
        // driver's read of `earliest` after F4 sees the deadline published before F3.
        fence(Ordering::SeqCst);
        self.driver_parked.load(Ordering::SeqCst)
    }

    /// A worker blocks in the driver (a hint for handing the driver role over).
    pub(crate) fn is_driver_parked(&self) -> bool {
        self.driver_parked.load(Ordering::SeqCst)
    }

    /// True if a timer is due; reads the clock only when a timer is pending at all.
    pub(crate) fn any_due(&self) -> bool {
        let earliest = self.earliest.load(Ordering::Acquire);
        earliest != NO_DEADLINE && earliest <= self.now()
    }

    pub(crate) fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Inserts a timer; returns its key, whether it became the earliest one, and whether
    /// `fired_through` can tell when it fired (see `has_fired`).
    fn insert(&self, deadline: u64, waker: Waker) -> (TimerKey, bool, bool) {
        let mut heap = self.lock();
        let key = heap.insert(deadline, waker);
        let is_earliest = heap.earliest() == Some(deadline);
        self.publish_earliest(&heap);
        let trackable = self.fired_through.load(Ordering::Relaxed) < deadline;
        (key, is_earliest, trackable)
    }

    /// True if a timer inserted as `trackable` has left the heap by firing. `fired_through`
    /// only grows, and it was below the deadline when the timer was inserted, so a value at or
    /// past the deadline was stored by a firing pass that came after the insertion, and that
    /// pass popped every timer due by then. Lock-free, so the timer's task does not contend
    /// with the worker still firing the rest of a burst.
    fn has_fired(&self, deadline: u64) -> bool {
        deadline <= self.fired_through.load(Ordering::Acquire)
    }

    fn update_waker(&self, key: TimerKey, waker: &Waker) -> bool {
        self.lock().update_waker(key, waker)
    }

    fn cancel(&self, key: TimerKey) {
        let waker = {
            let mut heap = self.lock();
            let waker = heap.cancel(key);
            self.publish_earliest(&heap);
            waker
        };
        drop(waker);
    }

    /// Wakes every expired timer; returns how many fired. Reads the clock only when a timer is
    /// pending at all.
    pub(crate) fn fire_due(&self) -> usize {
        let earliest = self.earliest.load(Ordering::Acquire);
        if earliest == NO_DEADLINE {
            return 0;
        }
        let now = self.now();
        if earliest > now {
            return 0;
        }
        let mut due = Vec::new();
        {
            let mut heap = self.lock();
            heap.pop_expired(now, &mut due);
            self.publish_earliest(&heap);
            // Under the lock, so the value only grows (two passes may read the clock in one
            // order and take the lock in the other); Release pairs with `has_fired`.
            if now > self.fired_through.load(Ordering::Relaxed) {
                self.fired_through.store(now, Ordering::Release);
            }
        }
        let fired = due.len();
        if fired > 0 {
            self.last_fired.store(now, Ordering::Relaxed);
        }
        for waker in due {
            waker.wake();
        }
        fired
    }

    pub(crate) fn drain(&self) -> Vec<Waker> {
        self.drained.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        let mut heap = self.lock();
        heap.drain(&mut all);
        self.publish_earliest(&heap);
        all
    }
}

/// A future that completes at a deadline; dropping it cancels the timer.
///
/// Inside a green thread, prefer the blocking [`sleep`](crate::sleep); this type is for async code
/// driven by [`block_on`](crate::block_on) (and shares its timer logic with `sleep`).
pub struct Sleep {
    shared: Arc<Shared>,
    timer: TimerState,
}

/// A sleep's deadline and its pending timer: what `Sleep` keeps besides its runtime, so the
/// blocking `sleep` can borrow the runtime from its green thread's task instead of holding a
/// reference count on it (a counter shared by every worker).
struct TimerState {
    deadline: u64,
    key: Option<TimerKey>,
    /// `Timers::has_fired` applies to the pending timer.
    trackable: bool,
    /// The creator just read the clock and saw the deadline ahead (the blocking `sleep`), so
    /// the first poll goes straight to inserting the timer. A deadline that passes in between
    /// only makes the timer fire at the next check: never early.
    known_pending: bool,
}

impl TimerState {
    fn poll(&mut self, shared: &Shared, cx: &mut Context<'_>) -> Poll<()> {
        let timers = &shared.timers;
        if self.key.is_some() && self.trackable && timers.has_fired(self.deadline) {
            self.key = None;
            return Poll::Ready(());
        }
        if let Some(key) = self.key {
            // Timers leave the heap only when they fire (their deadline has passed), are
            // cancelled (which clears `key`) or are drained at shutdown: a timer gone from the
            // heap before shutdown means the sleep is over, with no need to read the clock.
            if timers.update_waker(key, cx.waker()) {
                if timers.now() < self.deadline {
                    return Poll::Pending;
                }
                timers.cancel(key);
                self.key = None;
                return Poll::Ready(());
            }
            self.key = None;
            if !timers.drained.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
        }
        if !std::mem::take(&mut self.known_pending) && timers.now() >= self.deadline {
            return Poll::Ready(());
        }
        let (key, is_earliest, trackable) = timers.insert(self.deadline, cx.waker().clone());
        self.key = Some(key);
        self.trackable = trackable;
        if is_earliest {
            shared.timer_moved_earlier();
        }
        Poll::Pending
    }

    fn cancel(&mut self, shared: &Shared) {
        if let Some(key) = self.key.take() {
            shared.timers.cancel(key);
        }
    }
}

/// The blocking `sleep`'s future inside a green thread, borrowing the task's runtime.
struct TaskSleep<'a> {
    shared: &'a Shared,
    timer: TimerState,
}

impl Future for TaskSleep<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.timer.poll(this.shared, cx)
    }
}

impl Drop for TaskSleep<'_> {
    fn drop(&mut self) {
        self.timer.cancel(self.shared);
    }
}

impl Sleep {
    /// A sleep on the current runtime.
    ///
    /// # Panics
    /// Outside a runtime (no green thread, worker or `Runtime::enter` on this thread).
    pub fn until(deadline: Instant) -> Sleep {
        let shared = crate::context::current_shared()
            .expect("weft_sched::Sleep needs a runtime: call it from a green thread or inside Runtime::enter");
        Sleep::on(shared, deadline)
    }

    /// A sleep of `duration` from now on the current runtime.
    ///
    /// # Panics
    /// Outside a runtime, as [`Sleep::until`].
    pub fn new(duration: Duration) -> Sleep {
        Sleep::until(instant_after(duration))
    }

    pub(crate) fn on(shared: Arc<Shared>, deadline: Instant) -> Sleep {
        let deadline = shared.timers.to_ticks(deadline);
        Sleep {
            shared,
            timer: TimerState {
                deadline,
                key: None,
                trackable: false,
                known_pending: false,
            },
        }
    }

    /// The instant this sleep completes at.
    pub fn deadline(&self) -> Instant {
        self.shared.timers.base() + Duration::from_nanos(self.timer.deadline)
    }

    /// True once the deadline has passed.
    pub fn is_elapsed(&self) -> bool {
        self.shared.timers.now() >= self.timer.deadline
    }

    /// Moves the deadline (the pending timer, if any, is cancelled).
    pub fn reset(&mut self, deadline: Instant) {
        self.timer.cancel(&self.shared);
        self.timer.deadline = self.shared.timers.to_ticks(deadline);
    }
}

/// `now + duration`, saturating far in the future instead of overflowing.
pub(crate) fn instant_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.timer.poll(&this.shared, cx)
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.timer.cancel(&self.shared);
    }
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline())
            .finish()
    }
}

/// Blocks the calling green thread for at least `duration` (other green threads keep running).
/// Outside a runtime this is `std::thread::sleep`.
pub fn sleep(duration: Duration) {
    if duration.is_zero() {
        return;
    }
    // One clock read per sleep: 10,000 green threads going to sleep read it 10,000 times.
    block_until(instant_after(duration));
}

/// Blocks the calling green thread until `deadline`. Outside a runtime this blocks the OS thread.
pub fn sleep_until(deadline: Instant) {
    if Instant::now() >= deadline {
        return;
    }
    block_until(deadline);
}

/// Sleeps until `deadline`, which the caller just saw ahead of the clock.
fn block_until(deadline: Instant) {
    let task = crate::context::current_task();
    if !task.is_null() {
        // SAFETY: a non-null current task is the task whose fiber runs this code; the worker
        // that resumed it holds an `Arc<Task>`. The task's runtime outlives this frame, though
        // the fiber may move between threads and the task may be dropped while it sleeps: a
        // task drops (unwinding) its fiber before its own fields, its `shared` included, and
        // the fiber's last frame has returned before the task is marked complete.
        let shared: &Shared = unsafe { (*task).shared() };
        let timer = TimerState {
            deadline: shared.timers.to_ticks(deadline),
            key: None,
            trackable: false,
            known_pending: true,
        };
        return crate::block_on(TaskSleep { shared, timer });
    }
    match crate::context::current_shared() {
        Some(shared) => {
            let mut sleep = Sleep::on(shared, deadline);
            sleep.timer.known_pending = true;
            crate::block_on(sleep)
        }
        None => std::thread::sleep(deadline.saturating_duration_since(Instant::now())),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<CountingWaker>, Waker) {
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (w.clone(), Waker::from(w))
    }

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let mut heap = TimerHeap::default();
        let deadlines = [50, 10, 30, 10, 20, 40, 0, 30];
        let counters: Vec<_> = deadlines
            .iter()
            .map(|&d| {
                let (c, w) = waker();
                heap.insert(d, w);
                c
            })
            .collect();
        let mut out = Vec::new();
        heap.pop_expired(25, &mut out);
        assert_eq!(out.len(), 4);
        for w in out {
            w.wake();
        }
        for (i, &d) in deadlines.iter().enumerate() {
            assert_eq!(counters[i].0.load(Ordering::SeqCst), usize::from(d <= 25));
        }
        assert_eq!(heap.earliest(), Some(30));
    }

    #[test]
    fn cancel_removes_at_once_and_stale_keys_are_ignored() {
        let mut heap = TimerHeap::default();
        let (_, w1) = waker();
        let (_, w2) = waker();
        let k1 = heap.insert(5, w1);
        let k2 = heap.insert(7, w2);
        assert!(heap.cancel(k1).is_some());
        assert_eq!(heap.len(), 1);
        assert_eq!(heap.earliest(), Some(7));
        assert!(heap.cancel(k1).is_none(), "double cancel is a no-op");
        let (_, w3) = waker();
        let k3 = heap.insert(1, w3);
        assert_eq!(k3.slot, k1.slot, "slot reused");
        assert!(
            heap.cancel(k1).is_none(),
            "stale key must not cancel the reused slot"
        );
        assert_eq!(heap.len(), 2);
        let mut out = Vec::new();
        heap.pop_expired(100, &mut out);
        assert_eq!(out.len(), 2);
        assert!(!heap.update_waker(k2, &out[0]));
    }

    #[test]
    fn heap_matches_a_sorted_model_under_random_ops() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(64), |(ops in proptest::collection::vec((0u8..3, 0u64..1000), 1..200))| {
            let mut heap = TimerHeap::default();
            let mut model: Vec<(u64, u64, TimerKey)> = Vec::new();
            let mut seq = 0;
            for (op, value) in ops {
                match op {
                    0 => {
                        let (_, w) = waker();
                        let key = heap.insert(value, w);
                        model.push((value, seq, key));
                        seq += 1;
                    }
                    1 if !model.is_empty() => {
                        let (_, _, key) = model.remove(value as usize % model.len());
                        prop_assert!(heap.cancel(key).is_some());
                    }
                    _ => {
                        let mut out = Vec::new();
                        heap.pop_expired(value, &mut out);
                        let before = model.len();
                        model.retain(|(d, _, _)| *d > value);
                        prop_assert_eq!(out.len(), before - model.len());
                    }
                }
                prop_assert_eq!(heap.len(), model.len());
                prop_assert_eq!(heap.earliest(), model.iter().map(|m| m.0).min());
            }
        });
    }
}

/// Model check of the timer hand-off to the driver (F3 ↔ F4, described in `runtime/idle.rs`):
/// run with `RUSTFLAGS="--cfg loom" cargo test -p weft-sched --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// A timer inserted while a worker enters the driver is either in the deadline the driver
    /// polls with, or the inserter kicks the poll (a sticky eventfd write).
    #[test]
    fn loom_a_new_earliest_timer_reaches_the_driver() {
        loom::model(|| {
            let timers = loom::sync::Arc::new(Timers::new(Duration::ZERO));
            let kicked = loom::sync::Arc::new(AtomicBool::new(false));
            let inserter = {
                let (timers, kicked) = (timers.clone(), kicked.clone());
                thread::spawn(move || {
                    // What `Sleep::poll` and `Shared::timer_moved_earlier` do.
                    let (_, is_earliest, _) = timers.insert(1_000_000_000, Waker::noop().clone());
                    if is_earliest && timers.driver_needs_kick() {
                        kicked.store(true, Ordering::Release);
                    }
                })
            };
            let deadline = timers.enter_driver();
            inserter.join().unwrap();
            let kicked = kicked.load(Ordering::Acquire);
            timers.leave_driver();
            assert!(
                deadline.is_some() || kicked,
                "lost timer: the driver polls without the deadline and no kick is coming"
            );
        });
    }
}
