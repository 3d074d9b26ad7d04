//! Identifiers that outlive the slots they are stored in.

use std::fmt;
use std::num::NonZeroU64;

/// One incoming HTTP request, for the whole life of a server.
///
/// Allocated from a counter that only goes up, so an id is never handed to a
/// second request (unlike wasmtime's `GuestTaskId`, a table slot that is reused
/// as soon as its task is deleted). Its value doubles as the token a guest hands
/// back to [`enter`](crate::Attribution::enter) to say which request it works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(NonZeroU64);

impl RequestId {
    pub(crate) fn from_seq(seq: u64) -> Self {
        RequestId(NonZeroU64::new(seq).expect("request sequence starts at 1"))
    }

    /// The raw value, as a guest sees it (the override token).
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// Reads a token a guest passed back. `None` for 0, which no request has.
    /// Whether the request is still live is the registry's question.
    pub fn from_token(token: u64) -> Option<Self> {
        NonZeroU64::new(token).map(RequestId)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// One guest instance (a Store and what runs in it), never reused either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub(crate) u64);

impl InstanceId {
    /// The raw value: the number after `i` in logs, and the process id of
    /// the instance's track in a trace.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}
