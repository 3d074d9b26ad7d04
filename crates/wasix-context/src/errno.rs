//! The WASI errno numbers weft's guest ABIs return: the one definition the host code, the
//! ABI documents and the C headers are checked against (`wasi_snapshot_preview1` numbering,
//! the same as wasi-libc's `<errno.h>`).

/// A WASI errno. `wasix_32v1.context_*` returns it as is; the `weft_http_v1` imports return
/// it negated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(i32)]
pub enum Errno {
    /// A limit is reached (live contexts, open handles), or a result is not there yet.
    #[error("resource temporarily unavailable (EAGAIN)")]
    Again = 6,
    /// The operation was already done (a response already sent).
    #[error("operation already in progress (EALREADY)")]
    Already = 7,
    /// No such handle.
    #[error("bad handle (EBADF)")]
    Badf = 8,
    /// The peer refused the connection.
    #[error("connection refused (ECONNREFUSED)")]
    Connrefused = 14,
    /// A pointer the guest passed is outside its memory.
    #[error("bad address (EFAULT)")]
    Fault = 21,
    /// An argument is invalid: a bad id, entrypoint, size, name, URL, or a wrong state.
    #[error("invalid argument (EINVAL)")]
    Inval = 28,
    /// An I/O error on an outgoing connection.
    #[error("I/O error (EIO)")]
    Io = 29,
    /// A message is larger than allowed (an upstream response body).
    #[error("message too large (EMSGSIZE)")]
    Msgsize = 35,
    /// No such entry (a request header that is not there).
    #[error("no such entry (ENOENT)")]
    Noent = 44,
    /// Memory cannot grow to hold what was asked (a context's shadow stack).
    #[error("out of memory (ENOMEM)")]
    Nomem = 48,
    /// The other end is gone (the client of a streamed response hung up).
    #[error("broken pipe (EPIPE)")]
    Pipe = 64,
    /// An outgoing request timed out.
    #[error("timed out (ETIMEDOUT)")]
    Timedout = 73,
}

impl Errno {
    /// Every errno, in numeric order.
    pub const ALL: [Errno; 12] = [
        Errno::Again,
        Errno::Already,
        Errno::Badf,
        Errno::Connrefused,
        Errno::Fault,
        Errno::Inval,
        Errno::Io,
        Errno::Msgsize,
        Errno::Noent,
        Errno::Nomem,
        Errno::Pipe,
        Errno::Timedout,
    ];

    /// The number, as the guest sees it.
    pub fn raw(self) -> i32 {
        self as i32
    }

    /// The C name (`EAGAIN`...).
    pub fn name(self) -> &'static str {
        match self {
            Errno::Again => "EAGAIN",
            Errno::Already => "EALREADY",
            Errno::Badf => "EBADF",
            Errno::Connrefused => "ECONNREFUSED",
            Errno::Fault => "EFAULT",
            Errno::Inval => "EINVAL",
            Errno::Io => "EIO",
            Errno::Msgsize => "EMSGSIZE",
            Errno::Noent => "ENOENT",
            Errno::Nomem => "ENOMEM",
            Errno::Pipe => "EPIPE",
            Errno::Timedout => "ETIMEDOUT",
        }
    }

    /// The errno numbered `raw`, if it is one of these.
    pub fn from_raw(raw: i32) -> Option<Errno> {
        Errno::ALL.into_iter().find(|e| e.raw() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_sorted_complete_and_round_trips() {
        for pair in Errno::ALL.windows(2) {
            assert!(pair[0].raw() < pair[1].raw());
        }
        for errno in Errno::ALL {
            assert_eq!(Errno::from_raw(errno.raw()), Some(errno));
            assert!(errno.to_string().contains(errno.name()));
        }
        assert_eq!(Errno::from_raw(0), None);
    }
}
