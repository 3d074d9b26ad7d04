//! Context lifecycle events for the embedder (opt-in: [`crate::ContextConfig::record_events`]).
//!
//! The crate knows exactly who created a context, when its entrypoint ended and when it was
//! destroyed; an embedder that accounts work per context (e.g. attributes a context to the
//! request whose handler created it) reads that here instead of guessing from the table.

use crate::ContextId;

/// What happened to a context, in the order it happened (see
/// [`WasixContexts::take_events`](crate::WasixContexts::take_events)). Main
/// ([`MAIN_CONTEXT`](crate::MAIN_CONTEXT)) never gets events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextEvent {
    /// `id` was created by `creator` (the context that called `context_create`;
    /// [`MAIN_CONTEXT`](crate::MAIN_CONTEXT) for host spawns via
    /// [`HostContexts::spawn`](crate::HostContexts::spawn)), to run `entrypoint`.
    Created {
        /// The new context.
        id: ContextId,
        /// The context that was active when `id` was created.
        creator: ContextId,
        /// What `id` runs.
        entrypoint: Entrypoint,
    },
    /// `id`'s entrypoint ended (returned or trapped, or its call was abandoned because the
    /// call driving it was dropped): it will never run again but still holds its id until
    /// destroyed.
    Terminated {
        /// The terminated context.
        id: ContextId,
    },
    /// `id` was destroyed (by the guest's `context_destroy`,
    /// [`HostContexts::destroy`](crate::HostContexts::destroy), or release of all contexts:
    /// [`HostContexts::release_all`](crate::HostContexts::release_all)).
    Destroyed {
        /// The destroyed context; its id is never reused.
        id: ContextId,
    },
}

/// The function a context runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entrypoint {
    /// Index in `__indirect_function_table` (guest `context_create`).
    Table(u32),
    /// An export started by the host ([`HostContexts::spawn`](crate::HostContexts::spawn)).
    Export,
}

/// The pending events of one [`crate::WasixContexts`].
#[derive(Debug)]
pub(crate) struct EventLog {
    recording: bool,
    /// Never grows past `limit` (so never reallocates past it either).
    events: Vec<ContextEvent>,
    limit: usize,
    /// Events discarded since the last `take` because `limit` were pending.
    dropped: usize,
}

impl EventLog {
    pub(crate) fn new(recording: bool, limit: usize) -> Self {
        EventLog {
            recording,
            events: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.recording
    }

    pub(crate) fn stop_recording(&mut self) {
        self.recording = false;
    }

    /// Records `event` if recording is on and fewer than `limit` are pending; counts it as
    /// dropped otherwise.
    #[inline]
    pub(crate) fn push(&mut self, event: ContextEvent) {
        if !self.recording {
            return;
        }
        if self.events.len() < self.limit {
            self.events.push(event);
        } else {
            self.dropped += 1;
        }
    }

    pub(crate) fn take(&mut self) -> std::vec::Drain<'_, ContextEvent> {
        self.dropped = 0;
        self.events.drain(..)
    }

    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing() {
        let mut log = EventLog::new(false, 10);
        log.push(ContextEvent::Destroyed { id: 1 });
        assert_eq!(log.take().count(), 0);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn the_limit_keeps_the_oldest_and_counts_the_rest_until_taken() {
        let mut log = EventLog::new(true, 2);
        for id in 1..=5 {
            log.push(ContextEvent::Terminated { id });
        }
        assert_eq!(log.dropped(), 3);
        assert_eq!(
            log.take().collect::<Vec<_>>(),
            [
                ContextEvent::Terminated { id: 1 },
                ContextEvent::Terminated { id: 2 }
            ]
        );
        assert_eq!(log.dropped(), 0);
        log.push(ContextEvent::Destroyed { id: 1 });
        assert_eq!(
            log.take().collect::<Vec<_>>(),
            [ContextEvent::Destroyed { id: 1 }]
        );
        assert_eq!(log.dropped(), 0);
    }
}
