//! Multi-producer, multi-consumer channels whose blocking operations park only the calling green
//! thread (and block the OS thread when called outside green threads). Each blocking operation
//! also has an async form (`send_async`, `recv_async`) for code driven by `block_on`.
//!
//! Waiters queue in FIFO order. A waiter that was woken but gives up (its future is dropped)
//! passes the wake-up on, so no item or free slot is left with a sleeping waiter behind it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A bounded channel holding at most `capacity` items; `send` waits while it is full.
///
/// # Panics
/// If `capacity` is 0.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(
        capacity > 0,
        "weft_sched::channel capacity must be at least 1"
    );
    new_channel(Some(capacity))
}

/// A channel without a size limit; `send` never waits.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    new_channel(None)
}

fn new_channel<T>(capacity: Option<usize>) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity,
            senders: 1,
            receivers: 1,
            recv_waiters: WaitQueue::default(),
            send_waiters: WaitQueue::default(),
        }),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

#[derive(Default)]
struct WaitQueue {
    next_id: u64,
    waiters: VecDeque<(u64, Waker)>,
}

impl WaitQueue {
    /// Registers (or refreshes) a waiter; returns its id.
    fn register(&mut self, id: Option<u64>, waker: &Waker) -> u64 {
        if let Some(id) = id
            && let Some(entry) = self.waiters.iter_mut().find(|(i, _)| *i == id)
        {
            if !entry.1.will_wake(waker) {
                entry.1 = waker.clone();
            }
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiters.push_back((id, waker.clone()));
        id
    }

    /// Removes a waiter; false if it had already been popped by a wake-up.
    fn remove(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|(i, _)| *i == id) {
            Some(pos) => {
                self.waiters.remove(pos);
                true
            }
            None => false,
        }
    }

    fn pop(&mut self) -> Option<Waker> {
        self.waiters.pop_front().map(|(_, w)| w)
    }

    fn take_all(&mut self) -> Vec<Waker> {
        self.waiters.drain(..).map(|(_, w)| w).collect()
    }
}

struct State<T> {
    items: VecDeque<T>,
    capacity: Option<usize>,
    senders: usize,
    receivers: usize,
    recv_waiters: WaitQueue,
    send_waiters: WaitQueue,
}

impl<T> State<T> {
    fn is_full(&self) -> bool {
        self.capacity.is_some_and(|c| self.items.len() >= c)
    }
}

struct Chan<T> {
    state: Mutex<State<T>>,
}

impl<T> Chan<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half; clone it for more producers.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving half; clone it for more consumers (each item goes to one of them).
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

/// The receivers are all gone; the unsent value is returned.
#[derive(PartialEq, Eq)]
pub struct SendError<T>(pub T);

/// Why `try_send` did not send.
#[derive(PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The channel is at capacity; the value is returned.
    Full(T),
    /// The receivers are all gone; the value is returned.
    Disconnected(T),
}

/// The senders are all gone and the channel is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvError;

/// Why `try_recv` returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued right now (senders remain).
    Empty,
    /// The senders are all gone and the channel is empty.
    Disconnected,
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}
impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a channel whose receivers are all gone")
    }
}
impl<T> std::error::Error for SendError<T> {}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}
impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("channel is full"),
            TrySendError::Disconnected(_) => {
                f.write_str("sending on a channel whose receivers are all gone")
            }
        }
    }
}
impl<T> std::error::Error for TrySendError<T> {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty channel whose senders are all gone")
    }
}
impl std::error::Error for RecvError {}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("channel is empty"),
            TryRecvError::Disconnected => {
                f.write_str("receiving on an empty channel whose senders are all gone")
            }
        }
    }
}
impl std::error::Error for TryRecvError {}

impl<T> Sender<T> {
    /// Sends, waiting (parking the green thread) while a bounded channel is full.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.try_send(value) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(v)) => Err(SendError(v)),
            Err(TrySendError::Full(v)) => crate::block_on(self.send_async(v)),
        }
    }

    /// Sends without waiting.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.chan.lock();
            if state.receivers == 0 {
                return Err(TrySendError::Disconnected(value));
            }
            if state.is_full() {
                return Err(TrySendError::Full(value));
            }
            state.items.push_back(value);
            state.recv_waiters.pop()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// A future that sends `value`, waiting while the channel is full.
    pub fn send_async(&self, value: T) -> SendFuture<'_, T> {
        SendFuture {
            chan: &self.chan,
            value: Some(value),
            waiter: None,
        }
    }

    /// Items currently queued.
    pub fn len(&self) -> usize {
        self.chan.lock().items.len()
    }

    /// True if no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.lock().senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let wakers = {
            let mut state = self.chan.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.recv_waiters.take_all()
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Receives, waiting (parking the green thread) while the channel is empty. Fails once the
    /// channel is empty and every sender is gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        match self.try_recv() {
            Ok(v) => Ok(v),
            Err(TryRecvError::Disconnected) => Err(RecvError),
            Err(TryRecvError::Empty) => crate::block_on(self.recv_async()),
        }
    }

    /// Receives without waiting.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let (value, waker) = {
            let mut state = self.chan.lock();
            match state.items.pop_front() {
                Some(v) => (v, state.send_waiters.pop()),
                None if state.senders == 0 => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(value)
    }

    /// A future that receives the next item.
    pub fn recv_async(&self) -> RecvFuture<'_, T> {
        RecvFuture {
            chan: &self.chan,
            waiter: None,
        }
    }

    /// An iterator that receives until the channel is disconnected.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// Items currently queued.
    pub fn len(&self) -> usize {
        self.chan.lock().items.len()
    }

    /// True if no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.chan.lock().receivers += 1;
        Receiver {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (wakers, items) = {
            let mut state = self.chan.lock();
            state.receivers -= 1;
            if state.receivers > 0 {
                return;
            }
            // Nobody can take the queued items any more: they are dropped now, not when the
            // last sender goes (an item may own that sender, which would then never go).
            (
                state.send_waiters.take_all(),
                std::mem::take(&mut state.items),
            )
        };
        // Outside the lock: an item's drop may use this channel.
        drop(items);
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Returned by [`Sender::send_async`].
pub struct SendFuture<'a, T> {
    chan: &'a Arc<Chan<T>>,
    value: Option<T>,
    waiter: Option<u64>,
}

impl<T> Unpin for SendFuture<'_, T> {}

impl<T> Future for SendFuture<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = this.chan.lock();
        let value = this
            .value
            .take()
            .expect("SendFuture polled after completion");
        if state.receivers == 0 {
            if let Some(id) = this.waiter.take() {
                state.send_waiters.remove(id);
            }
            return Poll::Ready(Err(SendError(value)));
        }
        if state.is_full() {
            this.value = Some(value);
            this.waiter = Some(state.send_waiters.register(this.waiter, cx.waker()));
            return Poll::Pending;
        }
        if let Some(id) = this.waiter.take() {
            state.send_waiters.remove(id);
        }
        state.items.push_back(value);
        let waker = state.recv_waiters.pop();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> Drop for SendFuture<'_, T> {
    fn drop(&mut self) {
        let Some(id) = self.waiter.take() else {
            return;
        };
        let waker = {
            let mut state = self.chan.lock();
            if state.send_waiters.remove(id) || state.is_full() {
                None
            } else {
                // We were woken for a free slot we will not use: pass it on.
                state.send_waiters.pop()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Returned by [`Receiver::recv_async`].
pub struct RecvFuture<'a, T> {
    chan: &'a Arc<Chan<T>>,
    waiter: Option<u64>,
}

impl<T> Future for RecvFuture<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = this.chan.lock();
        if let Some(value) = state.items.pop_front() {
            if let Some(id) = this.waiter.take() {
                state.recv_waiters.remove(id);
            }
            let waker = state.send_waiters.pop();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Poll::Ready(Ok(value));
        }
        if state.senders == 0 {
            if let Some(id) = this.waiter.take() {
                state.recv_waiters.remove(id);
            }
            return Poll::Ready(Err(RecvError));
        }
        this.waiter = Some(state.recv_waiters.register(this.waiter, cx.waker()));
        Poll::Pending
    }
}

impl<T> Drop for RecvFuture<'_, T> {
    fn drop(&mut self) {
        let Some(id) = self.waiter.take() else {
            return;
        };
        let waker = {
            let mut state = self.chan.lock();
            if state.recv_waiters.remove(id) || state.items.is_empty() {
                None
            } else {
                // We were woken for an item we will not take: pass it on.
                state.recv_waiters.pop()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sender { .. }")
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receiver { .. }")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Clone, Debug)]
    enum Op {
        TrySend(u16),
        TryRecv,
        CloneSender,
        DropSender,
        CloneReceiver,
        DropReceiver,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u16>().prop_map(Op::TrySend),
            4 => Just(Op::TryRecv),
            1 => Just(Op::CloneSender),
            1 => Just(Op::DropSender),
            1 => Just(Op::CloneReceiver),
            1 => Just(Op::DropReceiver),
        ]
    }

    proptest! {
        /// Non-blocking operations against a queue model: FIFO order, capacity, and the
        /// disconnection rules (senders gone and empty -> Disconnected; receivers gone -> sends
        /// fail with the value back).
        #[test]
        fn try_ops_match_a_queue_model(capacity in proptest::option::of(1usize..4), ops in proptest::collection::vec(op(), 0..60)) {
            let (tx, rx) = match capacity {
                Some(c) => channel::<u16>(c),
                None => unbounded::<u16>(),
            };
            let mut senders = vec![tx];
            let mut receivers = vec![rx];
            let mut model: VecDeque<u16> = VecDeque::new();
            for op in ops {
                match op {
                    Op::TrySend(v) => {
                        let Some(tx) = senders.first() else { continue };
                        let got = tx.try_send(v);
                        if receivers.is_empty() {
                            prop_assert_eq!(got, Err(TrySendError::Disconnected(v)));
                        } else if capacity.is_some_and(|c| model.len() >= c) {
                            prop_assert_eq!(got, Err(TrySendError::Full(v)));
                        } else {
                            prop_assert_eq!(got, Ok(()));
                            model.push_back(v);
                        }
                    }
                    Op::TryRecv => {
                        let Some(rx) = receivers.first() else { continue };
                        let got = rx.try_recv();
                        match model.pop_front() {
                            Some(v) => prop_assert_eq!(got, Ok(v)),
                            None if senders.is_empty() => prop_assert_eq!(got, Err(TryRecvError::Disconnected)),
                            None => prop_assert_eq!(got, Err(TryRecvError::Empty)),
                        }
                    }
                    Op::CloneSender => {
                        if let Some(tx) = senders.first() {
                            senders.push(tx.clone());
                        }
                    }
                    Op::DropSender => {
                        senders.pop();
                    }
                    Op::CloneReceiver => {
                        if let Some(rx) = receivers.first() {
                            receivers.push(rx.clone());
                        }
                    }
                    Op::DropReceiver => {
                        receivers.pop();
                        if receivers.is_empty() {
                            model.clear();
                        }
                    }
                }
                if let Some(rx) = receivers.first() {
                    prop_assert_eq!(rx.len(), model.len());
                }
            }
        }
    }

    #[test]
    fn items_are_dropped_with_the_last_receiver_even_when_they_own_a_sender() {
        /// Holds a sender of its own channel, and a count of the live ones.
        struct Owns(
            #[allow(dead_code)] Sender<Owns>,
            #[allow(dead_code)] Arc<()>,
        );
        let alive = Arc::new(());
        let (tx, rx) = channel::<Owns>(2);
        tx.try_send(Owns(tx.clone(), alive.clone()))
            .map_err(|_| "sent")
            .unwrap();
        let rx2 = rx.clone();
        drop(rx);
        assert_eq!(Arc::strong_count(&alive), 2, "a receiver is left");
        drop(rx2);
        assert_eq!(Arc::strong_count(&alive), 1, "the queued item was dropped");
        assert!(matches!(
            tx.try_send(Owns(tx.clone(), alive.clone())),
            Err(TrySendError::Disconnected(_))
        ));
        assert_eq!(Arc::strong_count(&alive), 1);
    }

    #[test]
    #[should_panic(expected = "capacity must be at least 1")]
    fn zero_capacity_is_rejected() {
        let _ = channel::<u8>(0);
    }

    #[test]
    fn a_dropped_waiting_receiver_passes_its_wake_on() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (tx, rx) = unbounded::<u8>();
        let (first, second) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        let mut f1 = Box::pin(rx.recv_async());
        let mut f2 = Box::pin(rx.recv_async());
        assert!(f1.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
        assert!(f2.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());
        tx.send(7).unwrap();
        assert_eq!(
            first.0.load(Ordering::SeqCst),
            1,
            "FIFO: the first waiter is woken"
        );
        assert_eq!(second.0.load(Ordering::SeqCst), 0);
        drop(f1); // gives up without taking the item
        assert_eq!(second.0.load(Ordering::SeqCst), 1, "the wake was passed on");
        assert_eq!(
            f2.as_mut().poll(&mut Context::from_waker(&w2)),
            Poll::Ready(Ok(7))
        );
    }
}
