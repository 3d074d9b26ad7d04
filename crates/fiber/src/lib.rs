//! Stackful coroutines ("fibers") with a hand-written context switch for
//! x86_64 and aarch64, guard-paged stacks and a stack pool.
//!
//! ```
//! use weft_fiber::{Fiber, FiberResult};
//!
//! // A generator: yields the Fibonacci numbers below a limit, then returns
//! // how many it produced.
//! let mut fib = Fiber::new(|suspender, limit: u64| {
//!     let (mut a, mut b, mut count) = (0u64, 1u64, 0u32);
//!     while a < limit {
//!         suspender.suspend(a);
//!         (a, b) = (b, a + b);
//!         count += 1;
//!     }
//!     count
//! });
//! let mut seen = Vec::new();
//! loop {
//!     match fib.resume(50) {
//!         FiberResult::Yield(n) => seen.push(n),
//!         FiberResult::Return(count) => {
//!             assert_eq!(count as usize, seen.len());
//!             break;
//!         }
//!     }
//! }
//! assert_eq!(seen, [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]);
//! ```
//!
//! # What a fiber body must not do
//!
//! A [`Fiber`] whose body, input, yield and return types are `Send` is
//! `Send`: it may be resumed on one OS thread, suspend, and be resumed on
//! another. The compiler cannot see a suspend point the way it sees an
//! `.await`, so the body itself must not hold, across a
//! [`Suspender::suspend`] call, anything tied to the OS thread it runs on:
//! a reference into thread-local storage (`LocalKey::with` closures must not
//! suspend), a `MutexGuard` (pthread mutexes must be unlocked by their
//! locking thread), or an `Rc` shared with code outside the fiber. LLVM may
//! also keep a thread-local's address in a register across a call: code that
//! touches thread-locals on a migrating fiber should do it in
//! `#[inline(never)]` functions.
//!
//! A fiber must also leave the floating-point control state (MXCSR, x87
//! control word, FPCR) as it found it before it suspends: the switch does
//! not save it (see the assembly files for why).
//!
//! # Panics, drops and overflows
//!
//! - A panic in the body ends the fiber and continues in the resumer, out of
//!   [`Fiber::resume`].
//! - Dropping a suspended fiber unwinds its stack, so its destructors run;
//!   dropping a fiber that never started drops its body unrun.
//! - Running off the bottom of a stack hits a guard page; the process
//!   prints `fiber stack overflow` with the stack's range and aborts instead
//!   of crashing silently.

#![warn(missing_docs)]

mod arch;
mod signal;
mod stack;

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

pub use stack::{PoolConfig, Stack, StackPool, TRIM_WINDOW};

/// What [`Fiber::resume`] gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FiberResult<Yield, Return> {
    /// The fiber suspended with this value and can be resumed again.
    Yield(Yield),
    /// The fiber's body returned this value; the fiber is finished.
    Return(Return),
}

impl<Y, R> FiberResult<Y, R> {
    /// The yielded value, or `None` if the fiber returned.
    pub fn into_yield(self) -> Option<Y> {
        match self {
            FiberResult::Yield(y) => Some(y),
            FiberResult::Return(_) => None,
        }
    }

    /// The returned value, or `None` if the fiber yielded.
    pub fn into_return(self) -> Option<R> {
        match self {
            FiberResult::Return(r) => Some(r),
            FiberResult::Yield(_) => None,
        }
    }
}

/// The messages of one `resume` call. It lives on the resumer's stack; the
/// resumer passes its address through the switch and is blocked until the
/// fiber switches back, so the fiber may use it meanwhile.
///
/// Protocol, which makes every field's state known without tags: the
/// resumer writes `input` (unless it asks for an unwind, which it says with
/// [`UNWIND_BIT`]); the fiber reads it exactly once, then writes
/// exactly one of `yielded` and `finished` and names which one with the value
/// it passes back through the switch ([`YIELDED`] or [`FINISHED`]); the
/// resumer reads that one exactly once.
///
/// `repr(C)` puts `head` at offset 0, so the [`Suspender`], which does not
/// know `Return`, can use an `*mut Exchange<I, Y, R>` as an
/// `*mut ExchangeHead<I, Y>`.
#[repr(C)]
struct Exchange<I, Y, R> {
    head: ExchangeHead<I, Y>,
    finished: MaybeUninit<Finished<R>>,
}

#[repr(C)]
struct ExchangeHead<I, Y> {
    /// The resume's input; left unwritten when the fiber is asked to unwind.
    input: MaybeUninit<I>,
    yielded: MaybeUninit<Y>,
}

impl<I, Y, R> Exchange<I, Y, R> {
    fn new(input: MaybeUninit<I>) -> Self {
        Exchange {
            head: ExchangeHead {
                input,
                yielded: MaybeUninit::uninit(),
            },
            finished: MaybeUninit::uninit(),
        }
    }
}

/// Set in the exchange address passed to the fiber to ask it to unwind
/// instead of resuming (exchanges are at least 8-byte aligned, so the bit
/// is free). It saves a tag in memory on every switch.
const UNWIND_BIT: usize = 1;

/// What a switch into the fiber asks of it.
enum ToFiber<I, Y> {
    Resume(I, *mut ExchangeHead<I, Y>),
    Unwind(*mut ExchangeHead<I, Y>),
}

/// Decodes the value passed into the fiber.
///
/// # Safety
/// `passed` is an exchange address from `Fiber::switch_in`, possibly with
/// [`UNWIND_BIT`] set; without it, the exchange's `input` is written and
/// not yet read.
unsafe fn received<I, Y>(passed: usize) -> ToFiber<I, Y> {
    let exchange = (passed & !UNWIND_BIT) as *mut ExchangeHead<I, Y>;
    if passed & UNWIND_BIT != 0 {
        ToFiber::Unwind(exchange)
    } else {
        // SAFETY: the caller guarantees (function contract) that `passed`
        // names a live exchange; UNWIND_BIT is clear, so its `input` is
        // written and not yet read, and this is its one read.
        ToFiber::Resume(unsafe { (*exchange).input.assume_init_read() }, exchange)
    }
}

/// Passed back through the switch: the fiber wrote `yielded`.
const YIELDED: usize = 1;
/// Passed back through the switch: the fiber wrote `finished`.
const FINISHED: usize = 2;

enum Finished<R> {
    Return(R),
    Panic(Box<dyn Any + Send>),
    Unwound,
}

/// The panic payload that unwinds a dropped fiber's stack.
struct ForcedUnwind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unstarted,
    Suspended,
    Finished,
}

/// A stackful coroutine: its body runs on its own stack, can suspend from
/// any depth of calls with a value ([`Suspender::suspend`]) and is resumed
/// with the next input ([`Fiber::resume`]).
///
/// See the [crate documentation](crate) for the rules about thread-local
/// state across suspends.
pub struct Fiber<Input = (), Yield = (), Return = ()> {
    stack: ManuallyDrop<Stack>,
    /// The switch slot near the top of `stack` (see `arch`).
    slot: *mut *mut u8,
    state: State,
    /// The body, moved onto the top of `stack`; owned by the fiber from its
    /// first resume on.
    body: *mut u8,
    drop_body: unsafe fn(*mut u8),
    _types: PhantomData<fn(Input) -> (Yield, Return)>,
}

// SAFETY: the constructors require the body to be `Send + 'static`; the
// values crossing a switch are `Input`, `Yield` and `Return`, required Send
// here; the stack is Send. What the body keeps on its stack across a suspend
// is covered by the rule in the crate docs.
unsafe impl<I: Send, Y: Send, R: Send> Send for Fiber<I, Y, R> {}

impl<I, Y, R> Fiber<I, Y, R> {
    /// A fiber on a freshly mapped stack of [`Stack::DEFAULT_SIZE`].
    ///
    /// Panics if the stack cannot be mapped; use [`Fiber::with_stack`] with
    /// [`Stack::new`] or [`StackPool::take`] to handle that error.
    pub fn new<F>(body: F) -> Self
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R + Send + 'static,
    {
        let stack = Stack::new(Stack::DEFAULT_SIZE)
            .unwrap_or_else(|e| panic!("weft-fiber: cannot map a fiber stack: {e}"));
        Self::with_stack(stack, body)
    }

    /// A fiber running on `stack`. A stack from a [`StackPool`] returns to
    /// its pool when the fiber is dropped.
    ///
    /// The body is moved onto the top of the stack (no heap allocation)
    /// unless it is large compared with the stack, in which case it is boxed.
    pub fn with_stack<F>(stack: Stack, body: F) -> Self
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R + Send + 'static,
    {
        let footprint = size_of::<F>() + align_of::<F>() + arch::INIT_FRAME_BYTES;
        if footprint > stack.size() / 8 {
            let boxed = Box::new(body);
            return Self::place(stack, move |suspender: &Suspender<I, Y>, input: I| {
                boxed(suspender, input)
            });
        }
        Self::place(stack, body)
    }

    fn place<F>(stack: Stack, body: F) -> Self
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R,
    {
        signal::prepare_thread();
        let range = stack.range();
        let top = stack.top() as usize;
        let body_addr = (top - size_of::<F>()) & !(align_of::<F>().max(16) - 1);
        debug_assert!(body_addr - arch::INIT_FRAME_BYTES > range.start);
        // SAFETY: [body_addr, body_addr + size_of F) lies at the top of the
        // stack's usable range (with_stack checked it fits with room for the
        // first frame) and nothing else uses that memory: the fiber is not
        // started. body_addr is aligned for F.
        let slot = unsafe {
            ptr::write(body_addr as *mut F, body);
            arch::init(
                body_addr as *mut u8,
                fiber_entry::<F, I, Y, R>,
                body_addr as *mut u8,
            )
        };
        Fiber {
            stack: ManuallyDrop::new(stack),
            slot,
            state: State::Unstarted,
            body: body_addr as *mut u8,
            drop_body: drop_erased::<F>,
            _types: PhantomData,
        }
    }

    /// Runs the fiber until it suspends or its body returns.
    ///
    /// A panic in the body ends the fiber and resumes unwinding here.
    /// Panics if the fiber has already finished.
    #[inline]
    pub fn resume(&mut self, input: I) -> FiberResult<Y, R> {
        if self.state == State::Finished {
            resumed_after_finish();
        }
        let mut exchange = Exchange::new(MaybeUninit::new(input));
        if self.switch_in(&mut exchange, 0) == YIELDED {
            self.state = State::Suspended;
            // SAFETY: Exchange protocol: the fiber (`Suspender::suspend`)
            // wrote `yielded` and passed back YIELDED to say so; this is
            // the one read of it.
            FiberResult::Yield(unsafe { exchange.head.yielded.assume_init_read() })
        } else {
            // SAFETY: Exchange protocol: anything but YIELDED is FINISHED,
            // passed back by `fiber_entry` after writing `finished`; this
            // is the one read of it.
            self.finish(unsafe { exchange.finished.assume_init_read() })
        }
    }

    /// The end of the resume in which the body returned or panicked; kept out
    /// of line so `resume` stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn finish(&mut self, finished: Finished<R>) -> FiberResult<Y, R> {
        self.state = State::Finished;
        match finished {
            Finished::Return(value) => FiberResult::Return(value),
            Finished::Panic(payload) => panic::resume_unwind(payload),
            // Only a ToFiber::Unwind ends in Unwound, and resume never sends one.
            Finished::Unwound => unreachable!("a resumed fiber reported an unwind"),
        }
    }

    /// True once the body has returned or panicked.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// True once the fiber has been resumed at least once.
    pub fn is_started(&self) -> bool {
        self.state != State::Unstarted
    }

    /// The fiber's stack.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Runs the fiber until it switches back; returns [`YIELDED`] or
    /// [`FINISHED`]. `unwind` is 0 or [`UNWIND_BIT`].
    #[inline]
    fn switch_in(&mut self, exchange: &mut Exchange<I, Y, R>, unwind: usize) -> usize {
        // SAFETY: the slot holds the fiber's saved stack pointer: it was laid
        // out by weft_fiber_init, or saved by the fiber's last suspend (state
        // is Unstarted or Suspended, checked by our callers). The exchange
        // outlives the switch: we are blocked in it until the fiber switches
        // back.
        unsafe { arch::resume(self.slot, exchange as *mut _ as usize | unwind) }
    }
}

impl<I, Y, R> Drop for Fiber<I, Y, R> {
    fn drop(&mut self) {
        match self.state {
            // SAFETY: an unstarted fiber still owns the body `place` wrote;
            // it is dropped exactly once, here.
            State::Unstarted => unsafe { (self.drop_body)(self.body) },
            State::Suspended if cfg!(panic = "unwind") => self.unwind(),
            // Without unwinding the suspended body's destructors cannot run;
            // its memory goes away with the stack.
            State::Suspended | State::Finished => {}
        }
        // SAFETY: `&mut self` means the fiber is not running (a running
        // fiber's resumer is blocked in `resume`, which borrows it), and it
        // is now unstarted with its body dropped, finished, or unwound above
        // (or, without unwinding, abandoned), so nothing will use its stack
        // again. `stack` is dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.stack) };
    }
}

impl<I, Y, R> Fiber<I, Y, R> {
    /// Resumes a suspended fiber with a request to unwind, so every value on
    /// its stack is dropped. A body that catches the unwind and suspends
    /// again is asked again.
    fn unwind(&mut self) {
        loop {
            let mut exchange = Exchange::new(MaybeUninit::uninit());
            if self.switch_in(&mut exchange, UNWIND_BIT) == YIELDED {
                // SAFETY: Exchange protocol, as in `resume`: YIELDED means
                // `yielded` was written; this is its one read.
                drop(unsafe { exchange.head.yielded.assume_init_read() });
                continue;
            }
            self.state = State::Finished;
            // SAFETY: Exchange protocol, as in `resume`: anything but
            // YIELDED means `finished` was written; this is its one read.
            let finished = unsafe { exchange.finished.assume_init_read() };
            if let Finished::Panic(payload) = finished
                && !std::thread::panicking()
            {
                panic::resume_unwind(payload);
            }
            return;
        }
    }
}

impl<I, Y, R> std::fmt::Debug for Fiber<I, Y, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fiber")
            .field("state", &self.state)
            .field("stack", &*self.stack)
            .finish()
    }
}

/// The handle a fiber's body uses to suspend itself. It lives on the fiber's
/// stack and only exists inside the body.
pub struct Suspender<Input = (), Yield = ()> {
    slot: *mut *mut u8,
    /// The resumer's exchange for the `resume` call in progress.
    exchange: Cell<*mut ExchangeHead<Input, Yield>>,
    _types: PhantomData<fn(Yield) -> Input>,
    /// Not Send or Sync: it is only meaningful on its own fiber.
    _on_its_fiber_only: PhantomData<*const ()>,
}

impl<I, Y> Suspender<I, Y> {
    /// Suspends the fiber, handing `value` to its resumer, and returns the
    /// input of the next [`Fiber::resume`].
    ///
    /// If the fiber is dropped instead of resumed, this unwinds (with a
    /// private payload) so the destructors on the fiber's stack run.
    #[inline]
    pub fn suspend(&self, value: Y) -> I {
        // SAFETY: `exchange` points at the resumer's Exchange for the resume
        // call in progress; the resumer is blocked in that call until we
        // switch back, and repr(C) puts the head at offset 0. The slot holds
        // the resumer's stack pointer while we run.
        let passed = unsafe {
            (*self.exchange.get()).yielded.write(value);
            arch::suspend(self.slot, YIELDED)
        };
        // SAFETY: the next resume (or drop) passed its own live Exchange,
        // whose input we read exactly once, here.
        match unsafe { received::<I, Y>(passed) } {
            ToFiber::Resume(input, next) => {
                self.exchange.set(next);
                input
            }
            ToFiber::Unwind(next) => {
                self.exchange.set(next);
                panic::resume_unwind(Box::new(ForcedUnwind))
            }
        }
    }
}

/// The Rust side of a fiber's first frame, called by `weft_fiber_start` on
/// the fiber stack with the body's address, the first resume's exchange and
/// the switch slot.
///
/// # Safety
/// Only `weft_fiber_start` calls this, once per fiber, with the values laid
/// out by `Fiber::place` (a live `F` at `body`) and passed by
/// `Fiber::switch_in` (a live `Exchange<I, Y, R>` at `exchange`).
unsafe extern "C" fn fiber_entry<F, I, Y, R>(
    body: *mut u8,
    exchange: usize,
    slot: *mut *mut u8,
) -> !
where
    F: FnOnce(&Suspender<I, Y>, I) -> R,
{
    // SAFETY: per the function contract; from here on the body is ours
    // (Fiber no longer drops it: its state is no longer Unstarted).
    let (body, first) = unsafe { (ptr::read(body as *mut F), received::<I, Y>(exchange)) };
    let exchange = match first {
        ToFiber::Resume(_, exchange) | ToFiber::Unwind(exchange) => exchange,
    };
    let suspender = Suspender {
        slot,
        exchange: Cell::new(exchange),
        _types: PhantomData,
        _on_its_fiber_only: PhantomData,
    };
    let finished = match first {
        ToFiber::Resume(input, _) => {
            match panic::catch_unwind(AssertUnwindSafe(|| body(&suspender, input))) {
                Ok(value) => Finished::Return(value),
                Err(payload) if payload.is::<ForcedUnwind>() => Finished::Unwound,
                Err(payload) => Finished::Panic(payload),
            }
        }
        // A fiber is only unwound once suspended, never before it starts.
        ToFiber::Unwind(_) => std::process::abort(),
    };
    let exchange = suspender.exchange.get().cast::<Exchange<I, Y, R>>();
    // SAFETY: the exchange of the resume call in progress is live (see
    // Suspender::suspend). This is the fiber's last switch: nothing on this
    // stack needs dropping (body and input were consumed, suspender has no
    // destructor) and the resumer never switches here again.
    unsafe {
        (*exchange).finished.write(finished);
        arch::suspend(slot, FINISHED);
    }
    std::process::abort()
}

#[cold]
#[inline(never)]
fn resumed_after_finish() -> ! {
    panic!("weft-fiber: resumed a fiber that has finished")
}

/// # Safety
/// `body` points at a live `F` that nothing else will drop.
unsafe fn drop_erased<F>(body: *mut u8) {
    // SAFETY: the caller guarantees (function contract) a live, aligned `F`
    // at `body` that nothing else drops: `Fiber::drop` calls this only for
    // an unstarted fiber, whose body `fiber_entry` never took.
    unsafe { ptr::drop_in_place(body as *mut F) }
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
