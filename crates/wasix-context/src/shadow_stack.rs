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
//!   the host grew as foreign and simply allocates past them, provided the host never grows
//!   memory between two of the allocator's own `memory.grow`s: it takes the second for the
//!   continuation of the first. Contexts are created only by a host call, so that holds
//!   unless a host creates one while another context is preempted in the middle of its code
//!   (see [`crate::WasixContexts::preempt_to_main`]).
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
//! - **Overflow.** Wasm has no guard pages inside linear memory, so a context whose frames
//!   outgrow its region would silently write over the guest's heap or another context's
//!   frames. The lowest 16 bytes of each region therefore hold a canary, written when the
//!   region is handed out, and [`ShadowStacks::check`] (a bounds compare of the stack
//!   pointer and a 16-byte compare of memory) runs whenever a context's stack pointer is
//!   saved or the context calls the host. An overflow that skips over the canary and moves
//!   the stack pointer back before the next check goes unseen, as an overflow of C's main
//!   stack does; the check bounds the damage to one switch and names the culprit. Main's
//!   own stack is the guest's and is not checked.

use wasmtime::{AsContext, AsContextMut, Global, Memory, Mutability, Val, ValType};

use crate::{ContextId, Errno, IncompatibleGuest, MAIN_CONTEXT, WasixContexts};

const WASM_PAGE: u64 = 64 * 1024;
/// The wasm C ABI keeps the stack pointer 16-byte aligned.
const STACK_ALIGN: u32 = 16;
/// Written in the 16 bytes below each region: a pattern unlikely to be a pointer, a length
/// or zeroed memory, so that frames spilling over it change it.
const CANARY: [u8; STACK_ALIGN as usize] = *b"\xa5weft-canary!\x5a\xc3\x3c";

/// The trap a context gets when its frames outgrew its shadow-stack region: its stack
/// pointer left the region or the canary below the region was overwritten. Main receives it
/// like any trap of a context (`weft run` exits 134).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("WASIX context {id} overflowed its shadow stack (size {size}; raise --shadow-stack-size)")]
pub struct ShadowStackOverflow {
    /// The context that overflowed.
    pub id: ContextId,
    /// Its region's size in bytes.
    pub size: u32,
}

/// A context's region: `[base, base + size)`, its stack starting at the top and its canary
/// in the lowest 16 bytes, so the stack proper is `[base + 16, base + size)`.
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
        let size = (region_size.max(2 * STACK_ALIGN as usize) as u64).div_ceil(STACK_ALIGN as u64)
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

    /// A region for a new context: a recycled one, or carved from freshly grown memory, its
    /// canary (re)written. `ENOMEM` when the memory cannot grow (its maximum, or 4 GiB, is
    /// reached).
    pub fn allocate(
        &mut self,
        mut store: impl AsContextMut,
        memory: Memory,
    ) -> Result<Region, Errno> {
        let region = match self.free.pop() {
            Some(region) => region,
            None => self.carve(&mut store, memory)?,
        };
        let canary = region.base as usize;
        memory.data_mut(&mut store)[canary..canary + CANARY.len()].copy_from_slice(&CANARY);
        Ok(region)
    }

    fn carve(&mut self, mut store: impl AsContextMut, memory: Memory) -> Result<Region, Errno> {
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
        if self.next > u64::from(u32::MAX) {
            return Err(Errno::Nomem);
        }
        Ok(Region { base: base as u32 })
    }

    /// Whether context `id`, whose stack pointer is `sp`, stayed within `region`: `sp` in
    /// `[base + 16, top]` and the canary at `base` intact in `memory` (the guest's memory).
    /// Cheap enough for every switch: two compares and 16 bytes, no allocation.
    pub fn check(
        &self,
        memory: &[u8],
        id: ContextId,
        region: Region,
        sp: u32,
    ) -> Result<(), ShadowStackOverflow> {
        let bottom = region.base + CANARY.len() as u32;
        let inside = sp >= bottom && sp <= self.top(region);
        let canary = region.base as usize..bottom as usize;
        if inside && memory.get(canary) == Some(&CANARY[..]) {
            Ok(())
        } else {
            Err(ShadowStackOverflow {
                id,
                size: self.region_size,
            })
        }
    }

    pub fn release(&mut self, region: Region) {
        self.free.push(region);
    }
}

/// [`ShadowStacks::check`] of the active context as it stands: its live `__stack_pointer`
/// and its region. `Ok` when main is active (main's stack is the guest's own) or no guest
/// is bound yet. Called wherever a context's stack pointer is about to be saved (the
/// driver) and at every host call a context makes.
pub(crate) fn check_active<T: 'static>(
    mut store: impl AsContextMut<Data = T>,
    get: impl Fn(&mut T) -> &mut WasixContexts,
) -> Result<(), ShadowStackOverflow> {
    let mut store = store.as_context_mut();
    let state = get(store.data_mut());
    let id = state.table.active();
    let Some(guest) = state.guest else {
        return Ok(());
    };
    if id == MAIN_CONTEXT {
        return Ok(());
    }
    let sp = guest.stack_pointer.get(&mut store);
    check_context(store, get, guest.memory, id, sp)
}

/// [`check_active`] with the active context's `__stack_pointer` already read (`sp`): the
/// driver reads it once, to check it and then to save it.
pub(crate) fn check_active_at<T: 'static>(
    mut store: impl AsContextMut<Data = T>,
    get: impl Fn(&mut T) -> &mut WasixContexts,
    sp: u32,
) -> Result<(), ShadowStackOverflow> {
    let mut store = store.as_context_mut();
    let state = get(store.data_mut());
    let id = state.table.active();
    let Some(guest) = state.guest else {
        return Ok(());
    };
    if id == MAIN_CONTEXT {
        return Ok(());
    }
    check_context(store, get, guest.memory, id, sp)
}

/// [`ShadowStacks::check`] of context `id` (not main) of the bound guest whose memory is
/// `memory`, with stack pointer `sp`.
fn check_context<T: 'static>(
    mut store: impl AsContextMut<Data = T>,
    get: impl Fn(&mut T) -> &mut WasixContexts,
    memory: Memory,
    id: ContextId,
    sp: u32,
) -> Result<(), ShadowStackOverflow> {
    let (memory, data) = memory.data_and_store_mut(&mut store);
    let state = get(data);
    match state.table.payload_mut(id).and_then(|slot| slot.region) {
        Some(region) => state.shadow_stacks.check(memory, id, region, sp),
        None => Ok(()),
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
    fn check_catches_a_stack_pointer_outside_and_a_clobbered_canary() {
        let engine = Engine::default();
        let mut store = Store::new(&engine, ());
        let memory = Memory::new(&mut store, MemoryType::new(1, None)).unwrap();
        let mut stacks = ShadowStacks::new(4096);
        let a = stacks.allocate(&mut store, memory).unwrap();
        let top = stacks.top(a);
        let check = |store: &Store<()>, sp| stacks.check(memory.data(store), 3, a, sp);
        assert_eq!(check(&store, top), Ok(()));
        assert_eq!(
            check(&store, a.base + 16),
            Ok(()),
            "a full stack is no overflow"
        );
        let overflow = Err(ShadowStackOverflow { id: 3, size: 4096 });
        assert_eq!(check(&store, a.base), overflow, "the canary is not stack");
        assert_eq!(check(&store, a.base - 16), overflow);
        assert_eq!(check(&store, top + 16), overflow);
        memory.data_mut(&mut store)[a.base as usize + 15] ^= 1;
        assert_eq!(check(&store, top), overflow);
        // A recycled region gets its canary back.
        stacks.release(a);
        assert_eq!(stacks.allocate(&mut store, memory).unwrap(), a);
        assert_eq!(stacks.check(memory.data(&store), 3, a, top), Ok(()));
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
