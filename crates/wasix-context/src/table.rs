//! The context table: ids, states and the ABI's rules, with no wasmtime in it.
//!
//! Everything a guest can observe through errnos is decided here, so the rules can be
//! tested (and proptested against a model) without running wasm. The payload `P` is what
//! the binding keeps per context (its suspended future, saved stack pointer, shadow-stack
//! region); the table only moves it around.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::host_stacks::{ContextBudget, Reservation};
use crate::{ContextId, Errno, MAIN_CONTEXT};

/// The observable state of a context (the ABI's "deleted" is "not in the table").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextState {
    /// Running now: exactly one context (possibly main) is active.
    Active,
    /// Waiting to be resumed by a switch (or never resumed yet).
    Suspended,
    /// Its entrypoint returned or trapped; only `destroy` is allowed on it.
    Terminated,
}

#[derive(Debug)]
struct Entry<P> {
    state: ContextState,
    payload: P,
    /// The context's unit of the stack budget: held while it may still need a native stack,
    /// dropped when it terminates (its stack went back with its fiber) or leaves the table.
    reservation: Option<Reservation>,
}

/// What a valid switch request amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum SwitchPlan {
    /// The target is the active context: nothing to do, the call succeeds.
    NoOp,
    /// Suspend the active context and resume the target.
    Switch { from: ContextId, to: ContextId },
}

/// Ids are sequential integers chosen by us, not by the guest, so a multiplicative hash
/// spreads them well; SipHash's DoS resistance buys nothing here and costs on every switch.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug)]
pub struct ContextTable<P> {
    entries: HashMap<ContextId, Entry<P>, BuildHasherDefault<IdHasher>>,
    /// Ids are never reused, so a stale id can never name a newer context.
    next_id: ContextId,
    active: ContextId,
    max_contexts: usize,
    /// Shared with other tables (other stores): live contexts across all of them.
    budget: ContextBudget,
}

impl<P> ContextTable<P> {
    pub fn new(max_contexts: usize, budget: ContextBudget) -> Self {
        ContextTable {
            entries: HashMap::default(),
            next_id: MAIN_CONTEXT + 1,
            active: MAIN_CONTEXT,
            max_contexts,
            budget,
        }
    }

    pub fn active(&self) -> ContextId {
        self.active
    }

    /// Contexts not yet destroyed (suspended, active or terminated), main excluded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn state(&self, id: ContextId) -> Option<ContextState> {
        if id == MAIN_CONTEXT {
            return Some(if self.active == MAIN_CONTEXT {
                ContextState::Active
            } else {
                ContextState::Suspended
            });
        }
        self.entries.get(&id).map(|entry| entry.state)
    }

    /// `EAGAIN` when the limit of live contexts is reached.
    fn check_capacity(&self) -> Result<(), Errno> {
        if self.entries.len() >= self.max_contexts {
            Err(Errno::Again)
        } else {
            Ok(())
        }
    }

    /// The capacity check of a create, this instance's limit first, then a unit of the
    /// shared budget: `EAGAIN` when either is used up. `for_host` may use the budget's host
    /// reserve. The unit goes back if the create fails before [`insert`](Self::insert).
    pub fn reserve(&self, for_host: bool) -> Result<Reservation, Errno> {
        self.check_capacity()?;
        self.budget.reserve(for_host).ok_or(Errno::Again)
    }

    /// Adds a suspended context holding `reservation`. The caller checked the capacity first.
    pub fn insert(&mut self, payload: P, reservation: Reservation) -> ContextId {
        debug_assert!(self.check_capacity().is_ok());
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                state: ContextState::Suspended,
                payload,
                reservation: Some(reservation),
            },
        );
        id
    }

    /// The ABI's checks for `context_switch(target)`: self is a no-op, anything but a
    /// suspended context (or main, which is suspended whenever it is not active) is `EINVAL`.
    pub fn plan_switch(&self, target: ContextId) -> Result<SwitchPlan, Errno> {
        if target == self.active {
            return Ok(SwitchPlan::NoOp);
        }
        match self.state(target) {
            Some(ContextState::Suspended) => Ok(SwitchPlan::Switch {
                from: self.active,
                to: target,
            }),
            _ => Err(Errno::Inval),
        }
    }

    /// Applies a planned switch: `from` becomes suspended, `to` active.
    pub fn switch(&mut self, from: ContextId, to: ContextId) {
        debug_assert_eq!(from, self.active);
        debug_assert_eq!(self.state(to), Some(ContextState::Suspended));
        if let Some(entry) = self.entries.get_mut(&from) {
            entry.state = ContextState::Suspended;
        }
        if let Some(entry) = self.entries.get_mut(&to) {
            entry.state = ContextState::Active;
        }
        self.active = to;
    }

    /// The active context's entrypoint finished (returned or trapped): it becomes
    /// terminated and main is active again. Returns the terminated id.
    pub fn terminate_active(&mut self) -> ContextId {
        let id = self.active;
        debug_assert_ne!(
            id, MAIN_CONTEXT,
            "main does not terminate through the table"
        );
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = ContextState::Terminated;
            // Its stack goes back with its fiber, which the caller disposes now; the
            // context itself still counts against `max_contexts` until destroyed.
            entry.reservation = None;
        }
        self.active = MAIN_CONTEXT;
        id
    }

    /// The ABI's checks for `context_destroy(id)`: main and the active context are
    /// `EINVAL`; an id that names no context (deleted, or never created, which the ABI
    /// says is the same) is a successful no-op. Returns the removed payload.
    pub fn destroy(&mut self, id: ContextId) -> Result<Option<P>, Errno> {
        if id == MAIN_CONTEXT || id == self.active {
            return Err(Errno::Inval);
        }
        Ok(self.entries.remove(&id).map(|entry| entry.payload))
    }

    pub fn payload_mut(&mut self, id: ContextId) -> Option<&mut P> {
        self.entries.get_mut(&id).map(|entry| &mut entry.payload)
    }

    /// Removes every context and makes main active again (environment teardown). Yields
    /// the ids with their payloads, in no particular order.
    pub fn drain(&mut self) -> impl Iterator<Item = (ContextId, P)> + '_ {
        self.active = MAIN_CONTEXT;
        self.entries.drain().map(|(id, entry)| (id, entry.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unbudgeted<P>(max: usize) -> ContextTable<P> {
        ContextTable::new(max, ContextBudget::new(usize::MAX))
    }

    fn add<P>(table: &mut ContextTable<P>, payload: P) -> ContextId {
        let reservation = table.reserve(false).unwrap();
        table.insert(payload, reservation)
    }

    #[test]
    fn rules_of_the_abi() {
        let mut table = unbudgeted(2);
        let a = add(&mut table, "a");
        assert_eq!(table.plan_switch(MAIN_CONTEXT), Ok(SwitchPlan::NoOp));
        assert_eq!(
            table.plan_switch(a),
            Ok(SwitchPlan::Switch {
                from: MAIN_CONTEXT,
                to: a
            })
        );
        assert_eq!(table.plan_switch(a + 1), Err(Errno::Inval));
        assert_eq!(table.destroy(MAIN_CONTEXT).unwrap_err(), Errno::Inval);
        table.switch(MAIN_CONTEXT, a);
        assert_eq!(table.destroy(a).unwrap_err(), Errno::Inval);
        assert_eq!(table.plan_switch(a), Ok(SwitchPlan::NoOp));
        assert_eq!(table.terminate_active(), a);
        assert_eq!(table.plan_switch(a), Err(Errno::Inval));
        assert_eq!(table.destroy(a).unwrap(), Some("a"));
        assert_eq!(table.destroy(a).unwrap(), None);
        assert_eq!(table.destroy(99).unwrap(), None);
    }

    #[test]
    fn capacity_counts_terminated_contexts_until_destroyed() {
        let mut table = unbudgeted(1);
        let a = add(&mut table, ());
        assert_eq!(table.check_capacity(), Err(Errno::Again));
        table.switch(MAIN_CONTEXT, a);
        table.terminate_active();
        assert_eq!(table.check_capacity(), Err(Errno::Again));
        table.destroy(a).unwrap();
        assert_eq!(table.check_capacity(), Ok(()));
        assert_ne!(add(&mut table, ()), a, "ids are never reused");
    }

    #[test]
    fn budget_is_shared_and_released_at_terminate_destroy_and_drain() {
        let budget = ContextBudget::new(2);
        let mut one = ContextTable::new(10, budget.clone());
        let mut two = ContextTable::new(10, budget.clone());
        let a = add(&mut one, ());
        add(&mut two, ());
        assert_eq!(two.reserve(false).unwrap_err(), Errno::Again);
        assert_eq!(budget.reserved(), 2);
        one.switch(MAIN_CONTEXT, a);
        one.terminate_active();
        assert_eq!(budget.reserved(), 1, "a terminated context needs no stack");
        let b = add(&mut two, ());
        assert_eq!(one.reserve(false).unwrap_err(), Errno::Again);
        two.destroy(b).unwrap();
        let c = add(&mut one, ());
        assert_eq!(budget.reserved(), 2);
        one.destroy(a).unwrap();
        assert_eq!(budget.reserved(), 2, "a was released at terminate, once");
        assert_eq!(two.drain().count(), 1);
        assert_eq!(budget.reserved(), 1);
        one.destroy(c).unwrap();
        assert_eq!(budget.reserved(), 0);
    }

    /// The plain model: a list of states indexed by id, with the ABI's rules
    /// written as directly as possible.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum ModelState {
        Suspended,
        Active,
        Terminated,
        Deleted,
    }

    struct Model {
        states: Vec<ModelState>, // index = id; 0 = main
        max: usize,
    }

    impl Model {
        fn active(&self) -> u64 {
            self.states
                .iter()
                .position(|s| *s == ModelState::Active)
                .unwrap() as u64
        }
        fn live(&self) -> usize {
            self.states[1..]
                .iter()
                .filter(|s| **s != ModelState::Deleted)
                .count()
        }
        fn get(&self, id: u64) -> ModelState {
            self.states
                .get(id as usize)
                .copied()
                .unwrap_or(ModelState::Deleted)
        }
        fn create(&mut self) -> Result<u64, Errno> {
            if self.live() >= self.max {
                return Err(Errno::Again);
            }
            self.states.push(ModelState::Suspended);
            Ok(self.states.len() as u64 - 1)
        }
        fn switch(&mut self, target: u64) -> Result<(), Errno> {
            let active = self.active();
            if target == active {
                return Ok(());
            }
            if self.get(target) != ModelState::Suspended {
                return Err(Errno::Inval);
            }
            self.states[active as usize] = ModelState::Suspended;
            self.states[target as usize] = ModelState::Active;
            Ok(())
        }
        fn destroy(&mut self, id: u64) -> Result<(), Errno> {
            if id == 0 || id == self.active() {
                return Err(Errno::Inval);
            }
            if (id as usize) < self.states.len() {
                self.states[id as usize] = ModelState::Deleted;
            }
            Ok(())
        }
        fn terminate_active(&mut self) {
            let active = self.active();
            if active != 0 {
                self.states[active as usize] = ModelState::Terminated;
                self.states[0] = ModelState::Active;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create,
        Switch(u64),
        Destroy(u64),
        TerminateActive,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Create),
            4 => (0u64..12).prop_map(Op::Switch),
            2 => (0u64..12).prop_map(Op::Destroy),
            1 => Just(Op::TerminateActive),
        ]
    }

    proptest! {
        #[test]
        fn table_matches_model(max in 1usize..6, ops in proptest::collection::vec(op(), 1..80)) {
            let mut table = unbudgeted(max);
            let mut model = Model { states: vec![ModelState::Active], max };
            for op in ops {
                match op {
                    Op::Create => {
                        let got = table.check_capacity().map(|()| add(&mut table, ()));
                        prop_assert_eq!(got, model.create());
                    }
                    Op::Switch(target) => {
                        let got = table.plan_switch(target).map(|plan| {
                            if let SwitchPlan::Switch { from, to } = plan {
                                table.switch(from, to);
                            }
                        });
                        prop_assert_eq!(got, model.switch(target));
                    }
                    Op::Destroy(id) => {
                        let got = table.destroy(id).map(|_| ());
                        prop_assert_eq!(got, model.destroy(id));
                    }
                    Op::TerminateActive => {
                        if table.active() != MAIN_CONTEXT {
                            table.terminate_active();
                        }
                        model.terminate_active();
                    }
                }
                prop_assert_eq!(table.active(), model.active());
                prop_assert_eq!(table.len(), model.live());
                for id in 0..model.states.len() as u64 + 2 {
                    let expected = match model.get(id) {
                        ModelState::Suspended => Some(ContextState::Suspended),
                        ModelState::Active => Some(ContextState::Active),
                        ModelState::Terminated => Some(ContextState::Terminated),
                        ModelState::Deleted => None,
                    };
                    prop_assert_eq!(table.state(id), expected);
                }
            }
        }
    }
}
