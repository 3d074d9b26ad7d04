//! Context stacks from weft-fiber's [`StackPool`], handed to wasmtime through
//! `Config::with_host_stack`: a context that ends gives its stack back to the pool, and the
//! next context takes it without a system call (wasmtime's own on-demand stacks are mapped
//! and unmapped per fiber, keeping only one cached per store).
//!
//! Each native stack is two kernel mappings (the stack and its guard page), and the kernel
//! caps mappings per process (`vm.max_map_count`). Wasmtime maps a context's stack only at
//! the context's first resume, where a refusal can only be a trap; so live contexts are
//! counted against a [`ContextBudget`] when they are created, where a refusal is `EAGAIN`.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use wasmtime::{StackCreator, StackMemory};
use weft_fiber::{PoolConfig, Stack, StackPool};

/// A budget of live contexts that may need a native stack, shared by every store (of any
/// engine) whose [`ContextConfig`](crate::ContextConfig) names it. Cheap to clone; clones
/// share the count.
///
/// A context holds one unit from `context_create` (or
/// [`HostContexts::spawn`](crate::HostContexts::spawn)) until it terminates, is destroyed, or
/// its store releases everything: the unit is taken at create, before wasmtime maps anything,
/// because a stack the OS refuses at the first resume could only become a trap.
#[derive(Clone)]
pub struct ContextBudget {
    shared: Arc<BudgetShared>,
}

struct BudgetShared {
    limit: usize,
    /// Units only host spawns may take: guest `context_create` stops this much short of
    /// `limit`, so a guest that creates all it can still leaves its host room to start work
    /// (a server's request handlers) in other instances.
    host_reserve: usize,
    reserved: AtomicUsize,
    /// Native stacks [`PooledStacks`] built with this budget have handed out and not taken
    /// back: reservations plus the stacks of running main calls.
    stacks: AtomicUsize,
}

impl ContextBudget {
    /// The fewest units [`default_limit`](Self::default_limit) gives, however low the
    /// kernel's mapping limit.
    pub const MIN_DEFAULT_LIMIT: usize = 1024;

    /// Mappings kept out of the budget for everything else a process maps (linear memories
    /// and their guards, code, libraries, thread stacks, cached context stacks).
    const MAP_HEADROOM: usize = 4096;

    /// A budget of `limit` live contexts.
    pub fn new(limit: usize) -> Self {
        Self::with_host_reserve(limit, 0)
    }

    /// A budget of `limit` of which `host_reserve` (at most `limit`) only
    /// [`HostContexts::spawn`](crate::HostContexts::spawn) may use.
    pub fn with_host_reserve(limit: usize, host_reserve: usize) -> Self {
        ContextBudget {
            shared: Arc::new(BudgetShared {
                limit,
                host_reserve: host_reserve.min(limit),
                reserved: AtomicUsize::new(0),
                stacks: AtomicUsize::new(0),
            }),
        }
    }

    /// The budget every [`ContextConfig`](crate::ContextConfig) shares unless given another:
    /// [`default_limit`](Self::default_limit) contexts for the whole process.
    pub fn process() -> Self {
        static PROCESS: OnceLock<ContextBudget> = OnceLock::new();
        PROCESS
            .get_or_init(|| ContextBudget::new(Self::default_limit()))
            .clone()
    }

    /// Half of the stacks the kernel's mapping limit leaves room for:
    /// `(vm.max_map_count - 4096) / 2 / 2` (two mappings per stack, and as much again left
    /// for everything else), at least [`MIN_DEFAULT_LIMIT`](Self::MIN_DEFAULT_LIMIT). Where
    /// the limit cannot be read, Linux's default of 65,530 is assumed.
    pub fn default_limit() -> usize {
        static LIMIT: OnceLock<usize> = OnceLock::new();
        *LIMIT.get_or_init(|| {
            let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .unwrap_or(65_530);
            Self::limit_for_map_count(max_map_count)
        })
    }

    fn limit_for_map_count(max_map_count: usize) -> usize {
        (max_map_count.saturating_sub(Self::MAP_HEADROOM) / 4).max(Self::MIN_DEFAULT_LIMIT)
    }

    /// Live contexts allowed.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Units only host spawns may use.
    pub fn host_reserve(&self) -> usize {
        self.shared.host_reserve
    }

    /// Live contexts holding a unit now.
    pub fn reserved(&self) -> usize {
        self.shared.reserved.load(Ordering::Relaxed)
    }

    /// Native stacks handed to wasmtime by [`PooledStacks`] counting into this budget and
    /// not yet given back (contexts that have run, plus running main calls).
    pub fn stacks_in_use(&self) -> usize {
        self.shared.stacks.load(Ordering::Relaxed)
    }

    /// One unit, or `None` when taking it would exceed the limit (for guest creates, the
    /// limit less the host reserve).
    pub(crate) fn reserve(&self, for_host: bool) -> Option<Reservation> {
        let shared = &self.shared;
        let ceiling = if for_host {
            shared.limit
        } else {
            shared.limit - shared.host_reserve
        };
        shared
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < ceiling).then_some(n + 1)
            })
            .ok()?;
        Some(Reservation {
            shared: shared.clone(),
        })
    }
}

impl Default for ContextBudget {
    fn default() -> Self {
        ContextBudget::process()
    }
}

impl std::fmt::Debug for ContextBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextBudget")
            .field("limit", &self.limit())
            .field("host_reserve", &self.host_reserve())
            .field("reserved", &self.reserved())
            .field("stacks_in_use", &self.stacks_in_use())
            .finish()
    }
}

/// One live context's unit of a [`ContextBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    shared: Arc<BudgetShared>,
}

impl std::fmt::Debug for BudgetShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetShared")
            .field("limit", &self.limit)
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.reserved.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A wasmtime [`StackCreator`] backed by a [`StackPool`] of one stack size.
pub struct PooledStacks {
    pool: StackPool,
    budget: ContextBudget,
}

impl PooledStacks {
    /// A pool of stacks of `stack_size` usable bytes, caching at most `max_cached` idle ones,
    /// counting the stacks it hands out into [`ContextBudget::process`].
    pub fn new(stack_size: usize, max_cached: usize) -> Arc<Self> {
        Self::with_budget(stack_size, max_cached, ContextBudget::process())
    }

    /// As [`new`](Self::new), counting the stacks it hands out into `budget`
    /// ([`ContextBudget::stacks_in_use`]).
    pub fn with_budget(stack_size: usize, max_cached: usize, budget: ContextBudget) -> Arc<Self> {
        Arc::new(PooledStacks {
            pool: StackPool::new(PoolConfig {
                stack_size,
                max_cached,
                ..PoolConfig::default()
            }),
            budget,
        })
    }

    /// Idle stacks kept for reuse.
    pub fn cached(&self) -> usize {
        self.pool.cached()
    }
}

struct PooledStack {
    stack: Stack,
    budget: Arc<BudgetShared>,
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        self.budget.stacks.fetch_sub(1, Ordering::Relaxed);
    }
}

// SAFETY: `new_stack` returns stacks of at least `size` usable bytes (the pool's size is
// checked against the request, and a fresh stack is mapped otherwise), each with a guard
// page below, page aligned. Recycled pool stacks are not zeroed, so when wasmtime asks for
// zeroed memory a fresh (zero-filled) mapping is returned instead.
unsafe impl StackCreator for PooledStacks {
    fn new_stack(&self, size: usize, zeroed: bool) -> wasmtime::Result<Box<dyn StackMemory>> {
        // The OS may still refuse (other mappings of the process count against its limit
        // too): that is an error for wasmtime to turn into a trap, never a panic.
        let stack = if zeroed || size > self.pool.config().stack_size {
            Stack::new(size)
        } else {
            self.pool.take()
        }
        .map_err(|error| {
            wasmtime::format_err!("cannot map a native stack for a WASIX context: {error}")
        })?;
        self.budget.shared.stacks.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(PooledStack {
            stack,
            budget: self.budget.shared.clone(),
        }))
    }
}

// SAFETY: the three ranges describe one live mapping owned by `self.stack`, which stays
// mapped (in use by wasmtime's fiber, or cached in the pool) until `self` is dropped; `top`
// is the end of the usable range, which is page aligned.
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        self.stack.range().end as *mut u8
    }

    fn range(&self) -> Range<usize> {
        self.stack.range()
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let guard = self.stack.guard();
        guard.start as *mut u8..guard.end as *mut u8
    }
}

#[cfg(test)]
mod tests {
    use super::ContextBudget;

    #[test]
    fn default_limit_leaves_headroom_and_has_a_floor() {
        assert_eq!(ContextBudget::limit_for_map_count(65_530), 15_358);
        assert_eq!(
            ContextBudget::limit_for_map_count(100),
            ContextBudget::MIN_DEFAULT_LIMIT
        );
        assert!(ContextBudget::default_limit() >= ContextBudget::MIN_DEFAULT_LIMIT);
    }

    #[test]
    fn host_reserve_is_kept_from_guests() {
        let budget = ContextBudget::with_host_reserve(3, 1);
        let a = budget.reserve(false).unwrap();
        let b = budget.reserve(false).unwrap();
        assert!(budget.reserve(false).is_none());
        let c = budget.reserve(true).unwrap();
        assert!(budget.reserve(true).is_none());
        assert_eq!(budget.reserved(), 3);
        drop((a, b, c));
        assert_eq!(budget.reserved(), 0);
    }
}
