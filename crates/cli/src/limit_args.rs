//! The flags that bound what guests and clients may use, each range-checked by clap so a value
//! that would overflow or mean nothing is refused with a clear message (exit 2), never passed on.

use std::time::Duration;

use weft_serve::Limits;

/// Bytes, from `MIN` to `MAX`, as a clap value parser.
fn bytes(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(min..=max)
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Seconds: a finite number above 0 and at most a day.
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "`{text}`: give a number of seconds above 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Range checks of the context flags shared by `weft run` and `weft serve`.
pub(crate) mod contexts {
    use super::*;

    /// `--max-contexts`.
    pub(crate) fn max_contexts() -> clap::builder::RangedU64ValueParser<u64> {
        clap::value_parser!(u64).range(1..=1 << 20)
    }
    /// `--max-live-contexts`.
    pub(crate) fn max_live_contexts() -> clap::builder::RangedU64ValueParser<u64> {
        clap::value_parser!(u64).range(1..=1 << 24)
    }
    /// `--context-stack-size`: at least weft-wasix-context's minimum, at most 1 GiB.
    pub(crate) fn stack_size() -> clap::builder::RangedU64ValueParser<u64> {
        bytes(weft_wasix_context::MIN_STACK_SIZE as u64, GIB)
    }
    /// `--shadow-stack-size`: a page at least (C frames need room), at most 256 MiB.
    pub(crate) fn shadow_stack_size() -> clap::builder::RangedU64ValueParser<u64> {
        bytes(4 * KIB, 256 * MIB)
    }
}

/// `weft serve`'s limits (`docs/SECURITY.md`).
#[derive(clap::Args, Debug)]
pub(crate) struct LimitArgs {
    /// Seconds a request has to answer; then 504 and its contexts are killed [default: 60]
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    request_timeout: Option<Duration>,
    /// Seconds a shutdown (SIGINT/SIGTERM) may take; then what is left is killed, exit 1 [default: 30]
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    shutdown_timeout: Option<Duration>,
    /// Seconds a client has to send a request head, and a kept-alive connection may idle [default: 30]
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    header_timeout: Option<Duration>,
    /// Seconds a client has to send a request body; then 408 [default: 30]
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    body_timeout: Option<Duration>,
    /// Open client connections in all [default: 4096]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_connections: Option<u64>,
    /// Open client connections per client address [default: 256]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_connections_per_client: Option<u64>,
    /// Response body bytes a guest may write per request in all; response_write beyond it: EMSGSIZE [default: 16 MiB]
    #[arg(long, value_name = "BYTES", value_parser = bytes(0, 1 << 40))]
    max_response_body: Option<u64>,
    /// Response body bytes the host holds per request; a larger body streams to the client and the guest waits for it to read [default: 256 KiB]
    #[arg(long, value_name = "BYTES", value_parser = bytes(1, GIB))]
    response_buffer: Option<u64>,
    /// Linear memory per instance, bytes; memory.grow beyond it fails [default: 256 MiB]
    #[arg(long, value_name = "BYTES", value_parser = bytes(64 * KIB, 4 * GIB))]
    max_instance_memory: Option<u64>,
    /// Live contexts of all instances together; context_create beyond it fails with EAGAIN [default: from vm.max_map_count]
    #[arg(long, value_name = "N", value_parser = contexts::max_live_contexts())]
    max_live_contexts: Option<u64>,
    /// Linear memory of all instances together, bytes [default: 4 GiB]
    #[arg(long, value_name = "BYTES", value_parser = bytes(64 * KIB, 1 << 40))]
    memory_budget: Option<u64>,
}

impl LimitArgs {
    /// The limits, defaults where a flag was not given.
    pub(crate) fn apply(&self, limits: &mut Limits) {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        if let Some(v) = self.request_timeout {
            limits.request_timeout = v;
        }
        if let Some(v) = self.shutdown_timeout {
            limits.shutdown_timeout = v;
        }
        if let Some(v) = self.header_timeout {
            limits.header_timeout = v;
        }
        if let Some(v) = self.body_timeout {
            limits.body_timeout = v;
        }
        if let Some(v) = self.max_connections {
            limits.max_connections = size(v);
        }
        if let Some(v) = self.max_connections_per_client {
            limits.max_connections_per_client = size(v);
        }
        if let Some(v) = self.max_response_body {
            limits.max_response_body = size(v);
        }
        if let Some(v) = self.response_buffer {
            limits.response_buffer = size(v);
        }
        if let Some(v) = self.max_instance_memory {
            limits.max_instance_memory = size(v);
            // Retire an instance once it holds half of what it may.
            limits.retire_memory = limits.retire_memory.min(size(v) / 2);
        }
        if let Some(v) = self.max_live_contexts {
            limits.max_live_contexts = size(v);
        }
        if let Some(v) = self.memory_budget {
            limits.memory_budget = size(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_positive_finite_and_at_most_a_day() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "nan", "inf", "86401", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
