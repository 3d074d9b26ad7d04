//! Tasks: a fiber plus the small state machine that decides who may resume it.
//!
//! State transitions (all by compare-and-swap, so each one happens exactly once):
//!
//! ```text
//!  spawn ─▶ SCHEDULED ──worker pops──▶ RUNNING ──returns──▶ COMPLETE (terminal)
//!   IDLE ──wake──▲  ▲                    │  │
//!    ▲              │                    │  │ wake while running
//!    └─suspend(Park)┼────────────────────┘  │
//!                   └─suspend(Park|Yield)── NOTIFIED ◀┘
//! ```
//!
//! A task sits in at most one run queue at a time, because only the IDLE -> SCHEDULED transition
//! (and `spawn`, which queues the only reference to a task it created SCHEDULED, and a worker
//! re-queueing the task it just ran) pushes it. A wake while it runs only records NOTIFIED; the
//! worker re-queues it after the fiber has fully switched out. A wake of a COMPLETE task does
//! nothing. Together these make "resumed from a stale queue entry" and "restarted after it
//! finished" impossible: the two bug classes timer-parking schedulers commonly have.

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use crate::context;
use crate::fiber::{Fiber, Suspender};
use crate::runtime::Shared;
use crate::sync;

/// Why a fiber handed control back to its worker.
pub(crate) enum Suspend {
    /// Runnable again right away; goes to the back of the queue.
    Yield,
    /// Waiting for a wake-up.
    Park,
}

pub(crate) type TaskFiber = Fiber<(), Suspend, ()>;
type TaskSuspender = Suspender<(), Suspend>;

pub(crate) const IDLE: u8 = 0;
pub(crate) const SCHEDULED: u8 = 1;
pub(crate) const RUNNING: u8 = 2;
pub(crate) const NOTIFIED: u8 = 3;
pub(crate) const COMPLETE: u8 = 4;

pub(crate) struct Task {
    state: AtomicU8,
    unpark_token: AtomicBool,
    id: u64,
    shared: Arc<Shared>,
    /// Touched only by the worker that moved the state to RUNNING (and by `Drop`).
    fiber: UnsafeCell<Option<TaskFiber>>,
    /// Set by the fiber body when it starts; read only by the fiber itself.
    suspender: UnsafeCell<*const TaskSuspender>,
    /// The result and the joiner's waker. Kept in the task (with the result's type erased)
    /// rather than in an allocation of its own: one allocation and four reference-count
    /// updates fewer per spawn.
    join: JoinCell<ErasedResult>,
}

// SAFETY: `fiber` and `suspender` are only accessed by the single thread that currently owns the
// task's RUNNING state (the state machine above grants that to one worker at a time), or by
// `Drop`, which has exclusive access. Everything else is atomics or immutable.
unsafe impl Sync for Task {}
// SAFETY: the fiber is Send (its body is Send + 'static); the suspender pointer is only
// dereferenced by code running on the fiber itself.
unsafe impl Send for Task {}

impl Task {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Moves SCHEDULED -> RUNNING; false means this queue entry is stale and must be ignored.
    pub(crate) fn start_running(&self) -> bool {
        self.state
            .compare_exchange(SCHEDULED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Resumes the fiber. The caller must have won `start_running`.
    pub(crate) fn resume(&self) -> Option<Suspend> {
        // SAFETY: the caller owns the RUNNING state, so no other thread touches `fiber`.
        let fiber = unsafe { &mut *self.fiber.get() };
        let f = fiber.as_mut()?;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| f.resume(())));
        match outcome {
            Ok(crate::fiber::FiberResult::Yield(reason)) => Some(reason),
            // The body catches the task's own panics, so a panic here is a bug in the runtime
            // glue; either way the fiber is finished and must not run again.
            Ok(crate::fiber::FiberResult::Return(())) | Err(_) => {
                *fiber = None;
                self.state.store(COMPLETE, Ordering::Release);
                None
            }
        }
    }

    /// After `Suspend::Park`: RUNNING -> IDLE, unless a wake arrived meanwhile, in which case the
    /// task is SCHEDULED again and the caller must queue it (returns true).
    pub(crate) fn park_after_run(&self) -> bool {
        match self
            .state
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => false,
            Err(NOTIFIED) => {
                self.state.store(SCHEDULED, Ordering::Release);
                true
            }
            Err(other) => unreachable!("task in state {other} after parking"),
        }
    }

    /// After `Suspend::Yield`: back to SCHEDULED (absorbing any NOTIFIED).
    pub(crate) fn yield_after_run(&self) {
        self.state.store(SCHEDULED, Ordering::Release);
    }

    /// Makes the task runnable if it is parked; records the wake if it is running; ignores it if
    /// it is already queued or finished.
    pub(crate) fn wake_task(self: &Arc<Self>) {
        if self.mark_woken() {
            self.shared.schedule(self.clone());
        }
    }

    /// `wake_task` for a caller that gives up its reference: that reference is what gets
    /// queued, saving a reference-count increment and decrement.
    pub(crate) fn wake_task_owned(self: Arc<Self>) {
        if self.mark_woken() {
            Shared::schedule_owned(self);
        }
    }

    /// The state change of a wake: parked -> scheduled (returns `true`: the caller queues
    /// the task), running -> notified, anything else unchanged.
    #[inline]
    fn mark_woken(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return false,
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next == SCHEDULED,
                Err(actual) => state = actual,
            }
        }
    }

    pub(crate) fn unpark(self: &Arc<Self>) {
        self.unpark_token.store(true, Ordering::Release);
        self.wake_task();
    }

    pub(crate) fn take_unpark_token(&self) -> bool {
        self.unpark_token.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_task_owned();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_task();
    }
}

impl Task {
    /// Drops the fiber of a task that will never run again (runtime shutdown: once the workers
    /// have stopped, or for a task spawned too late to be queued), unwinding its stack; its
    /// joiner learns it was cancelled. Winning the CAS to RUNNING makes this exclusive.
    pub(crate) fn cancel(&self) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if !matches!(state, IDLE | SCHEDULED) {
                return;
            }
            match self
                .state
                .compare_exchange(state, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        // SAFETY: winning the CAS to RUNNING gives this thread exclusive access to `fiber`.
        let fiber = unsafe { (*self.fiber.get()).take() };
        if let Some(fiber) = fiber {
            drop_unwinding(fiber);
        }
        self.state.store(COMPLETE, Ordering::Release);
    }
}

/// Dropping a started, unfinished fiber unwinds its stack so its destructors run; the task body
/// must let that unwind through rather than report it as the task's panic.
fn drop_unwinding(fiber: TaskFiber) {
    context::set_dropping_fiber(true);
    drop(fiber);
    context::set_dropping_fiber(false);
}

impl Drop for Task {
    fn drop(&mut self) {
        // A task that can never be woken again (nothing holds it) is dropped unfinished. No
        // `JoinHandle` is left (each holds the task), so its completer reports nothing: it
        // must not reach this task through its pointer while `self` is borrowed mutably.
        if let Some(fiber) = self.fiber.get_mut().take() {
            context::set_dropping_task(true);
            drop_unwinding(fiber);
            context::set_dropping_task(false);
        }
    }
}

#[derive(Default)]
struct RegistryShard {
    entries: Vec<Weak<Task>>,
    sweep_at: usize,
}

impl RegistryShard {
    /// Lists a task; when the shard has doubled since its last sweep, first drops the entries
    /// of freed tasks. Dropping such a `Weak` runs no task code (the task was dropped already),
    /// it only frees the task's memory: sweeping a few at a time lets the allocator's
    /// per-thread cache take that memory back while it is still warm.
    fn push(&mut self, entry: Weak<Task>) {
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(|w| w.strong_count() > 0);
            self.sweep_at = (2 * self.entries.len()).max(REGISTRY_MIN_SWEEP);
        }
        self.entries.push(entry);
    }
}

/// The registry shard of one worker, touched without a lock: by that worker's thread only
/// while the workers run (the spawns of its green threads), and after they have exited by the
/// thread shutting the runtime down.
struct LocalShard(UnsafeCell<RegistryShard>);

// SAFETY: a `LocalShard` is accessed by one thread at a time, as described above: its worker's
// thread while the workers run, then (after joining them, which orders their accesses first)
// the thread that shuts the runtime down. `Weak<Task>` is Send.
unsafe impl Sync for LocalShard {}

/// Every task of a runtime that may still have a fiber, so shutdown can cancel them all (tasks
/// parked forever included) and their joiners learn they were cancelled.
///
/// One shard per worker, used without a lock (a spawn on a worker lists the task in that
/// worker's shard: no atomic read-modify-write), plus a locked one for spawns from outside.
/// Entries are never removed one by one: a shard drops the entries of freed tasks in bulk when
/// it has doubled since its last sweep (amortised O(1) per spawn; a freed task's memory is
/// held until then, a few spawns at most while few tasks are alive).
pub(crate) struct TaskRegistry {
    local: Box<[crossbeam_utils::CachePadded<LocalShard>]>,
    outside: Mutex<RegistryShard>,
}

const REGISTRY_MIN_SWEEP: usize = 8;

impl TaskRegistry {
    pub(crate) fn new(workers: usize) -> TaskRegistry {
        TaskRegistry {
            local: (0..workers)
                .map(|_| crossbeam_utils::CachePadded::new(LocalShard(UnsafeCell::default())))
                .collect(),
            outside: Mutex::default(),
        }
    }

    /// Lists a task in worker `worker`'s shard, or in the shared one for `None`.
    ///
    /// # Safety
    /// With `Some(index)`, the caller runs on worker `index`'s thread, while the workers run.
    unsafe fn insert(&self, worker: Option<usize>, task: &Arc<Task>) {
        let entry = Arc::downgrade(task);
        match worker {
            // SAFETY: on worker `index`'s thread (the caller's contract), the only thread
            // touching this shard now; `push` runs no task code, so nothing re-enters.
            Some(index) => unsafe { (*self.local[index].0.get()).push(entry) },
            None => lock(&self.outside).push(entry),
        }
    }

    /// All unfinished tasks, as strong handles (the caller drops them, outside the locks).
    ///
    /// # Safety
    /// Only once the workers have exited (joined).
    pub(crate) unsafe fn snapshot(&self) -> Vec<Arc<Task>> {
        let mut all = Vec::new();
        for shard in self.local.iter() {
            // SAFETY: the workers exited (the caller's contract), so no other thread uses the
            // worker shards any more; the borrow ends before the handles are filtered.
            let entries = std::mem::take(unsafe { &mut (*shard.0.get()).entries });
            all.extend(entries.iter().filter_map(Weak::upgrade));
        }
        let entries = std::mem::take(&mut lock(&self.outside).entries);
        all.extend(entries.iter().filter_map(Weak::upgrade));
        all.retain(|t| t.state() != COMPLETE);
        all
    }
}

/// Suspends the fiber of the calling green thread. Must only be called on a fiber.
pub(crate) fn suspend_current(reason: Suspend) {
    let task = context::current_task();
    assert!(!task.is_null(), "suspend outside a green thread");
    // SAFETY: `task` is the task running on this thread; its `suspender` was set by the fiber
    // body (the only writer) before any user code ran, and stays valid while the body runs.
    let suspender = unsafe { &**(*task).suspender.get() };
    suspender.suspend(reason);
}

/// An owned handle to the calling task (like `std::thread::current()`), only inside a green
/// thread.
pub(crate) fn current_task_arc() -> Option<Arc<Task>> {
    let task = context::current_task();
    if task.is_null() {
        return None;
    }
    // SAFETY: `task` came from `Arc::as_ptr` on an `Arc<Task>` that the resuming worker keeps
    // alive while the fiber runs; taking one more strong count makes the new `Arc` sound.
    unsafe {
        Arc::increment_strong_count(task);
        Some(Arc::from_raw(task))
    }
}

/// A waker for the calling task that does not own a reference count (clones of it do).
///
/// A strong waker kept on the fiber's own stack would make the task keep itself alive, so a task
/// parked forever could never be dropped (and unwound) at shutdown.
pub(crate) fn current_task_waker_ref() -> Option<ManuallyDrop<Waker>> {
    let task = context::current_task();
    if task.is_null() {
        return None;
    }
    // SAFETY: `task` came from `Arc::as_ptr` and the task is alive while its fiber runs (the
    // resuming worker holds an `Arc`). The `Arc` made here does not own a count, and the
    // `ManuallyDrop` guarantees it never releases one; the waker is only used on this fiber,
    // while the task is alive. Its clones go through `Arc`'s own clone and own their counts.
    let borrowed = unsafe { Arc::from_raw(task) };
    Some(ManuallyDrop::new(Waker::from(borrowed)))
}

/// Builds a task and its join handle, listed in the registry shard of `worker`. The task starts
/// SCHEDULED, as if already woken: the caller queues the returned reference (or drops it to
/// cancel the task).
///
/// # Safety
/// As for [`TaskRegistry::insert`]: with `Some(index)`, the caller runs on worker `index`'s
/// thread.
// Inlined into `Shared::spawn`, so the stack, the task and the handle are not passed through
// memory between calls right after being written (a wide load of fields just written by
// narrower stores cannot be forwarded from the store buffer and stalls).
#[inline(always)]
pub(crate) unsafe fn new_task<F, T>(
    shared: &Arc<Shared>,
    id: u64,
    worker: Option<usize>,
    stack: crate::fiber::Stack,
    body: F,
) -> (Arc<Task>, JoinHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let task = Arc::new_cyclic(|this: &Weak<Task>| {
        let completer = CompleteOnDrop(this.as_ptr());
        let fiber = TaskFiber::with_stack(stack, move |suspender: &TaskSuspender, ()| {
            let task = context::current_task();
            // SAFETY: the worker set `task` to this fiber's task before resuming it; only this fiber
            // writes `suspender`, before any user code runs.
            unsafe { *(*task).suspender.get() = suspender as *const TaskSuspender };
            let mut completer = completer;
            let result = panic::catch_unwind(AssertUnwindSafe(body));
            if !context::is_dropping_fiber() {
                // Counted before the joiner is woken, so a joiner always sees its task counted.
                crate::runtime::note_completed();
            }
            match result {
                Ok(value) => completer.complete(Ok(ErasedResult::new(value))),
                Err(payload) if context::is_dropping_fiber() => panic::resume_unwind(payload),
                Err(payload) => completer.complete(Err(JoinError::panicked(payload))),
            }
        });
        Task {
            state: AtomicU8::new(SCHEDULED),
            unpark_token: AtomicBool::new(false),
            id,
            shared: shared.clone(),
            fiber: UnsafeCell::new(Some(fiber)),
            suspender: UnsafeCell::new(std::ptr::null()),
            join: JoinCell::new(),
        }
    });
    // SAFETY: the caller's contract, which is `insert`'s.
    unsafe { shared.tasks.insert(worker, &task) };
    let handle = JoinHandle {
        task: task.clone(),
        id,
        _result: PhantomData,
    };
    (task, handle)
}

/// Completes its task's join state, once; reports "cancelled" to the joiner if the body never
/// completes (its fiber was dropped by `Task::cancel`). Lives in the fiber's body, so it never
/// outlives the task that owns the fiber; null once it has completed.
struct CompleteOnDrop(*const Task);

// SAFETY: the pointer is only dereferenced to reach the task's `join`, a `JoinCell` that is
// Sync; the task (Send + Sync) outlives this value, as described above.
unsafe impl Send for CompleteOnDrop {}

impl CompleteOnDrop {
    // Inlined (with `JoinCell::complete` and `ErasedResult::new`) so the result is written
    // straight into the task instead of being stored and at once reloaded with wider loads
    // (which the store buffer cannot forward: a stall on every completion).
    #[inline(always)]
    fn complete(&mut self, result: Result<ErasedResult, JoinError>) {
        let task = std::mem::replace(&mut self.0, ptr::null());
        if !task.is_null() {
            // SAFETY: this value lives in the fiber body owned by `task`, which is alive while
            // its fiber runs or is dropped (by `cancel`, through a shared reference); a drop of
            // the fiber from `Task::drop` does not come here (see `Drop` below).
            unsafe { (*task).join.complete(result) };
        }
    }
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        if context::is_dropping_task() {
            // `Task::drop`: no joiner is left, and the task is mutably borrowed.
            self.0 = ptr::null();
            return;
        }
        self.complete(Err(JoinError::cancelled()));
    }
}

/// A task's value with its type erased, so the join state can live in the non-generic task:
/// inline when it fits in a few words (most results), else boxed.
pub(crate) struct ErasedResult {
    buf: MaybeUninit<[usize; ERASED_WORDS]>,
    /// Drops the value in `buf`; `None` once it was taken.
    drop_value: Option<unsafe fn(*mut u8)>,
}

const ERASED_WORDS: usize = 4;

// SAFETY: an `ErasedResult` is only made (`new`) from a `T: Send`.
unsafe impl Send for ErasedResult {}

impl ErasedResult {
    const fn fits<T>() -> bool {
        size_of::<T>() <= size_of::<[usize; ERASED_WORDS]>()
            && align_of::<T>() <= align_of::<usize>()
    }

    #[inline(always)]
    fn new<T: Send + 'static>(value: T) -> ErasedResult {
        let mut buf = MaybeUninit::<[usize; ERASED_WORDS]>::uninit();
        let drop_value: unsafe fn(*mut u8) = if Self::fits::<T>() {
            // SAFETY: `buf` is large and aligned enough for a `T` (checked by `fits`).
            unsafe { buf.as_mut_ptr().cast::<T>().write(value) };
            drop_erased::<T>
        } else {
            // SAFETY: a `Box` is one word, which `buf` holds and is aligned for.
            unsafe { buf.as_mut_ptr().cast::<Box<T>>().write(Box::new(value)) };
            drop_erased::<Box<T>>
        };
        ErasedResult {
            buf,
            drop_value: Some(drop_value),
        }
    }

    /// The value.
    ///
    /// # Safety
    /// `T` is the type this was made from.
    unsafe fn take<T>(mut self) -> T {
        self.drop_value = None;
        if Self::fits::<T>() {
            // SAFETY: made from a `T` stored inline (the caller's contract and `fits`); read
            // once, as `drop_value` is now cleared.
            unsafe { self.buf.as_ptr().cast::<T>().read() }
        } else {
            // SAFETY: as above, for the boxed case.
            *unsafe { self.buf.as_ptr().cast::<Box<T>>().read() }
        }
    }
}

/// # Safety
/// `p` points at a live `V`, dropped here once.
unsafe fn drop_erased<V>(p: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { p.cast::<V>().drop_in_place() }
}

impl Drop for ErasedResult {
    fn drop(&mut self) {
        if let Some(drop_value) = self.drop_value {
            // SAFETY: `drop_value` matches what `new` stored in `buf`, not yet taken.
            unsafe { drop_value(self.buf.as_mut_ptr().cast()) };
        }
    }
}

/// The one-shot slot a task's result travels through to its `JoinHandle`, lock-free.
///
/// `state` bits: COMPLETE (the result is written), WAKER (the joiner published a waker). Each
/// slot has one writer at a time: the completer writes `result` once, before setting COMPLETE;
/// the joiner writes `waker` only while WAKER is clear and publishes it by setting WAKER with a
/// CAS that fails if COMPLETE got set meanwhile. A completer that sees WAKER in the state it
/// replaced only reads the slot (it wakes the waker by reference, while the joiner may be
/// reading it too, to compare it with its current waker), then hands the slot back by clearing
/// WAKER; a joiner that sees COMPLETE with WAKER clear owns the slot again and drops the waker
/// (else the waker is dropped with the cell).
///
/// Its atomics and cells come from `crate::sync`, so the loom tests at the end of this file
/// model-check exactly this code.
struct JoinCell<T> {
    state: sync::AtomicU8,
    result: sync::UnsafeCell<Option<Result<T, JoinError>>>,
    waker: sync::UnsafeCell<Option<Waker>>,
}

const JOIN_COMPLETE: u8 = 1;
const JOIN_WAKER: u8 = 2;

// SAFETY: access to `result` and `waker` follows the single-writer protocol described above,
// with Release/Acquire on `state` ordering the writes before the reads.
unsafe impl<T: Send> Sync for JoinCell<T> {}
// SAFETY: as above; the cell owns a `T` and a `Waker`, both Send.
unsafe impl<T: Send> Send for JoinCell<T> {}

impl<T> JoinCell<T> {
    fn new() -> Self {
        JoinCell {
            state: sync::AtomicU8::new(0),
            result: sync::UnsafeCell::new(None),
            waker: sync::UnsafeCell::new(None),
        }
    }

    fn is_complete(&self) -> bool {
        self.state.load(Ordering::Acquire) & JOIN_COMPLETE != 0
    }

    /// Called once, by the task (or its drop).
    #[inline(always)]
    fn complete(&self, result: Result<T, JoinError>) {
        self.result.with_mut(|slot| {
            // SAFETY: only the completer writes `result`, once (`CompleteOnDrop` takes the cell
            // out of its `Option`), and the joiner reads it only after observing COMPLETE,
            // which is set after this write (Release half of the `fetch_or` below).
            unsafe { *slot = Some(result) }
        });
        let previous = self.state.fetch_or(JOIN_COMPLETE, Ordering::AcqRel);
        if previous & JOIN_WAKER != 0 {
            self.waker.with(|slot| {
                // SAFETY: WAKER was published, and the Acquire half of the `fetch_or` makes the
                // joiner's write of the slot visible. Until the `fetch_and` below clears WAKER
                // the joiner only reads the slot: it writes it only after clearing WAKER itself
                // with a CAS that expects COMPLETE clear (which fails from now on), and drops
                // it only once it sees WAKER clear with COMPLETE set. So this read races with
                // no write (the joiner's `will_wake` check may run concurrently with it).
                if let Some(waker) = unsafe { (*slot).as_ref() } {
                    waker.wake_by_ref();
                }
            });
            // Hand the slot back (Release: our read comes before the joiner's drop of it).
            self.state.fetch_and(!JOIN_WAKER, Ordering::AcqRel);
        }
    }

    /// Called by the single joiner (`&mut JoinHandle`).
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        let mut state = self.state.load(Ordering::Acquire);
        if state & JOIN_COMPLETE == 0 && state & JOIN_WAKER != 0 {
            let same = self.waker.with(|slot| {
                // SAFETY: only this joiner writes the slot, and only while WAKER is clear; the
                // completer may set COMPLETE after the load above and read the slot too, but
                // never writes it, so this read races with no write.
                unsafe { (*slot).as_ref() }.is_some_and(|w| w.will_wake(cx.waker()))
            });
            if same {
                return Poll::Pending;
            }
            // Take the slot back before rewriting it.
            match self.state.compare_exchange(
                state,
                state & !JOIN_WAKER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => state &= !JOIN_WAKER,
                Err(actual) => state = actual,
            }
        }
        if state & JOIN_COMPLETE == 0 {
            self.waker.with_mut(|slot| {
                // SAFETY: WAKER is clear in the state our last CAS wrote (or it was never set)
                // and COMPLETE was clear then: a completer acts on the slot only if its
                // `fetch_or` finds WAKER set, which needs the CAS below to succeed first, and
                // that CAS releases this write.
                unsafe { *slot = Some(cx.waker().clone()) }
            });
            match self.state.compare_exchange(
                state,
                state | JOIN_WAKER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Poll::Pending,
                Err(actual) => state = actual,
            }
        }
        debug_assert!(state & JOIN_COMPLETE != 0);
        if state & JOIN_WAKER == 0 {
            let waker = self.waker.with_mut(|slot| {
                // SAFETY: COMPLETE is set and WAKER clear in the state read last (with Acquire):
                // either the waker was never published (the completer does not touch the slot)
                // or the completer's `fetch_and` handed it back after its last read. No one
                // else accesses the slot any more.
                unsafe { (*slot).take() }
            });
            drop(waker);
        }
        let result = self.result.with_mut(|slot| {
            // SAFETY: COMPLETE was observed with Acquire, so the completer's write is visible
            // and it no longer touches `result`; only the joiner (`&mut JoinHandle`) takes it.
            unsafe { (*slot).take() }
        });
        Poll::Ready(result.expect("JoinHandle polled after it returned its result"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owned permission to join a task, returned by `spawn`. Dropping it detaches the task.
///
/// `join()` parks only the calling fiber inside a green thread and blocks the calling OS thread
/// elsewhere. A `JoinHandle` is also a `Future`, for async code.
pub struct JoinHandle<T> {
    /// The task, whose `join` state holds the result; also keeps a parked task alive while
    /// someone may still unpark it through `task()`.
    task: Arc<Task>,
    id: u64,
    /// The result's type (the handle hands a `T` over, it does not share one).
    _result: PhantomData<fn() -> T>,
}

impl<T> JoinHandle<T> {
    /// Waits for the task and returns its value, or how it failed.
    pub fn join(self) -> Result<T, JoinError> {
        if !self.is_finished() {
            crate::runtime::run_inline_if_next(&self.task);
        }
        crate::block_on(self)
    }

    /// True once the task's body has returned, panicked or been cancelled.
    pub fn is_finished(&self) -> bool {
        self.task.join.is_complete()
    }

    /// A handle to the task, e.g. to `unpark` it.
    pub fn task(&self) -> TaskHandle {
        TaskHandle {
            task: self.task.clone(),
        }
    }

    /// The task's id (unique within the process).
    pub fn id(&self) -> TaskId {
        TaskId(self.id)
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.task.join.poll_join(cx).map(|result| {
            // SAFETY: the task was made by `new_task::<_, T>`, whose body completes the join
            // state with values of type `T` only.
            result.map(|value| unsafe { value.take::<T>() })
        })
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("id", &self.id).finish()
    }
}

/// Why a task produced no value.
pub struct JoinError {
    panic: Option<Box<dyn Any + Send + 'static>>,
}

impl JoinError {
    fn panicked(payload: Box<dyn Any + Send + 'static>) -> Self {
        JoinError {
            panic: Some(payload),
        }
    }

    fn cancelled() -> Self {
        JoinError { panic: None }
    }

    /// The task's body panicked.
    pub fn is_panic(&self) -> bool {
        self.panic.is_some()
    }

    /// The task was dropped before finishing (its runtime shut down while it was parked).
    pub fn is_cancelled(&self) -> bool {
        self.panic.is_none()
    }

    /// The panic payload, to re-raise with `std::panic::resume_unwind`.
    ///
    /// # Panics
    /// If the task was cancelled rather than panicking.
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.panic
            .expect("JoinError::into_panic on a cancelled task")
    }

    /// The panic message, when the payload is a string.
    pub fn panic_message(&self) -> Option<&str> {
        let payload = self.panic.as_ref()?;
        payload
            .downcast_ref::<&'static str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.panic, self.panic_message()) {
            (Some(_), Some(message)) => write!(f, "task panicked: {message}"),
            (Some(_), None) => write!(f, "task panicked"),
            (None, _) => write!(f, "task was cancelled (its runtime shut down)"),
        }
    }
}

impl std::error::Error for JoinError {}

/// A task's id, unique within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A handle to a green thread, to `unpark` it (like `std::thread::Thread`).
#[derive(Clone)]
pub struct TaskHandle {
    task: Arc<Task>,
}

impl TaskHandle {
    /// Makes the task's next (or current) `park()` return. Unparking a finished task does nothing.
    pub fn unpark(&self) {
        self.task.unpark();
    }

    /// The task's id (unique within the process).
    pub fn id(&self) -> TaskId {
        TaskId(self.task.id)
    }

    /// A waker that makes the task runnable (a spurious wake-up for whatever it waits on).
    pub fn waker(&self) -> Waker {
        Waker::from(self.task.clone())
    }

    /// True once the task's body has finished (returned, panicked or been cancelled): from
    /// the moment its result is there for `join`, like [`JoinHandle::is_finished`]. (The
    /// scheduler's own state turns complete a little later, once the worker is done with
    /// the task; a `join` that returned must never see the task unfinished.)
    pub fn is_finished(&self) -> bool {
        self.task.join.is_complete()
    }
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.task.id)
            .finish()
    }
}

/// The calling green thread's handle.
///
/// # Panics
/// Outside a green thread.
pub fn current() -> TaskHandle {
    try_current().expect("weft_sched::current() called outside a green thread")
}

/// The calling green thread's handle, or `None` outside green threads.
pub fn try_current() -> Option<TaskHandle> {
    current_task_arc().map(|task| TaskHandle { task })
}

/// True when called from inside a green thread.
pub fn in_green_thread() -> bool {
    !context::current_task().is_null()
}

/// Blocks the calling green thread until its unpark token is available, then consumes it.
/// An `unpark` that came first makes `park` return at once (like `std::thread::park`, but
/// without spurious returns).
///
/// # Panics
/// Outside a green thread.
pub fn park() {
    assert!(
        in_green_thread(),
        "weft_sched::park() called outside a green thread"
    );
    // No `Arc` kept on the stack across the suspension (see `current_task_waker_ref`), and the
    // thread-local is re-read after it, since the fiber may resume on another OS thread.
    loop {
        // SAFETY: this is a green thread (asserted above), and the thread-local is re-read after
        // every suspension: a non-null current task is the task running here, kept alive by the
        // worker that resumed it (it holds an `Arc<Task>` until the fiber suspends).
        if unsafe { (*context::current_task()).take_unpark_token() } {
            return;
        }
        suspend_current(Suspend::Park);
    }
}

/// Lets the other runnable tasks of this worker run, then continues. Outside green threads,
/// yields the OS thread.
pub fn yield_now() {
    if in_green_thread() {
        suspend_current(Suspend::Yield);
    } else {
        std::thread::yield_now();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountDrops(Arc<AtomicUsize>);

    impl Drop for CountDrops {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn erased_results_come_back_whole_inline_or_boxed() {
        let small = ErasedResult::new(0x1234_u16);
        assert!(ErasedResult::fits::<u16>());
        // SAFETY: made from a u16.
        assert_eq!(unsafe { small.take::<u16>() }, 0x1234);
        let big = [7u64; 9];
        assert!(!ErasedResult::fits::<[u64; 9]>());
        // SAFETY: made from a [u64; 9].
        assert_eq!(unsafe { ErasedResult::new(big).take::<[u64; 9]>() }, big);
        let text = ErasedResult::new(String::from("weft"));
        // SAFETY: made from a String.
        assert_eq!(unsafe { text.take::<String>() }, "weft");
    }

    #[test]
    fn an_erased_result_never_taken_is_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop(ErasedResult::new(CountDrops(drops.clone())));
        drop(ErasedResult::new((CountDrops(drops.clone()), [0u64; 8])));
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        let taken = ErasedResult::new(CountDrops(drops.clone()));
        // SAFETY: made from a CountDrops.
        let value = unsafe { taken.take::<CountDrops>() };
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "taking moves the value out"
        );
        drop(value);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }
}

/// Model checks of `JoinCell`: run with
/// `RUSTFLAGS="--cfg loom" cargo test -p weft-sched --release --lib loom`. Besides the
/// assertions, loom checks every access to the `result` and `waker` cells for races.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;
    use std::task::Wake;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn counting_waker() -> (Arc<CountWakes>, Waker) {
        let count = Arc::new(CountWakes(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn poll(cell: &JoinCell<u32>, waker: &Waker) -> Poll<u32> {
        cell.poll_join(&mut Context::from_waker(waker))
            .map(|r| r.expect("the task completed with a value"))
    }

    /// The completer races with the first poll: the joiner gets the value at once, or its waker
    /// is woken and the next poll gets it.
    #[test]
    fn loom_join_cell_hands_over_the_result_or_the_wake_up() {
        loom::model(|| {
            let cell = Arc::new(JoinCell::new());
            let completer = {
                let cell = cell.clone();
                thread::spawn(move || cell.complete(Ok(7)))
            };
            let (wakes, waker) = counting_waker();
            let first = poll(&cell, &waker);
            completer.join().unwrap();
            if first.is_pending() {
                assert_eq!(wakes.0.load(Ordering::Acquire), 1, "lost wake-up");
                assert_eq!(poll(&cell, &waker), Poll::Ready(7));
            } else {
                assert_eq!(first, Poll::Ready(7));
            }
        });
    }

    /// A joiner re-polling with a new waker (it moved to another task) races with the completer:
    /// the newest waker is the one woken, and the slot changes hands without a race.
    #[test]
    fn loom_join_cell_wakes_the_latest_waker() {
        loom::model(|| {
            let cell = Arc::new(JoinCell::new());
            let (first_wakes, first) = counting_waker();
            assert!(poll(&cell, &first).is_pending());
            let completer = {
                let cell = cell.clone();
                thread::spawn(move || cell.complete(Ok(7)))
            };
            let (second_wakes, second) = counting_waker();
            let result = poll(&cell, &second);
            completer.join().unwrap();
            if result.is_pending() {
                assert_eq!(second_wakes.0.load(Ordering::Acquire), 1, "lost wake-up");
                assert_eq!(poll(&cell, &second), Poll::Ready(7));
            } else {
                assert_eq!(result, Poll::Ready(7));
            }
            assert!(first_wakes.0.load(Ordering::Acquire) <= 1);
        });
    }
}
