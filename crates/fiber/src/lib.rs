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
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use arch::Word;
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

// How values cross a switch. Each switch carries one machine word each way
// (a register, see `arch`), as a `Word`: `MaybeUninit`, so that it may hold
// any value's bytes, padding included. A value that fits in a word travels
// in it; a larger one stays in the sender's frame and the word carries its
// address (the frame cannot go away: the sender is blocked in the switch
// until the receiver switches back). The receiver moves the value out
// exactly once, right after the switch. Which type a word carries is fixed
// by the direction and, towards the resumer, by whether the stack pointer
// passed back is null:
// - resumer -> fiber: `I` (nothing when the unwind flag is set);
// - fiber -> resumer: `Y` from `suspend`, `Finished<R>` from `finish`.

/// Whether a `T` travels inside the word rather than by address.
const fn fits_in_word<T>() -> bool {
    size_of::<T>() <= size_of::<Word>() && align_of::<T>() <= align_of::<Word>()
}

/// The word that hands over the value in `value`; the receiver takes it
/// with [`take`].
///
/// # Safety
/// `value` is initialized, and the caller treats it as moved out: it
/// neither reads nor drops it again, and keeps it where it is until the
/// receiver has taken it (the switch that carries the word has returned).
#[inline(always)]
unsafe fn lend<T>(value: &mut MaybeUninit<T>) -> Word {
    if fits_in_word::<T>() {
        let mut word = Word::uninit();
        // SAFETY: `fits_in_word` checked that the word is large and aligned
        // enough for a T; `value` is initialized (function contract) and
        // the bytes are moved, ownership goes with them.
        unsafe {
            word.as_mut_ptr()
                .cast::<T>()
                .write(value.assume_init_read())
        };
        word
    } else {
        Word::new(value.as_mut_ptr() as usize)
    }
}

/// Moves out the value handed over by [`lend`].
///
/// # Safety
/// `word` comes from `lend::<T>` on the other side of the switch that just
/// returned, whose sender is still blocked in it, and is taken only once.
#[inline(always)]
unsafe fn take<T>(word: Word) -> T {
    if fits_in_word::<T>() {
        // SAFETY: per the function contract the word holds the bytes of a
        // valid T, copied by `lend`, that nobody else owns.
        unsafe { word.as_ptr().cast::<T>().read() }
    } else {
        // SAFETY: per the function contract the word is the address of a
        // live, aligned T that its owner will neither drop nor read again.
        unsafe { ptr::read(word.assume_init() as *const T) }
    }
}

enum Finished<R> {
    Return(R),
    Panic(Box<dyn Any + Send>),
    Unwound,
}

/// The panic payload that unwinds a dropped fiber's stack.
struct ForcedUnwind;

/// A stackful coroutine: its body runs on its own stack, can suspend from
/// any depth of calls with a value ([`Suspender::suspend`]) and is resumed
/// with the next input ([`Fiber::resume`]).
///
/// See the [crate documentation](crate) for the rules about thread-local
/// state across suspends.
pub struct Fiber<Input = (), Yield = (), Return = ()> {
    /// The fiber's saved stack pointer (see `arch`); null once it has
    /// finished.
    sp: *mut u8,
    /// The switch slot near the top of `stack` (see `arch`).
    slot: *mut *mut u8,
    /// Drops the body of an unstarted fiber, which `place` moved onto the
    /// top of `stack` (at `slot + arch::SLOT_OFFSET`).
    drop_body: unsafe fn(*mut u8),
    stack: ManuallyDrop<Stack>,
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
    #[inline]
    pub fn with_stack<F>(stack: Stack, body: F) -> Self
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R + Send + 'static,
    {
        let footprint = size_of::<F>() + align_of::<F>() + arch::INIT_FRAME_BYTES;
        // The first test is constant: small bodies never look at the stack.
        if footprint > Stack::MIN_SIZE / 8 && footprint > stack.size() / 8 {
            let boxed = Box::new(body);
            return Self::place(stack, move |suspender: &Suspender<I, Y>, input: I| {
                boxed(suspender, input)
            });
        }
        Self::place(stack, body)
    }

    #[inline]
    fn place<F>(stack: Stack, body: F) -> Self
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R,
    {
        signal::prepare_thread();
        let body_addr = body_address::<F>(stack.top() as usize);
        debug_assert!(body_addr - arch::INIT_FRAME_BYTES > stack.range().start);
        // SAFETY: [body_addr, body_addr + size_of F) lies at the top of the
        // stack's usable range (with_stack checked it fits with room for the
        // first frame below it) and nothing else uses that memory: the fiber
        // is not started. body_addr is aligned for F and to 16 bytes.
        let sp = unsafe {
            ptr::write(body_addr as *mut F, body);
            arch::init(body_addr as *mut u8, fiber_entry::<F, I, Y, R>)
        };
        let slot = (body_addr - arch::SLOT_OFFSET) as *mut *mut u8;
        debug_assert_eq!(sp as usize, slot as usize - arch::FIRST_SP_BELOW_SLOT);
        Fiber {
            sp,
            slot,
            drop_body: drop_erased::<F>,
            stack: ManuallyDrop::new(stack),
            _types: PhantomData,
        }
    }

    /// Runs the fiber until it suspends or its body returns.
    ///
    /// A panic in the body ends the fiber and resumes unwinding here.
    /// Panics if the fiber has already finished.
    #[inline]
    pub fn resume(&mut self, input: I) -> FiberResult<Y, R> {
        if self.sp.is_null() {
            resumed_after_finish();
        }
        let mut input = MaybeUninit::new(input);
        // SAFETY: `input` is initialized and not touched again; it stays in
        // this frame until the switch returns, by when the fiber took it.
        let word = self.switch_in(unsafe { lend(&mut input) }, 0);
        if self.sp.is_null() {
            return self.finish(word);
        }
        // SAFETY: the fiber suspended (its sp is not null), so `word` is the
        // `lend` of its `suspend`, taken once, here.
        FiberResult::Yield(unsafe { take::<Y>(word) })
    }

    /// The end of the resume in which the body returned or panicked.
    #[inline]
    fn finish(&mut self, word: Word) -> FiberResult<Y, R> {
        // SAFETY: the fiber finished (its sp is null), so `word` is the
        // `lend` of `fiber_entry`'s `finish`, taken once, here.
        match unsafe { take::<Finished<R>>(word) } {
            Finished::Return(value) => FiberResult::Return(value),
            Finished::Panic(payload) => resume_panic(payload),
            // Only an unwind request ends in Unwound, and resume never sends one.
            Finished::Unwound => unreachable!("a resumed fiber reported an unwind"),
        }
    }

    /// True once the body has returned or panicked.
    pub fn is_finished(&self) -> bool {
        self.sp.is_null()
    }

    /// True once the fiber has been resumed at least once.
    pub fn is_started(&self) -> bool {
        // Until the first resume the fiber's sp is the one `arch::init`
        // returned; every later one (or null, once finished) differs, as the
        // fiber's frames lie below that first frame. So no flag has to be
        // kept up to date on every resume.
        self.sp
            != self
                .slot
                .cast::<u8>()
                .wrapping_sub(arch::FIRST_SP_BELOW_SLOT)
    }

    /// The fiber's stack.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Runs the fiber until it switches back, passing it `word` and
    /// `unwind`; stores its new stack pointer and returns its word.
    #[inline(always)]
    fn switch_in(&mut self, word: Word, unwind: usize) -> Word {
        // SAFETY: `sp` is the fiber's saved stack pointer (from `arch::init`
        // or from its last switch back), not null (checked by our callers),
        // so the fiber is unstarted or suspended, and `&mut self` means it
        // runs nowhere else. `slot` belongs to its stack. Whatever `word`
        // lends stays in our frame: we are blocked in the switch until the
        // fiber switches back.
        let (sp, word) = unsafe { arch::resume(self.sp, self.slot, word, unwind) };
        self.sp = sp;
        word
    }
}

impl<I, Y, R> Drop for Fiber<I, Y, R> {
    #[inline]
    fn drop(&mut self) {
        if !self.is_started() {
            let body = self.slot as usize + arch::SLOT_OFFSET;
            // SAFETY: an unstarted fiber still owns the body `place` wrote
            // there; it is dropped exactly once, here.
            unsafe { (self.drop_body)(body as *mut u8) };
        } else if !self.sp.is_null() && cfg!(panic = "unwind") {
            self.unwind();
        }
        // Without unwinding the suspended body's destructors cannot run; its
        // memory goes away with the stack.

        // SAFETY: `&mut self` means the fiber is not running (a running
        // fiber's resumer is blocked in `resume`, which borrows it), and it
        // is now unstarted with its body dropped, finished, or unwound above
        // (or, without unwinding, abandoned), so nothing will use its stack
        // again. `stack` is released exactly once, here, and never touched
        // again (it is a ManuallyDrop).
        unsafe { self.stack.release() };
    }
}

impl<I, Y, R> Fiber<I, Y, R> {
    /// Resumes a suspended fiber with a request to unwind, so every value on
    /// its stack is dropped. A body that catches the unwind and suspends
    /// again is asked again.
    #[cold]
    fn unwind(&mut self) {
        loop {
            let word = self.switch_in(Word::uninit(), 1);
            if !self.sp.is_null() {
                // SAFETY: as in `resume`: the fiber suspended again and
                // lent its yield; this is its one read.
                drop(unsafe { take::<Y>(word) });
                continue;
            }
            // SAFETY: as in `finish`: the fiber finished and lent its
            // Finished; this is its one read.
            let finished = unsafe { take::<Finished<R>>(word) };
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
        let state = if self.is_finished() {
            "Finished"
        } else if self.is_started() {
            "Suspended"
        } else {
            "Unstarted"
        };
        f.debug_struct("Fiber")
            .field("state", &format_args!("{state}"))
            .field("stack", &*self.stack)
            .finish()
    }
}

/// The handle a fiber's body uses to suspend itself. It lives on the fiber's
/// stack and only exists inside the body.
pub struct Suspender<Input = (), Yield = ()> {
    slot: *mut *mut u8,
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
        let mut value = MaybeUninit::new(value);
        // SAFETY: a Suspender only exists inside its fiber's body, so we run
        // on the fiber stack of `slot`, which holds the resumer's stack
        // pointer while we run. `value` is initialized and not touched
        // again; it stays in this frame until the resumer has taken it.
        let (word, unwind) = unsafe { arch::suspend(self.slot, lend(&mut value)) };
        if unwind != 0 {
            forced_unwind();
        }
        // SAFETY: no unwind request, so the resumer lent its input; this is
        // its one read.
        unsafe { take::<I>(word) }
    }
}

#[cold]
#[inline(never)]
fn forced_unwind() -> ! {
    panic::resume_unwind(Box::new(ForcedUnwind))
}

/// The address where `place` puts a body of type `F` on a stack whose top
/// is `top`: 16-byte aligned (it is the `top` of `arch::init`).
#[inline(always)]
fn body_address<F>(top: usize) -> usize {
    (top - size_of::<F>()) & !(align_of::<F>().max(16) - 1)
}

/// The Rust side of a fiber's first frame, called on the fiber stack by
/// `arch` with the first resume's word and the switch slot.
///
/// # Safety
/// Only the first switch into a fiber calls this, once per fiber, with
/// the slot of the stack `Fiber::place` laid out (a live `F` at the body
/// address above it), and the word `Fiber::resume` lent (`Fiber` never asks
/// an unstarted fiber to unwind: it drops the body itself).
unsafe extern "C" fn fiber_entry<F, I, Y, R>(word: Word, slot: *mut *mut u8) -> !
where
    F: FnOnce(&Suspender<I, Y>, I) -> R,
{
    let body_addr = slot as usize + arch::SLOT_OFFSET;
    // SAFETY: per the function contract; from here on the body is ours
    // (Fiber no longer drops it: its sp is no longer the first one).
    let (body, input) = unsafe { (ptr::read(body_addr as *mut F), take::<I>(word)) };
    let suspender = Suspender {
        slot,
        _types: PhantomData,
        _on_its_fiber_only: PhantomData,
    };
    let finished = match panic::catch_unwind(AssertUnwindSafe(|| body(&suspender, input))) {
        Ok(value) => Finished::Return(value),
        Err(payload) if payload.is::<ForcedUnwind>() => Finished::Unwound,
        Err(payload) => Finished::Panic(payload),
    };
    let mut finished = MaybeUninit::new(finished);
    // SAFETY: we run on the fiber stack of `slot`, which holds the resumer's
    // stack pointer. This is the fiber's last switch: nothing on this stack
    // needs dropping (body and input were consumed, suspender has no
    // destructor, `finished` is taken by the resumer), and the stack stays
    // untouched until the resumer has taken `finished`: it belongs to the
    // Fiber, which is borrowed by that resume.
    unsafe { arch::finish(slot, lend(&mut finished)) }
}

#[cold]
#[inline(never)]
fn resumed_after_finish() -> ! {
    panic!("weft-fiber: resumed a fiber that has finished")
}

#[cold]
#[inline(never)]
fn resume_panic(payload: Box<dyn Any + Send>) -> ! {
    panic::resume_unwind(payload)
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
