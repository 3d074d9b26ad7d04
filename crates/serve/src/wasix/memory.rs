//! Linear memory bounds: each instance may hold at most so much, and all instances of a
//! server together at most a budget. A guest over either gets `memory.grow` failing (C's
//! `malloc` returns NULL; the request can still answer) instead of taking the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::ResourceLimiter;

/// Most table elements an instance may have (a table of funcrefs costs host memory too).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The memory all instances of a server share.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    total: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            total,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `bytes` from the budget, or nothing if they are not there.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes held by all instances now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One instance's account: what it holds, up to its own limit and within the budget.
#[derive(Debug)]
pub(crate) struct InstanceMemory {
    budget: Arc<MemoryBudget>,
    max: usize,
    held: usize,
}

impl InstanceMemory {
    pub(crate) fn new(budget: Arc<MemoryBudget>, max: usize) -> Self {
        InstanceMemory {
            budget,
            max,
            held: 0,
        }
    }

    /// Linear memory this instance holds.
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

impl ResourceLimiter for InstanceMemory {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Memories only grow; `current` is what this instance already accounted.
        let extra = desired.saturating_sub(current);
        if self.held + extra > self.max || !self.budget.reserve(extra) {
            return Ok(false);
        }
        self.held += extra;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Drop for InstanceMemory {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_grows_up_to_its_limit_and_the_budget() {
        let budget = MemoryBudget::new(100);
        let mut a = InstanceMemory::new(budget.clone(), 60);
        let mut b = InstanceMemory::new(budget.clone(), 60);
        assert!(a.memory_growing(0, 40, None).unwrap());
        assert!(a.memory_growing(40, 60, None).unwrap());
        assert!(
            !a.memory_growing(60, 61, None).unwrap(),
            "over its own limit"
        );
        assert!(b.memory_growing(0, 40, None).unwrap());
        assert!(!b.memory_growing(40, 50, None).unwrap(), "over the budget");
        assert_eq!(budget.used(), 100);
        assert_eq!(a.held(), 60);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.memory_growing(40, 50, None).unwrap());
        assert!(!b.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
    }
}
