//! The scheduler of one WASIX instance's contexts, with no HTTP and no wasmtime in it: which
//! context runs next, what a context waits for, and when the instance has nothing to run.
//!
//! The rules:
//! - A context is *ready* when it was just started, when the operation it blocked on
//!   completed (or was closed), or when the guest scheduled it. A
//!   ready context is queued once, however many of these happen before it runs.
//! - A *handle* names one operation a context can wait for: a fetch, a sleep, or room in
//!   a streamed response body. Handles are
//!   never reused within an instance, and an instance holds at most [`MAX_HANDLES`] open.
//! - A context that switched to main after `block_on(h)` waits for `h`; with `h` already
//!   done (or `0`, "just yield") it is ready at once. A context that switched to main any
//!   other way is *stray*: nothing will wake it, and the caller decides its fate.
//! - The instance loop sleeps until the earliest timer (sleep handles, drain deadlines).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use weft_http_attrib::RequestId;
use weft_wasix_context::ContextId;

use super::fetch_client::FetchResponse;

/// Most handles a single instance may hold open (fetches and sleeps): bounds what a guest
/// that never closes them can make the host keep.
pub(crate) const MAX_HANDLES: usize = 65_536;

/// The longest sleep a guest can ask for; beyond it `Instant` arithmetic could overflow.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(86_400);

/// A guest-visible handle id (`> 0`).
pub(crate) type HandleId = i32;

/// Something a context can wait for.
#[derive(Debug)]
pub(crate) enum Operation {
    /// A sleep: done when its timer fires.
    Sleep { done: bool },
    /// An outgoing request: done with its response or an errno.
    Fetch {
        done: Option<Result<FetchResponse, weft_wasix_context::Errno>>,
    },
    /// Room in a streamed response body: done when the client has read enough (or is gone).
    Writable { done: bool },
}

impl Operation {
    pub(crate) fn is_done(&self) -> bool {
        match self {
            Operation::Sleep { done } => *done,
            Operation::Fetch { done } => done.is_some(),
            Operation::Writable { done } => *done,
        }
    }
}

/// What became of the context that came back to main.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parked {
    /// Queued to run again (its handle is already done, or it just yields).
    Ready(ContextId),
    /// Waiting for its handle.
    Waiting(ContextId, HandleId),
    /// Switched to main without `block_on`: nothing will wake it.
    Stray,
}

/// Why a `block_on` or `schedule` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScheduleError {
    /// No such open handle.
    BadHandle,
    /// Main cannot block; a context cannot schedule itself or main.
    Invalid,
}

/// One instance's run queue, waits, handles and timers.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    ready: VecDeque<ContextId>,
    /// The contexts in `ready`, so each is queued once.
    queued: HashSet<ContextId>,
    waiting: HashMap<HandleId, Vec<ContextId>>,
    handles: HashMap<HandleId, Operation>,
    last_handle: HandleId,
    /// Sleep handles by deadline.
    timers: BTreeSet<(Instant, HandleId)>,
    /// Requests whose post-response work must end by then.
    drain_deadlines: BTreeSet<(Instant, RequestId)>,
    /// Requests that must have answered by then.
    answer_deadlines: BTreeSet<(Instant, RequestId)>,
    /// Set by `block_on` just before the guest switches to main.
    block_request: Option<(ContextId, HandleId)>,
}

impl Scheduler {
    /// Queues `context` to run (once, however often it is made ready before it runs).
    pub(crate) fn make_ready(&mut self, context: ContextId) {
        if self.queued.insert(context) {
            self.ready.push_back(context);
        }
    }

    /// The next context to run, oldest first.
    pub(crate) fn next_ready(&mut self) -> Option<ContextId> {
        let context = self.ready.pop_front()?;
        self.queued.remove(&context);
        Some(context)
    }

    /// A new handle for `operation`, or `None` when the instance holds [`MAX_HANDLES`].
    pub(crate) fn open(&mut self, operation: Operation) -> Option<HandleId> {
        if self.handles.len() >= MAX_HANDLES {
            return None;
        }
        // Never reused within an instance (2^31 of them would have to be made first).
        let id = self.last_handle.checked_add(1)?;
        self.last_handle = id;
        self.handles.insert(id, operation);
        Some(id)
    }

    /// A sleep handle whose timer fires `delay` (capped at [`MAX_SLEEP`]) after `now`.
    pub(crate) fn sleep(&mut self, now: Instant, delay: Duration) -> Option<HandleId> {
        let handle = self.open(Operation::Sleep { done: false })?;
        self.timers.insert((now + delay.min(MAX_SLEEP), handle));
        Some(handle)
    }

    pub(crate) fn operation(&self, handle: HandleId) -> Option<&Operation> {
        self.handles.get(&handle)
    }

    /// The fetch behind `handle` finished: its waiters become ready.
    pub(crate) fn fetch_done(
        &mut self,
        handle: HandleId,
        result: Result<FetchResponse, weft_wasix_context::Errno>,
    ) {
        if let Some(Operation::Fetch { done }) = self.handles.get_mut(&handle) {
            *done = Some(result);
        }
        self.wake(handle);
    }

    /// The response body behind `handle` has room: its waiters become ready.
    pub(crate) fn writable(&mut self, handle: HandleId) {
        if let Some(Operation::Writable { done }) = self.handles.get_mut(&handle) {
            *done = true;
        }
        self.wake(handle);
    }

    /// Closes `handle`; anyone still waiting on it must not wait forever, so they become
    /// ready. `false` if there was no such handle.
    pub(crate) fn close(&mut self, handle: HandleId) -> bool {
        if self.handles.remove(&handle).is_none() {
            return false;
        }
        self.timers.retain(|&(_, h)| h != handle);
        self.wake(handle);
        true
    }

    fn wake(&mut self, handle: HandleId) {
        for context in self.waiting.remove(&handle).unwrap_or_default() {
            self.make_ready(context);
        }
    }

    /// `context` (not main) is about to switch to main to wait for `handle` (`0`: just yield).
    pub(crate) fn block_on(
        &mut self,
        context: ContextId,
        handle: HandleId,
    ) -> Result<(), ScheduleError> {
        if context == weft_wasix_context::MAIN_CONTEXT {
            return Err(ScheduleError::Invalid);
        }
        if handle != 0 && !self.handles.contains_key(&handle) {
            return Err(ScheduleError::BadHandle);
        }
        self.block_request = Some((context, handle));
        Ok(())
    }

    /// A context switched back to main. It may not be the one the host resumed (contexts
    /// switch among themselves), so what it is comes from what was recorded on the way: a
    /// `block_on` (parked on its handle, or queued when the handle is already done), or
    /// nothing (stray).
    pub(crate) fn parked(&mut self) -> Parked {
        let Some((waiter, handle)) = self.block_request.take() else {
            return Parked::Stray;
        };
        let done = handle == 0 || self.handles.get(&handle).is_none_or(Operation::is_done);
        if done {
            self.make_ready(waiter);
            Parked::Ready(waiter)
        } else {
            self.waiting.entry(handle).or_default().push(waiter);
            Parked::Waiting(waiter, handle)
        }
    }

    /// The guest's `schedule(context)` from `caller`: `context` must be another suspended
    /// context (the caller checks that it is suspended). It runs once more, even if it also
    /// waits for a handle.
    pub(crate) fn schedule(
        &mut self,
        caller: ContextId,
        context: ContextId,
    ) -> Result<(), ScheduleError> {
        if context == weft_wasix_context::MAIN_CONTEXT || context == caller {
            return Err(ScheduleError::Invalid);
        }
        self.make_ready(context);
        Ok(())
    }

    /// `context` is gone (destroyed): it must never be resumed from a queue.
    pub(crate) fn forget_context(&mut self, context: ContextId) {
        if self.queued.remove(&context) {
            self.ready.retain(|&c| c != context);
        }
        for waiters in self.waiting.values_mut() {
            waiters.retain(|&c| c != context);
        }
        self.waiting.retain(|_, waiters| !waiters.is_empty());
    }

    /// Post-response work of `request` must end by `deadline`.
    pub(crate) fn drain_by(&mut self, request: RequestId, deadline: Instant) {
        self.drain_deadlines.insert((deadline, request));
    }

    /// `request` must answer by `deadline`.
    pub(crate) fn answer_by(&mut self, request: RequestId, deadline: Instant) {
        self.answer_deadlines.insert((deadline, request));
    }

    /// `request` answered (or ended): its answer deadline is void.
    pub(crate) fn answered(&mut self, request: RequestId) {
        self.answer_deadlines.retain(|&(_, r)| r != request);
    }

    /// Fires the timers due at `now` (their waiters become ready) and returns the requests
    /// whose drain deadline passed.
    pub(crate) fn fire_timers(&mut self, now: Instant) -> Expired {
        while let Some(&(at, handle)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(Operation::Sleep { done }) = self.handles.get_mut(&handle) {
                *done = true;
            }
            self.wake(handle);
        }
        Expired {
            drains: due(&mut self.drain_deadlines, now),
            answers: due(&mut self.answer_deadlines, now),
        }
    }

    /// When the instance loop must wake up even if no message arrives.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|&(at, _)| at);
        let drain = self.drain_deadlines.first().map(|&(at, _)| at);
        let answer = self.answer_deadlines.first().map(|&(at, _)| at);
        timer.into_iter().chain(drain).chain(answer).min()
    }
}

/// Requests whose deadlines passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Answered, but work for them still runs at the drain deadline.
    pub(crate) drains: Vec<RequestId>,
    /// Not answered by their answer deadline.
    pub(crate) answers: Vec<RequestId>,
}

fn due(deadlines: &mut BTreeSet<(Instant, RequestId)>, now: Instant) -> Vec<RequestId> {
    let mut due = Vec::new();
    while let Some(&(at, request)) = deadlines.first() {
        if at > now {
            break;
        }
        deadlines.pop_first();
        due.push(request);
    }
    due
}

/// Wasm run time per request, summed over all the runs of all its contexts.
#[derive(Debug)]
pub(crate) struct CpuAccount {
    budget: Duration,
    used: HashMap<RequestId, Duration>,
    running: Option<(Option<RequestId>, Instant)>,
    exceeded: Option<RequestId>,
}

impl CpuAccount {
    pub(crate) fn new(budget: Duration) -> Self {
        CpuAccount {
            budget,
            used: HashMap::new(),
            running: None,
            exceeded: None,
        }
    }

    /// A context working for `request` (if any) starts running at `now`.
    pub(crate) fn start(&mut self, request: Option<RequestId>, now: Instant) {
        self.running = Some((request, now));
    }

    /// The run that started last ended at `now`.
    pub(crate) fn stop(&mut self, now: Instant) {
        if let Some((Some(request), since)) = self.running.take() {
            *self.used.entry(request).or_default() += now.saturating_duration_since(since);
        }
    }

    /// Whether wasm runs inside a request context (not `_initialize`, not idle).
    pub(crate) fn in_context(&self) -> bool {
        self.running.is_some()
    }

    /// How long the running context has run since the host last resumed it, at `now`.
    pub(crate) fn running_for(&self, now: Instant) -> Option<Duration> {
        self.running
            .map(|(_, since)| now.saturating_duration_since(since))
    }

    /// The request the running context works for, if any.
    pub(crate) fn running_request(&self) -> Option<RequestId> {
        self.running.and_then(|(request, _)| request)
    }

    /// At an epoch tick: `Err(request)` when the running request has used up its budget
    /// (earlier runs plus this one so far). Remembered for [`take_exceeded`](Self::take_exceeded).
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), (RequestId, Duration)> {
        if let Some((Some(request), since)) = self.running {
            let used = self.used.get(&request).copied().unwrap_or_default()
                + now.saturating_duration_since(since);
            if used > self.budget {
                self.exceeded = Some(request);
                return Err((request, self.budget));
            }
        }
        Ok(())
    }

    /// The request whose budget trap ended the last run, if that is why it ended.
    pub(crate) fn take_exceeded(&mut self) -> Option<RequestId> {
        self.exceeded.take()
    }

    /// `request` is over: its account is closed.
    pub(crate) fn forget(&mut self, request: RequestId) {
        self.used.remove(&request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> FetchResponse {
        FetchResponse {
            status: 200,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_context_is_queued_once_however_often_it_is_made_ready() {
        let mut s = Scheduler::default();
        s.make_ready(3);
        s.make_ready(4);
        s.make_ready(3);
        assert_eq!(s.schedule(4, 3), Ok(()));
        assert_eq!(s.next_ready(), Some(3));
        assert_eq!(s.next_ready(), Some(4));
        assert_eq!(s.next_ready(), None);
        s.make_ready(3);
        assert_eq!(s.next_ready(), Some(3));
    }

    #[test]
    fn blocking_on_a_pending_fetch_waits_until_it_is_done() {
        let mut s = Scheduler::default();
        let h = s.open(Operation::Fetch { done: None }).unwrap();
        assert_eq!(s.block_on(5, h), Ok(()));
        assert_eq!(s.parked(), Parked::Waiting(5, h));
        assert_eq!(s.next_ready(), None);
        s.fetch_done(h, Ok(response()));
        assert!(s.operation(h).unwrap().is_done());
        assert_eq!(s.next_ready(), Some(5));
    }

    #[test]
    fn blocking_on_a_done_handle_or_zero_is_ready_at_once() {
        let mut s = Scheduler::default();
        let h = s.open(Operation::Fetch { done: None }).unwrap();
        s.fetch_done(h, Err(weft_wasix_context::Errno::Connrefused));
        s.block_on(5, h).unwrap();
        assert_eq!(s.parked(), Parked::Ready(5));
        s.block_on(6, 0).unwrap();
        assert_eq!(s.parked(), Parked::Ready(6));
        assert_eq!(s.next_ready(), Some(5));
        assert_eq!(s.next_ready(), Some(6));
    }

    #[test]
    fn block_on_refuses_main_and_unknown_handles() {
        let mut s = Scheduler::default();
        assert_eq!(s.block_on(0, 0), Err(ScheduleError::Invalid));
        assert_eq!(s.block_on(1, 7), Err(ScheduleError::BadHandle));
    }

    #[test]
    fn a_switch_to_main_without_block_on_is_stray() {
        let mut s = Scheduler::default();
        assert_eq!(s.parked(), Parked::Stray);
        s.block_on(2, 0).unwrap();
        assert_eq!(s.parked(), Parked::Ready(2));
        // Each record is used once.
        assert_eq!(s.parked(), Parked::Stray);
    }

    #[test]
    fn the_context_that_waits_may_not_be_the_one_the_host_resumed() {
        // The host resumed 3, which switched to 4, which blocked: 4 waits, 3 stays suspended
        // (it is 4's to resume).
        let mut s = Scheduler::default();
        let h = s.open(Operation::Fetch { done: None }).unwrap();
        s.block_on(4, h).unwrap();
        assert_eq!(s.parked(), Parked::Waiting(4, h));
        s.fetch_done(h, Ok(response()));
        assert_eq!(s.next_ready(), Some(4));
        assert_eq!(s.next_ready(), None);
    }

    #[test]
    fn closing_a_handle_wakes_its_waiters_and_cancels_its_timer() {
        let mut s = Scheduler::default();
        let now = Instant::now();
        let h = s.sleep(now, Duration::from_secs(5)).unwrap();
        s.block_on(4, h).unwrap();
        assert_eq!(s.parked(), Parked::Waiting(4, h));
        assert!(s.close(h));
        assert!(!s.close(h));
        assert_eq!(s.next_ready(), Some(4));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn timers_fire_in_order_and_sleeps_are_capped() {
        let mut s = Scheduler::default();
        let now = Instant::now();
        let late = s.sleep(now, Duration::from_secs(2)).unwrap();
        let early = s.sleep(now, Duration::from_secs(1)).unwrap();
        let forever = s.sleep(now, Duration::MAX).unwrap();
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(1)));
        for (context, handle) in [(1, late), (2, early), (3, forever)] {
            s.block_on(context, handle).unwrap();
            assert_eq!(s.parked(), Parked::Waiting(context, handle));
        }
        assert_eq!(
            s.fire_timers(now + Duration::from_millis(1500)),
            Expired::default()
        );
        assert_eq!(s.next_ready(), Some(2));
        assert_eq!(s.next_ready(), None);
        s.fire_timers(now + Duration::from_secs(2));
        assert_eq!(s.next_ready(), Some(1));
        assert_eq!(s.next_deadline(), Some(now + MAX_SLEEP));
    }

    #[test]
    fn drain_deadlines_expire_once() {
        let mut s = Scheduler::default();
        let now = Instant::now();
        let request = RequestId::from_token(7).unwrap();
        s.drain_by(request, now + Duration::from_secs(1));
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(s.fire_timers(now), Expired::default());
        assert_eq!(
            s.fire_timers(now + Duration::from_secs(1)).drains,
            vec![request]
        );
        assert_eq!(
            s.fire_timers(now + Duration::from_secs(2)),
            Expired::default()
        );
    }

    #[test]
    fn answer_deadlines_expire_unless_answered() {
        let mut s = Scheduler::default();
        let now = Instant::now();
        let slow = RequestId::from_token(1).unwrap();
        let quick = RequestId::from_token(2).unwrap();
        s.answer_by(slow, now + Duration::from_secs(2));
        s.answer_by(quick, now + Duration::from_secs(1));
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(1)));
        s.answered(quick);
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(2)));
        let expired = s.fire_timers(now + Duration::from_secs(3));
        assert_eq!(expired.answers, vec![slow]);
        assert!(expired.drains.is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_forgotten_context_is_never_resumed() {
        let mut s = Scheduler::default();
        let h = s.open(Operation::Fetch { done: None }).unwrap();
        s.block_on(3, h).unwrap();
        s.parked();
        s.make_ready(4);
        s.forget_context(3);
        s.forget_context(4);
        s.fetch_done(h, Ok(response()));
        assert_eq!(s.next_ready(), None);
    }

    #[test]
    fn handles_are_bounded_and_never_reused() {
        let mut s = Scheduler::default();
        let first = s.open(Operation::Sleep { done: false }).unwrap();
        assert!(s.close(first));
        let second = s.open(Operation::Sleep { done: false }).unwrap();
        assert_ne!(first, second);
        for _ in 1..MAX_HANDLES {
            assert!(s.open(Operation::Sleep { done: false }).is_some());
        }
        assert!(s.open(Operation::Sleep { done: false }).is_none());
    }

    #[test]
    fn cpu_is_summed_over_runs_and_checked_against_the_budget() {
        let mut cpu = CpuAccount::new(Duration::from_millis(10));
        let request = RequestId::from_token(1).unwrap();
        let t0 = Instant::now();
        assert!(!cpu.in_context());
        cpu.start(Some(request), t0);
        assert!(cpu.in_context());
        cpu.stop(t0 + Duration::from_millis(6));
        cpu.start(Some(request), t0 + Duration::from_millis(20));
        assert_eq!(cpu.check(t0 + Duration::from_millis(23)), Ok(()));
        assert_eq!(
            cpu.check(t0 + Duration::from_millis(25)),
            Err((request, Duration::from_millis(10)))
        );
        assert_eq!(cpu.take_exceeded(), Some(request));
        assert_eq!(cpu.take_exceeded(), None);
        cpu.stop(t0 + Duration::from_millis(25));
        cpu.forget(request);
        cpu.start(Some(request), t0 + Duration::from_millis(30));
        assert_eq!(cpu.check(t0 + Duration::from_millis(35)), Ok(()));
        // Work for no request is never over budget.
        cpu.start(None, t0);
        assert_eq!(cpu.check(t0 + Duration::from_secs(60)), Ok(()));
    }
}
