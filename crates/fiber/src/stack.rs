//! Fiber stacks: mmap'd, lazily committed, with a `PROT_NONE` guard page
//! below, and a pool that recycles them.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::signal;

/// A fiber stack: one anonymous mapping whose lowest page is a `PROT_NONE`
/// guard. Pages are committed by the kernel only when first touched, so a
/// large stack costs address space, not memory.
///
/// A stack taken from a [`StackPool`] goes back to that pool when dropped.
pub struct Stack {
    /// Start of the mapping (the guard page).
    base: *mut u8,
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
        let page = page_size();
        let usable = size
            .max(Self::MIN_SIZE)
            .checked_next_multiple_of(page)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "stack size overflows"))?;
        let len = usable + page;
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
        let stack = Stack {
            base: base.cast(),
            len,
            pool: None,
        };
        // SAFETY: the first page lies inside the mapping made above, which
        // nothing else references yet.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Usable bytes (the guard page excluded).
    pub fn size(&self) -> usize {
        self.len - page_size()
    }

    /// The usable memory `[bottom, top)`; the guard page lies just below.
    pub fn range(&self) -> Range<usize> {
        let top = self.base as usize + self.len;
        (self.base as usize + page_size())..top
    }

    /// The guard page `[start, end)`.
    pub fn guard(&self) -> Range<usize> {
        self.base as usize..self.base as usize + page_size()
    }

    /// The highest address of the stack (exclusive), 16-byte aligned.
    pub(crate) fn top(&self) -> *mut u8 {
        // SAFETY: base + len is one past the end of the mapping.
        unsafe { self.base.add(self.len) }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(RawStack {
                base: self.base,
                len: self.len,
            });
        } else {
            unmap(self.base, self.len);
        }
    }
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
    // SAFETY: (base, len) is a whole mapping made by Stack::new that no live
    // Stack or fiber refers to any more (its owner is being dropped).
    let rc = unsafe { libc::munmap(base.cast(), len) };
    debug_assert_eq!(rc, 0, "munmap of a fiber stack failed");
}

pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A cached stack: the mapping without its owner.
struct RawStack {
    base: *mut u8,
    len: usize,
}

// SAFETY: see `impl Send for Stack`; a RawStack is a Stack at rest in a pool.
unsafe impl Send for RawStack {}

/// How a [`StackPool`] sizes its stacks and its cache.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Usable size of every stack of the pool.
    pub stack_size: usize,
    /// Most stacks kept for reuse; stacks returned beyond it are unmapped.
    pub max_cached: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            stack_size: Stack::DEFAULT_SIZE,
            max_cached: 1024,
        }
    }
}

/// Recycles stacks of one size so that creating a fiber costs no system
/// call. Cheap to clone; clones share the cache.
///
/// The cache is bounded by [`PoolConfig::max_cached`] and trims itself: every
/// [`TRIM_WINDOW`] takes and returns, half of the stacks that stayed idle
/// during the whole window are unmapped, so a burst leaves no lasting cost.
/// A recycled stack keeps the pages its last fiber touched (no `madvise` on
/// the hot path); trimming is what gives memory back.
#[derive(Clone)]
pub struct StackPool {
    shared: Arc<PoolShared>,
}

/// Takes and returns between two self-trims of a [`StackPool`].
pub const TRIM_WINDOW: u32 = 4096;

struct PoolShared {
    config: PoolConfig,
    cache: Mutex<Cache>,
}

struct Cache {
    stacks: Vec<RawStack>,
    /// Fewest cached stacks seen since the window began: that many were
    /// never needed during the window.
    low_water: usize,
    ops_in_window: u32,
}

impl StackPool {
    pub fn new(config: PoolConfig) -> StackPool {
        let stack_size = config
            .stack_size
            .max(Stack::MIN_SIZE)
            .next_multiple_of(page_size());
        StackPool {
            shared: Arc::new(PoolShared {
                config: PoolConfig {
                    stack_size,
                    ..config
                },
                cache: Mutex::new(Cache {
                    stacks: Vec::new(),
                    low_water: 0,
                    ops_in_window: 0,
                }),
            }),
        }
    }

    pub fn config(&self) -> PoolConfig {
        self.shared.config
    }

    /// A cached stack, or a freshly mapped one when the cache is empty.
    /// The stack returns to this pool when dropped.
    pub fn take(&self) -> io::Result<Stack> {
        let cached = {
            let mut cache = self.shared.lock();
            let stack = cache.stacks.pop();
            cache.low_water = cache.low_water.min(cache.stacks.len());
            let surplus = cache.tick();
            drop(cache);
            release(surplus);
            stack
        };
        let raw = match cached {
            Some(raw) => raw,
            None => {
                let mut fresh = Stack::new(self.shared.config.stack_size)?;
                let raw = RawStack {
                    base: fresh.base,
                    len: fresh.len,
                };
                // The mapping now belongs to `raw`; make `fresh` forget it.
                fresh.len = 0;
                std::mem::forget(fresh);
                raw
            }
        };
        Ok(Stack {
            base: raw.base,
            len: raw.len,
            pool: Some(self.shared.clone()),
        })
    }

    /// Unmaps every cached stack.
    pub fn trim(&self) {
        let stacks = std::mem::take(&mut self.shared.lock().stacks);
        self.shared.lock().low_water = 0;
        release(stacks);
    }

    /// How many stacks are cached right now.
    pub fn cached(&self) -> usize {
        self.shared.lock().stacks.len()
    }
}

impl PoolShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, raw: RawStack) {
        let mut cache = self.lock();
        let mut surplus = cache.tick();
        if cache.stacks.len() < self.config.max_cached {
            cache.stacks.push(raw);
        } else {
            surplus.push(raw);
        }
        drop(cache);
        release(surplus);
    }
}

impl Cache {
    /// Counts one pool operation; at the end of a window returns the stacks
    /// to unmap (half of those idle for the whole window).
    fn tick(&mut self) -> Vec<RawStack> {
        self.ops_in_window += 1;
        if self.ops_in_window < TRIM_WINDOW {
            return Vec::new();
        }
        self.ops_in_window = 0;
        let idle = self.low_water.min(self.stacks.len());
        let surplus = self.stacks.split_off(self.stacks.len() - idle / 2);
        self.low_water = self.stacks.len();
        surplus
    }
}

fn release(stacks: Vec<RawStack>) {
    for raw in stacks {
        unmap(raw.base, raw.len);
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        release(std::mem::take(&mut self.lock().stacks));
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
    }

    #[test]
    fn pool_recycles_and_bounds_its_cache() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 64 * 1024,
            max_cached: 2,
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
        assert_eq!(pool.cached(), 2, "beyond max_cached stacks are unmapped");
        pool.trim();
        assert_eq!(pool.cached(), 0);
    }

    #[test]
    fn pool_trims_stacks_idle_for_a_whole_window() {
        let pool = StackPool::new(PoolConfig {
            stack_size: 16 * 1024,
            max_cached: 64,
        });
        let burst: Vec<Stack> = (0..64).map(|_| pool.take().unwrap()).collect();
        drop(burst);
        assert_eq!(pool.cached(), 64);
        // Steady use of one stack at a time: 63 cached stacks stay idle.
        for _ in 0..(4 * TRIM_WINDOW) {
            drop(pool.take().unwrap());
        }
        assert!(
            pool.cached() < 16,
            "idle stacks were not trimmed: {}",
            pool.cached()
        );
        assert!(pool.cached() >= 1, "the stack in use stays cached");
    }
}
