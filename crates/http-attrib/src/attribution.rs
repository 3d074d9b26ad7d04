//! The one interface both guest kinds are attributed through.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ids::{InstanceId, RequestId};
use crate::registry::{Registry, RegistryError};

/// The registry as the instances of one server share it. The attribution
/// types lock it inside their methods: never call them while holding
/// [`SharedRegistry::lock`]'s guard (the mutex is not reentrant).
#[derive(Debug, Clone)]
pub struct SharedRegistry(Arc<Mutex<Registry>>);

impl SharedRegistry {
    /// Wraps `registry` so the server's instances and threads can share it.
    pub fn new(registry: Registry) -> Self {
        SharedRegistry(Arc::new(Mutex::new(registry)))
    }

    /// Locks the registry. Registry methods return errors instead of
    /// panicking on bad input, so a poisoned lock means some caller panicked
    /// while holding it, between two complete registry calls: the state is
    /// consistent and the lock is taken over rather than propagated (one
    /// failed request must not take the whole server down).
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why a host call could not be attributed, or an override was refused.
/// A guest gets these as an error code, never as a host panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttribError {
    /// The caller has no root request and no override in effect (a guest's
    /// own scheduler loop, say), so the call is refused rather than sent out
    /// unattributed. Holds the kind of caller: `"context"`, `"task"`, ….
    #[error("the calling {0} works for no request (and entered none)")]
    Unattributed(&'static str),
    /// `exit` by a caller with no override in effect (for a component task,
    /// none entered under its current root task).
    #[error("exit without a matching enter")]
    UnbalancedExit,
    /// `enter` while the caller already has [`MAX_OVERRIDE_DEPTH`] overrides
    /// in effect; the new one is not entered.
    #[error("overrides nested deeper than {MAX_OVERRIDE_DEPTH}")]
    OverrideTooDeep,
    /// The runtime reported a new context under an id that is still tracked
    /// (its exit was never reported); nothing is changed.
    #[error("context {0} is already tracked")]
    ContextInUse(u64),
    /// The context id is not tracked by the instance's attribution. Nothing
    /// in this crate returns it at present: the exit of an untracked context
    /// is [`ContextExit::Unattributed`](crate::ContextExit::Unattributed).
    #[error("context {0} is not tracked")]
    UnknownContext(u64),
    /// [`CallerStack::capture`](crate::CallerStack::capture) found no task on
    /// the async call stack: the import was not called from a running task.
    #[error("not called from inside a component task")]
    NotInTask,
    /// A wasmtime call failed (reading the call stack, starting a call);
    /// holds its message.
    #[error("{0}")]
    Wasmtime(String),
    /// The registry refused: most often a token that names no live request
    /// of this instance.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// An outgoing call, attributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The request the call is made for, and counted against.
    pub request: RequestId,
    /// The value of the `weft-request-id` header it must carry.
    pub header_value: String,
}

/// Finds, for a host call a guest makes, the incoming request it is made
/// for. Implemented per guest kind: [`GreenAttribution`](crate::GreenAttribution)
/// (the caller is the active WASIX context) and
/// [`ComponentAttribution`](crate::ComponentAttribution) (the caller is the
/// component-model async call stack). One value per instance.
pub trait Attribution {
    /// What identifies the caller of a host import.
    type Caller;

    /// The instance this state belongs to: overrides may only name requests
    /// started on it.
    fn instance(&self) -> InstanceId;

    /// The registry the instance's requests live in.
    fn registry(&self) -> &SharedRegistry;

    /// The request the caller works for: the innermost override it entered,
    /// else its root.
    fn attribute(&self, caller: &Self::Caller) -> Result<RequestId, AttribError>;

    /// Scoped override: until the matching [`Attribution::exit`], the caller
    /// works for the request `token` names, which must be live on this
    /// instance. Overrides nest.
    fn enter(&mut self, caller: &Self::Caller, token: u64) -> Result<RequestId, AttribError>;

    /// Ends the innermost override of the caller; returns the request it named.
    fn exit(&mut self, caller: &Self::Caller) -> Result<RequestId, AttribError>;

    /// Attributes an outgoing call (fetch) and counts it against its request.
    fn record_outgoing(&self, caller: &Self::Caller) -> Result<Outgoing, AttribError> {
        let request = self.attribute(caller)?;
        let header_value = self.registry().lock().record_outgoing(request)?;
        Ok(Outgoing {
            request,
            header_value,
        })
    }
}

/// How deep `enter` may nest per caller: bounds what a guest calling `enter`
/// in a loop can make the host hold.
pub const MAX_OVERRIDE_DEPTH: usize = 64;

/// Override stacks keyed by whatever identifies a caller.
#[derive(Debug)]
pub(crate) struct OverrideStacks<K> {
    stacks: HashMap<K, Vec<RequestId>>,
}

impl<K: Eq + Hash + Copy> OverrideStacks<K> {
    pub(crate) fn new() -> Self {
        OverrideStacks {
            stacks: HashMap::new(),
        }
    }

    pub(crate) fn top(&self, key: K) -> Option<RequestId> {
        self.stacks
            .get(&key)
            .and_then(|stack| stack.last().copied())
    }

    pub(crate) fn push(&mut self, key: K, request: RequestId) -> Result<(), AttribError> {
        let stack = self.stacks.entry(key).or_default();
        if stack.len() >= MAX_OVERRIDE_DEPTH {
            return Err(AttribError::OverrideTooDeep);
        }
        stack.push(request);
        Ok(())
    }

    pub(crate) fn pop(&mut self, key: K) -> Result<RequestId, AttribError> {
        let stack = self
            .stacks
            .get_mut(&key)
            .ok_or(AttribError::UnbalancedExit)?;
        let request = stack.pop().ok_or(AttribError::UnbalancedExit)?;
        if stack.is_empty() {
            self.stacks.remove(&key);
        }
        Ok(request)
    }

    pub(crate) fn forget(&mut self, key: K) {
        self.stacks.remove(&key);
    }

    pub(crate) fn clear(&mut self) {
        self.stacks.clear();
    }
}
