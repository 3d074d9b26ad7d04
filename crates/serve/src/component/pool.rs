//! Instances of a component come from wasmtime's pooling allocator, sized from the server's
//! policy, with linear memories and tables kept resident between instances.
//!
//! Why: a language runtime's component (Python, JavaScript) starts from a memory image of
//! tens of megabytes that the guest writes all over while it serves. With wasmtime's default
//! allocator every new instance maps that image afresh and faults each page it touches in
//! again, and dropping the old one unmaps its memory, which costs every thread of the process
//! a TLB shootdown. An instance is retired every `max_requests_per_instance` requests, so that
//! cost recurs. A pooled slot that keeps its pages resident is reset by copying back only the
//! pages the guest dirtied (found with `PAGEMAP_SCAN` where the kernel has it): no faults, no
//! unmapping.

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::ServeConfig;

/// Bytes of each linear memory kept resident in a free slot: more than a language runtime's
/// working set, so its reset is a copy of what it dirtied.
const MEMORY_KEEP_RESIDENT: usize = 128 << 20;
/// Bytes of each table kept resident in a free slot.
const TABLE_KEEP_RESIDENT: usize = 1 << 20;
/// Core instances, memories and tables one component may hold (language runtimes link a
/// handful of core modules: the runtime, libc, adapters, shims).
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MEMORIES_PER_COMPONENT: u32 = 8;
const TABLES_PER_COMPONENT: u32 = 16;
/// Fiber stacks per instance: one per task running at once, and a few for host calls.
const STACKS_PER_INSTANCE: u32 = 8;

/// The allocation strategy for a server run with `config`.
pub(super) fn strategy(config: &ServeConfig) -> InstanceAllocationStrategy {
    // Instances that exist at once: those the policy allows, the ones being dropped after
    // retirement meanwhile (as many again), and the load-time probe.
    let instances = u32::try_from(config.policy.max_instances)
        .unwrap_or(u32::MAX / 4)
        .saturating_mul(2)
        .saturating_add(2)
        .min(4096);
    let concurrent = u32::try_from(config.policy.max_in_flight_per_instance).unwrap_or(1024);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(
            instances.saturating_mul(concurrent.saturating_add(STACKS_PER_INSTANCE).min(1024)),
        )
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(config.limits.max_instance_memory)
        .max_unused_warm_slots(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT.min(config.limits.max_instance_memory))
        .table_keep_resident(TABLE_KEEP_RESIDENT);
    InstanceAllocationStrategy::Pooling(pool)
}
