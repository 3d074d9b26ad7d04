//! Context stacks from weft-fiber's [`StackPool`], handed to wasmtime through
//! `Config::with_host_stack`: a context that ends gives its stack back to the pool, and the
//! next context takes it without a system call (wasmtime's own on-demand stacks are mapped
//! and unmapped per fiber, keeping only one cached per store).

use std::ops::Range;
use std::sync::Arc;

use wasmtime::{StackCreator, StackMemory};
use weft_fiber::{PoolConfig, Stack, StackPool};

/// A wasmtime [`StackCreator`] backed by a [`StackPool`] of one stack size.
pub struct PooledStacks {
    pool: StackPool,
}

impl PooledStacks {
    /// A pool of stacks of `stack_size` usable bytes, caching at most `max_cached` idle ones.
    pub fn new(stack_size: usize, max_cached: usize) -> Arc<Self> {
        Arc::new(PooledStacks {
            pool: StackPool::new(PoolConfig {
                stack_size,
                max_cached,
                ..PoolConfig::default()
            }),
        })
    }

    /// Idle stacks kept for reuse.
    pub fn cached(&self) -> usize {
        self.pool.cached()
    }
}

struct PooledStack(Stack);

// SAFETY: `new_stack` returns stacks of at least `size` usable bytes (the pool's size is
// checked against the request, and a fresh stack is mapped otherwise), each with a guard
// page below, page aligned. Recycled pool stacks are not zeroed, so when wasmtime asks for
// zeroed memory a fresh (zero-filled) mapping is returned instead.
unsafe impl StackCreator for PooledStacks {
    fn new_stack(&self, size: usize, zeroed: bool) -> wasmtime::Result<Box<dyn StackMemory>> {
        let stack = if zeroed || size > self.pool.config().stack_size {
            Stack::new(size)?
        } else {
            self.pool.take()?
        };
        Ok(Box::new(PooledStack(stack)))
    }
}

// SAFETY: the three ranges describe one live mapping owned by `self.0`, which stays mapped
// (in use by wasmtime's fiber, or cached in the pool) until `self` is dropped; `top` is the
// end of the usable range, which is page aligned.
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        self.0.range().end as *mut u8
    }

    fn range(&self) -> Range<usize> {
        self.0.range()
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let guard = self.0.guard();
        guard.start as *mut u8..guard.end as *mut u8
    }
}
