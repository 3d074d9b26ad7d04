//! Host-managed shadow stacks.
//!
//! C compiled to wasm keeps its address-taken locals, arrays and varargs on a stack in
//! linear memory, addressed by the mutable global `__stack_pointer`, which every context of
//! an instance shares. So the host gives each context its own region of linear memory and
//! swaps the global on every switch:
//!
//! - **Where regions come from.** The host grows the guest's memory (`memory.grow`, as the
//!   guest's own `sbrk` would) and carves fixed-size regions out of the new pages; it never
//!   touches memory the guest allocated. A destroyed or terminated context's region goes to
//!   a free list and is reused by the next context. wasi-libc's allocator treats the pages
//!   the host grew as foreign and simply allocates past them.
//! - **What is swapped.** On every switch the host reads `__stack_pointer` into the
//!   suspended context's slot and writes the resumed context's saved value (a new context
//!   starts at the top of its region). Main's value is saved the same way, so main finds its
//!   own stack pointer back whenever it resumes, including after a context trapped.
//! - **What a guest must have.** An exported mutable `i32` global `__stack_pointer`
//!   (`-Wl,--export=__stack_pointer`), an exported memory `memory`, and its function table
//!   exported as `__indirect_function_table` (`-Wl,--export-table`). A guest without them
//!   is refused with [`crate::IncompatibleGuest`]: at load time by
//!   [`crate::check_module`], and at the latest at its first `context_create` (a trap
//!   naming what is missing), never with silent corruption.
//!
//! As with C's main stack in wasm, nothing stops a context from overflowing its region;
//! pick `shadow_stack_size` accordingly (default 64 KiB, like wasm-ld's main stack).

use wasmtime::{AsContext, AsContextMut, Global, Memory, Mutability, Val, ValType};

use crate::{Errno, IncompatibleGuest};

const WASM_PAGE: u64 = 64 * 1024;
/// The wasm C ABI keeps the stack pointer 16-byte aligned.
const STACK_ALIGN: u32 = 16;

/// A context's region: `[base, base + size)`, its stack starting at the top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub base: u32,
}

#[derive(Debug)]
pub(crate) struct ShadowStacks {
    region_size: u32,
    free: Vec<Region>,
    /// Unused tail of the pages last grown: `[next, end)`.
    next: u64,
    end: u64,
}

impl ShadowStacks {
    pub fn new(region_size: usize) -> Self {
        let size = (region_size.max(STACK_ALIGN as usize) as u64).div_ceil(STACK_ALIGN as u64)
            * STACK_ALIGN as u64;
        ShadowStacks {
            region_size: size.min(u32::MAX as u64 / 2) as u32,
            free: Vec::new(),
            next: 0,
            end: 0,
        }
    }

    pub fn top(&self, region: Region) -> u32 {
        region.base + self.region_size
    }

    /// A region for a new context: a recycled one, or carved from freshly grown memory.
    /// `ENOMEM` when the memory cannot grow (its maximum, or 4 GiB, is reached).
    pub fn allocate(
        &mut self,
        mut store: impl AsContextMut,
        memory: Memory,
    ) -> Result<Region, Errno> {
        if let Some(region) = self.free.pop() {
            return Ok(region);
        }
        let size = u64::from(self.region_size);
        if self.end - self.next < size {
            // Regions smaller than a page share the pages grown for them.
            let want = size.div_ceil(WASM_PAGE);
            let old_pages = memory.grow(&mut store, want).map_err(|_| Errno::Nomem)?;
            let start = old_pages * WASM_PAGE;
            let end = (old_pages + want) * WASM_PAGE;
            if end > u64::from(u32::MAX) + 1 {
                return Err(Errno::Nomem);
            }
            // Contiguous with the previous tail only if nobody grew in between.
            if start != self.end {
                self.next = start;
            }
            self.end = end;
        }
        let base = self.next;
        self.next += size;
        // A region never ends at 4 GiB exactly, so `top` fits in u32 (the last page is
        // shared with nothing and simply wasted in that corner case).
        if base + size > u64::from(u32::MAX) {
            return Err(Errno::Nomem);
        }
        Ok(Region { base: base as u32 })
    }

    pub fn release(&mut self, region: Region) {
        self.free.push(region);
    }
}

/// The guest's `__stack_pointer`, checked to be a mutable i32.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StackPointer(Global);

impl StackPointer {
    pub fn new(store: impl AsContext, global: Option<Global>) -> Result<Self, IncompatibleGuest> {
        let global = global.ok_or(IncompatibleGuest::MissingStackPointer)?;
        let ty = global.ty(&store);
        if ty.mutability() != Mutability::Var || !matches!(ty.content(), ValType::I32) {
            return Err(IncompatibleGuest::BadStackPointer);
        }
        Ok(StackPointer(global))
    }

    pub fn get(&self, store: impl AsContextMut) -> u32 {
        match self.0.get(store) {
            Val::I32(value) => value as u32,
            // Checked at construction; the type of a global never changes.
            _ => unreachable!("__stack_pointer was checked to be an i32"),
        }
    }

    pub fn set(&self, store: impl AsContextMut, value: u32) {
        self.0
            .set(store, Val::I32(value as i32))
            .expect("__stack_pointer was checked to be a mutable i32");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, MemoryType, Store};

    #[test]
    fn regions_are_disjoint_aligned_and_recycled() {
        let engine = Engine::default();
        let mut store = Store::new(&engine, ());
        let memory = Memory::new(&mut store, MemoryType::new(1, None)).unwrap();
        let mut stacks = ShadowStacks::new(10_000);
        let a = stacks.allocate(&mut store, memory).unwrap();
        let b = stacks.allocate(&mut store, memory).unwrap();
        assert!(
            a.base >= WASM_PAGE as u32,
            "never hands out memory the guest had"
        );
        assert_eq!(a.base % STACK_ALIGN, 0);
        assert_eq!(stacks.top(a) % STACK_ALIGN, 0);
        assert!(stacks.top(a) <= b.base || stacks.top(b) <= a.base);
        assert!(u64::from(stacks.top(b)) <= memory.data_size(&store) as u64);
        stacks.release(a);
        assert_eq!(stacks.allocate(&mut store, memory).unwrap(), a);
    }

    #[test]
    fn memory_that_cannot_grow_gives_enomem() {
        let engine = Engine::default();
        let mut store = Store::new(&engine, ());
        let memory = Memory::new(&mut store, MemoryType::new(1, Some(1))).unwrap();
        let mut stacks = ShadowStacks::new(64 * 1024);
        assert_eq!(stacks.allocate(&mut store, memory), Err(Errno::Nomem));
    }

    #[test]
    fn guest_growth_between_allocations_is_skipped() {
        let engine = Engine::default();
        let mut store = Store::new(&engine, ());
        let memory = Memory::new(&mut store, MemoryType::new(1, None)).unwrap();
        let mut stacks = ShadowStacks::new(4096);
        let a = stacks.allocate(&mut store, memory).unwrap();
        // Use up the tail, then let "the guest" grow.
        while stacks.end - stacks.next >= 4096 {
            stacks.allocate(&mut store, memory).unwrap();
        }
        let guest_page = memory.grow(&mut store, 1).unwrap();
        let b = stacks.allocate(&mut store, memory).unwrap();
        let guest = guest_page as u32 * WASM_PAGE as u32;
        assert!(
            b.base >= guest + WASM_PAGE as u32,
            "the guest's page is left alone"
        );
        assert_ne!(a, b);
    }
}
