//! Stack overflow diagnosis.
//!
//! A fiber that runs off the bottom of its stack touches the `PROT_NONE`
//! guard page and gets SIGSEGV (SIGBUS on some kernels). With no handler,
//! that is a silent crash. This module installs, once per process, a
//! SIGSEGV/SIGBUS handler that runs on an alternate signal stack (the
//! faulting stack is unusable), recognises a fault in the guard page of a
//! fiber stack this crate mapped (whichever thread runs on it), prints
//! `fiber stack overflow` with that stack's range to stderr and aborts.
//!
//! Every other fault is passed, unchanged, to the handler that was installed
//! before ours (wasmtime's trap handler, Rust's own stack-overflow handler,
//! or the default action), so those keep working in the same process
//! whichever was installed first.
//!
//! Fiber stacks are recognised through a registry of mapped stacks, kept
//! off the switch path: a switch costs no bookkeeping at all.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, OnceLock, TryLockError};

/// Every mapped fiber stack: guard page start -> (usable bottom, top).
/// Written when a stack is mapped or unmapped (recycling a pooled stack does
/// neither), read by the fault handler with a bounded number of `try_lock`s,
/// which never block: if the lock stays held (the faulting thread itself may
/// hold it), the fault is forwarded undiagnosed rather than deadlocking.
static STACKS: Mutex<BTreeMap<usize, (usize, usize)>> = Mutex::new(BTreeMap::new());

pub(crate) fn register_stack(guard: Range<usize>, usable: Range<usize>) {
    debug_assert_eq!(guard.end, usable.start);
    lock_stacks().insert(guard.start, (usable.start, usable.end));
}

pub(crate) fn unregister_stack(guard_start: usize) {
    lock_stacks().remove(&guard_start);
}

fn lock_stacks() -> std::sync::MutexGuard<'static, BTreeMap<usize, (usize, usize)>> {
    // Holders only insert or remove one entry, and neither leaves the map
    // broken (a failed allocation aborts rather than unwinds), so a poisoned
    // lock still guards a usable map.
    STACKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often the handler retries a registry held by another thread (which is
/// mapping or unmapping a stack and releases it within microseconds) before
/// giving up; if the faulting thread itself holds it, retrying cannot help,
/// and the bound keeps the handler from hanging.
const REGISTRY_RETRIES: u32 = 100_000;

/// The usable range of the fiber stack whose guard page contains `address`.
fn stack_guarded_at(address: usize) -> Option<Range<usize>> {
    let mut retries = 0;
    let stacks = loop {
        match STACKS.try_lock() {
            Ok(stacks) => break stacks,
            Err(TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
            Err(TryLockError::WouldBlock) if retries < REGISTRY_RETRIES => {
                retries += 1;
                std::hint::spin_loop();
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    };
    let (&guard_start, &(bottom, top)) = stacks.range(..=address).next_back()?;
    (guard_start..bottom)
        .contains(&address)
        .then_some(bottom..top)
}

thread_local! {
    static THREAD_CHECKED: Cell<bool> = const { Cell::new(false) };
}

/// Makes sure the calling thread can run the fault handler when a fiber
/// stack is exhausted (it needs an alternate signal stack). Called when a
/// fiber is created, not on every switch; the thread-local flag makes every
/// call after a thread's first one a single load.
#[inline]
pub(crate) fn prepare_thread() {
    if !THREAD_CHECKED.get() {
        THREAD_CHECKED.set(true);
        ensure_altstack();
    }
}

/// The handlers that were installed before ours, for SIGSEGV and SIGBUS.
static PREVIOUS: OnceLock<[libc::sigaction; 2]> = OnceLock::new();

/// Installs the SIGSEGV/SIGBUS handler once per process.
pub(crate) fn install_overflow_handler() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: `sigaction` is plain data, so zeroed structs are valid
        // values; passing a null new action only reads the current handler
        // into `previous`. Installing `on_fault` is sound because it only does
        // async-signal-safe work: it `try_lock`s the STACKS registry (an
        // atomic compare-and-swap, retried a bounded number of times, never a
        // blocking wait) and reads it without allocating, reads PREVIOUS, and
        // calls write(2) and abort(3) or the previous handler. A fault that
        // reaches `on_fault` on another thread between the install below and
        // `get_or_init` storing `previous` finds PREVIOUS empty and returns,
        // so the faulting instruction runs again until the value is stored;
        // this thread runs no faulting code in that window.
        unsafe {
            let mut previous: [libc::sigaction; 2] = std::mem::zeroed();
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_fault as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut ours.sa_mask);
            for (i, signal) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
                libc::sigaction(signal, std::ptr::null(), &mut previous[i]);
            }
            for signal in [libc::SIGSEGV, libc::SIGBUS] {
                libc::sigaction(signal, &ours, std::ptr::null_mut());
            }
            previous
        }
    });
}

extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: `on_fault` is installed with SA_SIGINFO only (in
    // `install_overflow_handler`), and for such handlers the kernel passes a
    // valid siginfo.
    let address = unsafe { (*info).si_addr() } as usize;
    if let Some(stack) = stack_guarded_at(address) {
        report_overflow(address, stack);
    }
    let Some(previous) = PREVIOUS.get() else {
        // Not stored yet (see `install_overflow_handler`): returning runs the
        // faulting instruction again, by then with PREVIOUS set.
        return;
    };
    let previous = &previous[usize::from(signal == libc::SIGBUS)];
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: `previous` is the disposition `sigaction` itself reported
        // (stored by `install_overflow_handler`), so handing it back is
        // valid. It replaces ours process-wide for this signal. Returning
        // runs the faulting instruction again, which then gets the default
        // action (the kernel does not let SIG_IGN ignore a hardware fault).
        unsafe { libc::sigaction(signal, previous, std::ptr::null_mut()) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: `handler` is neither SIG_DFL nor SIG_IGN, so it is the
        // address of a function; whoever installed it with SA_SIGINFO gave a
        // function of this signature (sigaction's contract). We forward
        // exactly what the kernel gave us.
        let forward: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        forward(signal, info, context);
    } else {
        // SAFETY: `handler` is the address of a function (neither SIG_DFL nor
        // SIG_IGN); whoever installed it without SA_SIGINFO gave a function
        // taking the signal number only (sigaction's contract).
        let forward: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        forward(signal);
    }
}

fn report_overflow(address: usize, stack: Range<usize>) -> ! {
    let mut message = Message::default();
    message.push(b"fiber stack overflow: fault at ");
    message.push_hex(address);
    message.push(b" in the guard page of the fiber stack ");
    message.push_hex(stack.start);
    message.push(b"-");
    message.push_hex(stack.end);
    message.push(b" (");
    message.push_decimal((stack.end - stack.start) / 1024);
    message.push(b" KiB); aborting\n");
    // SAFETY: write(2) and abort(3) are async-signal-safe; `message` is a
    // local buffer and `len` never exceeds its size (`Message::push` clamps).
    unsafe {
        libc::write(2, message.bytes.as_ptr().cast(), message.len);
        libc::abort();
    }
}

/// A fixed buffer for formatting in a signal handler (no allocation).
struct Message {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Message {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_hex(&mut self, value: usize) {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        for (i, digit) in digits[2..].iter_mut().enumerate() {
            let nibble = (value >> (60 - 4 * i)) & 0xf;
            *digit = b"0123456789abcdef"[nibble];
        }
        self.push(&digits);
    }

    fn push_decimal(&mut self, mut value: usize) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

/// Makes sure this thread has an alternate signal stack, so the handler can
/// run when the fiber's own stack is exhausted. Rust's std gives one to every
/// thread it starts; threads started otherwise get ours, freed at thread exit.
#[cold]
#[inline(never)]
fn ensure_altstack() {
    // SAFETY: stack_t is plain data (zero is a valid value); with a null new
    // stack, sigaltstack only writes the current one into `current`.
    let current = unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut current);
        current
    };
    if current.ss_flags & libc::SS_DISABLE == 0 {
        return;
    }
    OWN_ALTSTACK.with(|own| {
        if let Ok(stack) = crate::stack::Stack::map(ALTSTACK_SIZE) {
            let range = stack.range();
            let wanted = libc::stack_t {
                ss_sp: range.start as *mut libc::c_void,
                ss_flags: 0,
                ss_size: range.end - range.start,
            };
            // SAFETY: `wanted` describes memory we just mapped, and it stays
            // mapped while installed: it moves into OWN_ALTSTACK below (only
            // if the install succeeded), and `AltStack::drop` uninstalls it
            // before its `Stack` field unmaps it.
            if unsafe { libc::sigaltstack(&wanted, std::ptr::null_mut()) } == 0 {
                own.replace(Some(AltStack(stack)));
            }
        }
    });
}

const ALTSTACK_SIZE: usize = 64 * 1024;

struct AltStack(#[allow(dead_code)] crate::stack::Stack);

impl Drop for AltStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: SS_DISABLE with a null old-stack pointer only uninstalls
        // this thread's alternate stack; it runs before the `Stack` field is
        // dropped (fields drop after `drop`), so the memory is never
        // installed while unmapped. This runs at thread exit, outside any
        // signal handler, so the stack is not in use.
        unsafe { libc::sigaltstack(&disable, std::ptr::null_mut()) };
    }
}

thread_local! {
    static OWN_ALTSTACK: std::cell::RefCell<Option<AltStack>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_formats_numbers() {
        let mut m = Message::default();
        m.push_hex(0xdead_beef);
        m.push(b" ");
        m.push_decimal(0);
        m.push(b" ");
        m.push_decimal(1234);
        assert_eq!(&m.bytes[..m.len], b"0x00000000deadbeef 0 1234");
    }
}
