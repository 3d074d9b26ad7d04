//! Fiber stacks: mmap'd, lazily committed, with a `PROT_NONE` guard page
//! below, and a pool that recycles them.

use std::cell::Cell;
use std::io;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::signal;

/// A fiber stack: one anonymous mapping whose lowest page is a `PROT_NONE`
/// guard. Pages are committed by the kernel only when first touched, so a
/// large stack costs address space, not memory.
///
/// A stack taken from a [`StackPool`] goes back to that pool when dropped.
pub struct Stack {
    /// Start of the mapping (the guard page). Non-null, so that an
    /// `io::Result<Stack>` or `Option<Stack>` is no larger than a Stack.
    base: NonNull<u8>,
    /// Length of the mapping, guard included.
    len: usize,
    pool: Option<Arc<PoolShared>>,
}

// SAFETY: a Stack exclusively owns its mapping; nothing in it is tied to the
// thread that created it, and `&Stack` gives no access to the memory.
unsafe impl Send for Stack {}
// SAFETY: as above; all `&self` methods only read the two addresses.
unsafe impl Sync for Stack {}

impl Stack {
    /// The usable size of [`Stack::new`]'s default stacks (`Fiber::new`).
    pub const DEFAULT_SIZE: usize = 256 * 1024;
    /// The smallest usable size accepted; smaller requests are rounded up.
    pub const MIN_SIZE: usize = 16 * 1024;

    /// Maps a stack with at least `size` usable bytes (rounded up to whole
    /// pages and to [`Stack::MIN_SIZE`]) above a guard page.
    pub fn new(size: usize) -> io::Result<Stack> {
        signal::install_overflow_handler();
        let stack = Self::map(size)?;
        signal::register_stack(stack.guard(), stack.range());
        Ok(stack)
    }

    /// Maps a guarded stack that the overflow handler does not know about
    /// (the handler's own alternate signal stack).
    pub(crate) fn map(size: usize) -> io::Result<Stack> {
        let page = page_size();
        let len = size
            .max(Self::MIN_SIZE)
            .checked_next_multiple_of(page)
            .and_then(|usable| usable.checked_add(page))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "stack size overflows"))?;
        // SAFETY: an anonymous private mapping at an address the kernel picks
        // aliases nothing; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // mmap never returns null for a request without MAP_FIXED (null is
        // not a valid mapping address for it), but the check costs nothing.
        let Some(base) = NonNull::new(base.cast::<u8>()) else {
            return Err(io::Error::other("mmap returned null"));
        };
        let stack = Stack {
            base,
            len,
            pool: None,
        };
        // SAFETY: the first page lies inside the mapping made above, which
        // nothing else references yet.
        if unsafe { libc::mprotect(base.as_ptr().cast(), page, libc::PROT_NONE) } != 0 {
            // Splitting off the guard needs a second mapping, which the kernel
            // refuses at its mapping limit (ENOMEM); dropping `stack` unmaps
            // the first one.
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Usable bytes (the guard page excluded).
    #[inline]
    pub fn size(&self) -> usize {
        self.len - page_size()
    }

    /// The usable memory `[bottom, top)`; the guard page lies just below.
    pub fn range(&self) -> Range<usize> {
        let base = self.base.as_ptr() as usize;
        (base + page_size())..base + self.len
    }

    /// The guard page `[start, end)`.
    pub fn guard(&self) -> Range<usize> {
        let base = self.base.as_ptr() as usize;
        base..base + page_size()
    }

    /// The highest address of the stack (exclusive), 16-byte aligned.
    #[inline]
    pub(crate) fn top(&self) -> *mut u8 {
        // SAFETY: `base` and `len` describe one mapping (set by `Stack::map`,
        // never changed), so `base + len` is its one-past-the-end address,
        // which `add` may compute.
        unsafe { self.base.as_ptr().add(self.len) }
    }
}

impl Stack {
    /// What dropping does, for `Fiber::drop`, where drop glue for a type of
    /// another crate might not be inlined.
    ///
    /// # Safety
    /// Leaves the Stack owning nothing: it must not be used or dropped
    /// afterwards.
    #[inline]
    pub(crate) unsafe fn release(&mut self) {
        match self.pool.take() {
            Some(pool) => recycle(self.base, pool),
            None => unmap(self.base.as_ptr(), self.len),
        }
    }
}

impl Drop for Stack {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: nothing uses `self` after `drop`.
        unsafe { self.release() }
    }
}

/// Gives a pooled stack back: to this thread's spare slot when it is free
/// (no atomic operation, no shared cache line), else to its pool's cache.
#[inline(always)]
fn recycle(base: NonNull<u8>, pool: Arc<PoolShared>) {
    let pool = Arc::into_raw(pool);
    if !SPARE.with(|spare| spare.keep(base, pool)) {
        recycle_slow(base, pool);
    }
}

/// `recycle` when the spare slot is full, not armed yet, or closed.
#[inline(never)]
fn recycle_slow(base: NonNull<u8>, pool: *const PoolShared) {
    let kept = SPARE.with(|spare| {
        if spare.pool.get() == UNARMED && SPARE_AT_EXIT.try_with(|_| ()).is_ok() {
            spare.pool.set(ptr::null());
        }
        spare.keep(base, pool)
    });
    if !kept {
        // SAFETY: `pool` came from Arc::into_raw in `recycle` and was not
        // kept.
        let pool = unsafe { Arc::from_raw(pool) };
        pool.give_back(base);
    }
}

/// This thread's spare: the last pooled stack freed on it (if the slot was
/// free), owned together with one count of its pool's `Arc`. The next `take`
/// from that pool on this thread reuses it without touching the shared
/// cache. Plain cells in a thread-local without a destructor, so the hot
/// paths are a few loads and stores at a fixed offset of the thread pointer
/// (a thread-local with a destructor checks its state on every access); the
/// destructor that hands the spare back at thread exit lives in
/// `SPARE_AT_EXIT`, registered when the slot is first used ("armed").
struct Spare {
    /// The slot's state: null when empty and armed; [`UNARMED`] before the
    /// slot's first use on this thread; [`CLOSED`] once the thread is
    /// exiting; else the `Arc::into_raw` of the spare's pool.
    pool: Cell<*const PoolShared>,
    /// The spare stack's mapping; its length is its pool's `stack_len`.
    base: Cell<NonNull<u8>>,
    /// Stacks this thread gave back to its spare slot since the last trim
    /// window it ended: the pools' clock for stacks that never reach their
    /// shared cache.
    returns: Cell<usize>,
}

/// [`Spare::pool`] before `SPARE_AT_EXIT` is registered on this thread.
const UNARMED: *const PoolShared = ptr::without_provenance(1);
/// [`Spare::pool`] from `SPARE_AT_EXIT`'s destructor on: the slot is gone.
const CLOSED: *const PoolShared = ptr::without_provenance(2);

impl Spare {
    /// Keeps the stack at `base` of the pool `pool` (an `Arc::into_raw`
    /// count, which moves here) if the slot is empty and armed.
    #[inline(always)]
    fn keep(&self, base: NonNull<u8>, pool: *const PoolShared) -> bool {
        if !self.pool.get().is_null() {
            return false;
        }
        self.base.set(base);
        self.pool.set(pool);
        let returns = self.returns.get() + 1;
        self.returns.set(returns);
        if returns >= TRIM_WINDOW {
            self.returns.set(0);
            // SAFETY: the pool's count now belongs to the spare, which
            // outlives this call, so the pool is alive.
            unsafe { (*pool).end_window() };
        }
        true
    }

    /// Takes the spare if it belongs to `pool`: its base and its count of
    /// the pool's Arc.
    #[inline(always)]
    fn take_if_of(&self, pool: &Arc<PoolShared>) -> Option<(NonNull<u8>, Arc<PoolShared>)> {
        let own = self.pool.get();
        // The states UNARMED and CLOSED are no Arc's address.
        if own != Arc::as_ptr(pool) {
            return None;
        }
        self.pool.set(ptr::null());
        // SAFETY: a `pool` cell holding an Arc's address owns a count of it,
        // taken by `Arc::into_raw` (in `recycle`); clearing the cell above
        // moved it here.
        Some((self.base.get(), unsafe { Arc::from_raw(own) }))
    }
}

/// Hands this thread's spare back to its pool's shared cache at thread exit
/// and closes the slot.
struct SpareAtExit;

impl Drop for SpareAtExit {
    fn drop(&mut self) {
        // A no-destructor thread-local stays usable while destructors run.
        let own = SPARE.with(|spare| spare.pool.replace(CLOSED));
        if own != UNARMED && !own.is_null() {
            // SAFETY: as in `take_if_of`: the cell owned this count.
            let pool = unsafe { Arc::from_raw(own) };
            pool.give_back(SPARE.with(|spare| spare.base.get()));
        }
    }
}

thread_local! {
    static SPARE: Spare = const {
        Spare {
            pool: Cell::new(UNARMED),
            base: Cell::new(NonNull::dangling()),
            returns: Cell::new(0),
        }
    };
    static SPARE_AT_EXIT: SpareAtExit = const { SpareAtExit };
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let range = self.range();
        f.debug_struct("Stack")
            .field("bottom", &format_args!("{:#x}", range.start))
            .field("top", &format_args!("{:#x}", range.end))
            .field("pooled", &self.pool.is_some())
            .finish()
    }
}

fn unmap(base: *mut u8, len: usize) {
    signal::unregister_stack(base as usize);
    // SAFETY: (base, len) is a whole mapping made by `Stack::map`, owned by
    // exactly one Stack or cached RawStack, whose owner is dropping it now;
    // a fiber keeps its Stack until it can no longer run, so nothing refers
    // to the memory any more.
    let rc = unsafe { libc::munmap(base.cast(), len) };
    debug_assert_eq!(rc, 0, "munmap of a fiber stack failed");
}

pub(crate) fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}

/// A cached stack: the mapping without its owner (its length is the
/// pool's `stack_len`).
struct RawStack {
    base: NonNull<u8>,
}

// SAFETY: see `impl Send for Stack`; a RawStack is a Stack at rest in a pool.
unsafe impl Send for RawStack {}
// SAFETY: as for Stack: `&RawStack` gives no access to the memory.
unsafe impl Sync for RawStack {}

/// How a [`StackPool`] sizes its stacks and its cache.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Usable size of every stack of the pool.
    pub stack_size: usize,
    /// Most stacks kept for reuse; stacks returned beyond it are unmapped.
    pub max_cached: usize,
    /// Self-trim: a cached stack that stayed unused for at least this long
    /// (and through a whole [`TRIM_WINDOW`] of returns) may be unmapped.
    /// `None` turns self-trimming off ([`StackPool::trim`] still works).
    pub trim_after: Option<Duration>,
}

impl PoolConfig {
    /// The default self-trim delay.
    pub const DEFAULT_TRIM_AFTER: Duration = Duration::from_secs(1);
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            stack_size: Stack::DEFAULT_SIZE,
            max_cached: 1024,
            trim_after: Some(Self::DEFAULT_TRIM_AFTER),
        }
    }
}

/// Recycles stacks of one size so that creating a fiber costs no system
/// call and no lock. Cheap to clone; clones share the cache.
///
/// Each thread keeps the last pooled stack it freed as a spare that its next
/// `take` from the same pool reuses (fibers that start and finish on one
/// thread cycle through it): a thread-local slot, so that round trip costs
/// a few loads and stores, with no atomic operation, no lock and no shared
/// cache line. A stack freed on another thread than the one that took it
/// simply becomes that thread's spare (or goes to the shared cache). Behind
/// the spares, the cache is a lock-free bounded queue of
/// [`PoolConfig::max_cached`] stacks; a stack returned to a full cache is
/// unmapped, and a thread's spare goes to the cache when the thread exits.
/// The cache also trims itself: every [`TRIM_WINDOW`] returns, half of the
/// stacks that sat unused through the whole window are unmapped, so a burst
/// leaves no lasting cost. A recycled stack keeps the pages its last fiber
/// touched (no `madvise` on the hot path); trimming is what gives memory
/// back.
#[derive(Clone)]
pub struct StackPool {
    shared: Arc<PoolShared>,
}

/// Stack returns between two self-trim checks of a [`StackPool`]: counted per
/// pool for returns to its shared cache, and per thread for returns to that
/// thread's spare slot (so the hot path touches no shared counter).
pub const TRIM_WINDOW: usize = 4096;

struct PoolShared {
    config: PoolConfig,
    /// Length of each stack's mapping, guard page included.
    stack_len: usize,
    cache: ArrayQueue<RawStack>,
    /// Fewest cached stacks seen by `take` since the window began: that
    /// many were never needed during the window. Updated with plain loads
    /// and stores: under races the trim is approximate, never unsafe.
    low_water: AtomicUsize,
    returns_in_window: AtomicUsize,
    /// When the pool was made: the clock of `window_start_nanos`.
    created: Instant,
    window_start_nanos: AtomicU64,
}

impl StackPool {
    /// A pool; `max_cached` is raised to at least 1.
    pub fn new(config: PoolConfig) -> StackPool {
        // Saturating: an absurd size must fail at `take` as an error, not
        // overflow here.
        let page = page_size();
        let stack_size = config
            .stack_size
            .max(Stack::MIN_SIZE)
            .checked_next_multiple_of(page)
            .unwrap_or(usize::MAX - (page - 1));
        let max_cached = config.max_cached.max(1);
        StackPool {
            shared: Arc::new(PoolShared {
                config: PoolConfig {
                    stack_size,
                    max_cached,
                    ..config
                },
                stack_len: stack_size.saturating_add(page),
                cache: ArrayQueue::new(max_cached),
                low_water: AtomicUsize::new(0),
                returns_in_window: AtomicUsize::new(0),
                created: Instant::now(),
                window_start_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration in effect: as given to [`StackPool::new`], with `stack_size`
    /// rounded up to whole pages (and at least [`Stack::MIN_SIZE`]) and `max_cached` at
    /// least 1.
    pub fn config(&self) -> PoolConfig {
        self.shared.config
    }

    /// A cached stack, or a freshly mapped one when the cache is empty.
    /// The stack returns to this pool when dropped.
    #[inline]
    pub fn take(&self) -> io::Result<Stack> {
        // Both ways end in scalars, so an inlined `take` builds the Stack in
        // registers.
        let (base, pool) = match SPARE.with(|spare| spare.take_if_of(&self.shared)) {
            Some(spare) => spare,
            None => (self.take_shared()?, self.shared.clone()),
        };
        Ok(Stack {
            base,
            len: self.shared.stack_len,
            pool: Some(pool),
        })
    }

    /// The base of a stack from the shared cache, or of a new one.
    #[inline(never)]
    fn take_shared(&self) -> io::Result<NonNull<u8>> {
        let shared = &self.shared;
        match shared.cache.pop() {
            Some(raw) => {
                let left = shared.cache.len();
                if left < shared.low_water.load(Ordering::Relaxed) {
                    shared.low_water.store(left, Ordering::Relaxed);
                }
                Ok(raw.base)
            }
            None => {
                shared.low_water.store(0, Ordering::Relaxed);
                let fresh = ManuallyDrop::new(Stack::new(shared.config.stack_size)?);
                debug_assert_eq!(fresh.len, shared.stack_len);
                Ok(fresh.base)
            }
        }
    }

    /// Unmaps every cached stack (the calling thread's spare included).
    pub fn trim(&self) {
        if let Some((base, _pool)) = SPARE.with(|spare| spare.take_if_of(&self.shared)) {
            unmap(base.as_ptr(), self.shared.stack_len);
        }
        while let Some(raw) = self.shared.cache.pop() {
            unmap(raw.base.as_ptr(), self.shared.stack_len);
        }
        self.shared.low_water.store(0, Ordering::Relaxed);
    }

    /// How many stacks are cached right now: in the shared cache, plus the
    /// calling thread's spare if it belongs to this pool. (Other threads'
    /// spares, at most one each, are not visible from here.)
    pub fn cached(&self) -> usize {
        let spare = SPARE
            .try_with(|spare| usize::from(spare.pool.get() == Arc::as_ptr(&self.shared)))
            .unwrap_or(0);
        self.shared.cache.len() + spare
    }
}

impl PoolShared {
    /// Caches a stack of this pool, or unmaps it when the cache is full.
    /// Every [`TRIM_WINDOW`] stacks given back here end a trim window.
    #[inline(never)]
    fn give_back(&self, base: NonNull<u8>) {
        if let Err(raw) = self.cache.push(RawStack { base }) {
            unmap(raw.base.as_ptr(), self.stack_len);
        }
        if self.config.trim_after.is_none() {
            return;
        }
        let returns = self.returns_in_window.load(Ordering::Relaxed) + 1;
        if returns < TRIM_WINDOW {
            self.returns_in_window.store(returns, Ordering::Relaxed);
            return;
        }
        self.returns_in_window.store(0, Ordering::Relaxed);
        self.end_window();
    }

    /// Ends a trim window (called every [`TRIM_WINDOW`] stacks given back,
    /// counted per pool for its shared cache and per thread for the spare
    /// slots): if `trim_after` has passed since the window began, unmaps
    /// half of the cached stacks that stayed idle all along. The clock is
    /// read only here, off the hot path.
    #[cold]
    #[inline(never)]
    fn end_window(&self) {
        let Some(trim_after) = self.config.trim_after else {
            return;
        };
        let now = self.created.elapsed().as_nanos() as u64;
        let window_start = self.window_start_nanos.load(Ordering::Relaxed);
        if now.saturating_sub(window_start) < trim_after.as_nanos() as u64 {
            // Too soon: the window (and its low-water mark) goes on.
            return;
        }
        self.window_start_nanos.store(now, Ordering::Relaxed);
        let idle = self.low_water.load(Ordering::Relaxed).min(self.cache.len());
        for _ in 0..idle / 2 {
            match self.cache.pop() {
                Some(raw) => unmap(raw.base.as_ptr(), self.stack_len),
                None => break,
            }
        }
        self.low_water.store(self.cache.len(), Ordering::Relaxed);
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        while let Some(raw) = self.cache.pop() {
            unmap(raw.base.as_ptr(), self.stack_len);
        }
    }
}

impl std::fmt::Debug for StackPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackPool")
            .field("config", &self.shared.config)
            .field("cached", &self.cached())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_pages_and_minimum() {
        let stack = Stack::new(1).unwrap();
        assert_eq!(stack.size(), Stack::MIN_SIZE);
        let stack = Stack::new(Stack::MIN_SIZE + 1).unwrap();
        assert_eq!(stack.size(), Stack::MIN_SIZE + page_size());
        assert_eq!(stack.range().end - stack.range().start, stack.size());
        assert_eq!(stack.guard().end, stack.range().start);
        assert_eq!(stack.top() as usize % 16, 0);
    }

    #[test]
    fn absurd_size_is_an_error_not_a_crash() {
        assert!(Stack::new(usize::MAX - 10).is_err());
        assert!(Stack::new(1 << 60).is_err());
        let page = page_size();
        assert!(Stack::new(usize::MAX - (page - 1)).is_err());
        let pool = StackPool::new(PoolConfig {
            stack_size: usize::MAX,
            ..PoolConfig::default()
        });
        assert!(pool.take().is_err());
    }

    #[test]
    fn pool_recycles_and_bounds_its_cache() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 64 * 1024,
            max_cached: 2,
            ..PoolConfig::default()
        });
        let a = pool.take().unwrap();
        let a_range = a.range();
        drop(a);
        assert_eq!(pool.cached(), 1);
        let b = pool.take().unwrap();
        assert_eq!(b.range(), a_range, "the cached stack is reused");
        let c = pool.take().unwrap();
        let d = pool.take().unwrap();
        drop((b, c, d));
        assert_eq!(
            pool.cached(),
            3,
            "this thread's spare plus max_cached; the fourth stack was unmapped"
        );
        pool.trim();
        assert_eq!(pool.cached(), 0);
    }

    /// Regression: a thread exiting with a spare stack used to recurse in
    /// Stack::drop until it overflowed, and a stack refused by a full spare
    /// slot was both cached and unmapped.
    #[test]
    fn stacks_freed_by_exiting_threads_return_to_the_pool_intact() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 16 * 1024,
            max_cached: 8,
            ..PoolConfig::default()
        });
        let worker_pool = pool.clone();
        std::thread::spawn(move || {
            let spare = worker_pool.take().unwrap();
            let refused = worker_pool.take().unwrap();
            drop(spare); // becomes this thread's spare
            drop(refused); // slot taken: goes to the shared cache
            // Thread exit drops the spare: it must reach the shared cache too.
        })
        .join()
        .unwrap();
        assert_eq!(pool.cached(), 2);
        for _ in 0..2 {
            let stack = pool.take().unwrap();
            let range = stack.range();
            // SAFETY: the stack is ours and mapped read-write; touching its
            // lowest and highest usable bytes proves the mapping is alive.
            unsafe {
                std::ptr::write_volatile(range.start as *mut u8, 1);
                std::ptr::write_volatile((range.end - 1) as *mut u8, 1);
            }
            std::mem::forget(stack);
        }
    }

    fn burst_then_steady_use(pool: &StackPool) {
        let burst: Vec<Stack> = (0..64).map(|_| pool.take().unwrap()).collect();
        drop(burst);
        assert_eq!(pool.cached(), 64);
        // Steady use of one stack at a time: 63 cached stacks stay idle.
        for _ in 0..(8 * TRIM_WINDOW) {
            drop(pool.take().unwrap());
        }
    }

    #[test]
    fn pool_trims_stacks_idle_for_a_whole_window() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 16 * 1024,
            max_cached: 64,
            trim_after: Some(Duration::ZERO),
        });
        burst_then_steady_use(&pool);
        assert!(
            pool.cached() < 16,
            "idle stacks were not trimmed: {}",
            pool.cached()
        );
        assert!(pool.cached() >= 1, "the stack in use stays cached");
    }

    /// Regression (found by weft-sched's 10k-sleepers bench): windows used to
    /// be counted in returns only, so a burst of returns trimmed stacks that
    /// had been idle for microseconds, and the next burst mapped them again.
    #[test]
    fn a_burst_is_kept_until_trim_after_has_passed() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 16 * 1024,
            max_cached: 64,
            trim_after: Some(Duration::from_secs(3600)),
        });
        burst_then_steady_use(&pool);
        assert_eq!(pool.cached(), 64);
    }

    #[test]
    fn self_trim_can_be_turned_off() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 16 * 1024,
            max_cached: 64,
            trim_after: None,
        });
        burst_then_steady_use(&pool);
        assert_eq!(pool.cached(), 64);
        pool.trim();
        assert_eq!(pool.cached(), 0);
    }
}
