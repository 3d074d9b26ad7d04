//! Attribution for green-thread guests (WASIX contexts in a core module).
//!
//! Rules: the context a request's handler runs in has that request as its
//! root; a context created by another inherits its creator's attribution at
//! that moment (its root, or the request its innermost override names, so a
//! helper spawned while "working for B" works for B); an override is scoped to
//! the context that entered it. A context with no root and no override (the
//! guest's own scheduler loop, say) is unattributed: its outgoing calls are
//! refused, so every call that does go out is attributed.

use std::collections::HashMap;
use std::time::Instant;

use crate::attribution::{AttribError, Attribution, OverrideStacks, SharedRegistry};
use crate::ids::{InstanceId, RequestId};
use crate::registry::Summary;

/// A WASIX context id, as the guest sees it (`wasix_32v1.context_*`).
pub type ContextId = u64;

/// What the green-thread runtime (weft-wasix-context's store data) tells the
/// attribution layer at a host call: which context is running. With
/// [`GreenAttribution::context_created`] / [`GreenAttribution::context_exited`]
/// called from its create and exit paths, that is all it has to provide.
pub trait ActiveContext {
    /// The context that is running, hence the one making the host call.
    fn active_context(&self) -> ContextId;
}

/// What a context's exit meant for its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextExit {
    /// The context worked for no request.
    Unattributed,
    /// Other contexts still work for `request`.
    WorkLeft {
        /// The request the exited context worked for.
        request: RequestId,
        /// Contexts of this instance still working for it.
        contexts_left: u32,
    },
    /// It was the last context working for `request`. `finished` is the
    /// summary if the response had gone out; `None` means the handler ended
    /// without answering, or the answer is still on its way (see
    /// [`Registry::work_finished`](crate::Registry::work_finished)).
    LastForRequest {
        /// The request the exited context worked for.
        request: RequestId,
        /// Its summary if this exit finished it (see above).
        finished: Option<Summary>,
    },
}

/// Attribution state of one green-thread instance.
#[derive(Debug)]
pub struct GreenAttribution {
    registry: SharedRegistry,
    instance: InstanceId,
    roots: HashMap<ContextId, RequestId>,
    contexts_per_request: HashMap<RequestId, u32>,
    overrides: OverrideStacks<ContextId>,
}

impl GreenAttribution {
    /// State for `instance`, a green-thread instance registered in
    /// `registry`; no context is tracked until [`GreenAttribution::request_started`].
    pub fn new(registry: SharedRegistry, instance: InstanceId) -> Self {
        GreenAttribution {
            registry,
            instance,
            roots: HashMap::new(),
            contexts_per_request: HashMap::new(),
            overrides: OverrideStacks::new(),
        }
    }

    /// The handler of `request` runs in the new context `context`.
    /// `request` must be started on this instance.
    pub fn request_started(
        &mut self,
        context: ContextId,
        request: RequestId,
    ) -> Result<(), AttribError> {
        if self.roots.contains_key(&context) {
            return Err(AttribError::ContextInUse(context));
        }
        self.registry
            .lock()
            .validate_token(self.instance, request.get())?;
        self.track(context, request);
        Ok(())
    }

    fn track(&mut self, context: ContextId, request: RequestId) {
        self.roots.insert(context, request);
        *self.contexts_per_request.entry(request).or_default() += 1;
    }

    /// `creator` created `created`; returns the request `created` now works
    /// for (`None` if `creator` worked for none).
    pub fn context_created(
        &mut self,
        creator: ContextId,
        created: ContextId,
    ) -> Result<Option<RequestId>, AttribError> {
        if self.roots.contains_key(&created) {
            return Err(AttribError::ContextInUse(created));
        }
        let inherited = self
            .overrides
            .top(creator)
            .or_else(|| self.roots.get(&creator).copied());
        if let Some(request) = inherited {
            self.track(created, request);
        }
        Ok(inherited)
    }

    /// `context` exited (returned, was destroyed, or trapped). Its overrides
    /// end with it. When it was the last one working for its request, the
    /// registry learns that the request's work is finished.
    pub fn context_exited(
        &mut self,
        context: ContextId,
        now: Instant,
    ) -> Result<ContextExit, AttribError> {
        self.overrides.forget(context);
        let Some(request) = self.roots.remove(&context) else {
            return Ok(ContextExit::Unattributed);
        };
        let left = self
            .contexts_per_request
            .get_mut(&request)
            .expect("a tracked context counts for its request");
        *left -= 1;
        if *left > 0 {
            return Ok(ContextExit::WorkLeft {
                request,
                contexts_left: *left,
            });
        }
        self.contexts_per_request.remove(&request);
        let mut registry = self.registry.lock();
        let finished = if registry.is_live(request) {
            registry.work_finished(request, now)?
        } else {
            None
        };
        Ok(ContextExit::LastForRequest { request, finished })
    }

    /// The contexts working for `request` on this instance, in id order.
    pub fn contexts_of(&self, request: RequestId) -> Vec<ContextId> {
        let mut contexts: Vec<ContextId> = self
            .roots
            .iter()
            .filter(|(_, r)| **r == request)
            .map(|(&c, _)| c)
            .collect();
        contexts.sort_unstable();
        contexts
    }

    /// The drain deadline of `request` passed: forgets its contexts and
    /// returns them, for the runtime to kill, with the request's summary
    /// (their number counted as stragglers). Their later exits are
    /// [`ContextExit::Unattributed`].
    pub fn drain(
        &mut self,
        request: RequestId,
        now: Instant,
    ) -> Result<(Summary, Vec<ContextId>), AttribError> {
        let stragglers = self.contexts_of(request);
        let summary = self
            .registry
            .lock()
            .drained(request, stragglers.len() as u32, now)?;
        for context in &stragglers {
            self.roots.remove(context);
            self.overrides.forget(*context);
        }
        self.contexts_per_request.remove(&request);
        Ok((summary, stragglers))
    }

    /// Live contexts that work for some request.
    pub fn attributed_contexts(&self) -> usize {
        self.roots.len()
    }

    /// [`Attribution::attribute`] for whatever context the runtime says is
    /// running.
    pub fn attribute_active(&self, runtime: &impl ActiveContext) -> Result<RequestId, AttribError> {
        self.attribute(&runtime.active_context())
    }
}

impl Attribution for GreenAttribution {
    type Caller = ContextId;

    fn instance(&self) -> InstanceId {
        self.instance
    }

    fn registry(&self) -> &SharedRegistry {
        &self.registry
    }

    fn attribute(&self, context: &ContextId) -> Result<RequestId, AttribError> {
        self.overrides
            .top(*context)
            .or_else(|| self.roots.get(context).copied())
            .ok_or(AttribError::Unattributed("context"))
    }

    fn enter(&mut self, context: &ContextId, token: u64) -> Result<RequestId, AttribError> {
        let request = self.registry.lock().validate_token(self.instance, token)?;
        self.overrides.push(*context, request)?;
        Ok(request)
    }

    fn exit(&mut self, context: &ContextId) -> Result<RequestId, AttribError> {
        self.overrides.pop(*context)
    }
}
