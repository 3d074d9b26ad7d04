//! W3C Trace Context (`traceparent`, `tracestate`): each request is a span of a distributed
//! trace. An incoming `traceparent` makes it a child of the caller's span; without one (or
//! with an invalid one) the trace starts here. Its fetches carry its span as their parent.
//!
//! The header format is `opentelemetry_sdk`'s `TraceContextPropagator`; ids come from its
//! `RandomIdGenerator`. Nothing here runs unless [`ServeConfig::trace_context`] is on.
//!
//! [`ServeConfig::trace_context`]: crate::ServeConfig::trace_context

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use weft_http_attrib::TraceFields;

/// Where one request sits in its trace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RequestSpan {
    pub(crate) trace_id: TraceId,
    /// This request's span: the parent of everything it fetches.
    pub(crate) span_id: SpanId,
    /// The caller's span; `None` when the trace began here.
    pub(crate) parent: Option<SpanId>,
    pub(crate) flags: TraceFlags,
    /// The caller's vendor state, passed on unchanged.
    state: TraceState,
}

impl RequestSpan {
    /// The span of a request that arrived with `headers`.
    pub(crate) fn for_incoming(headers: &http::HeaderMap) -> RequestSpan {
        let extracted = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let ids = RandomIdGenerator::default();
        let caller = extracted.span().span_context().clone();
        if caller.is_valid() {
            RequestSpan {
                trace_id: caller.trace_id(),
                span_id: new_span_id(&ids),
                parent: Some(caller.span_id()),
                flags: caller.trace_flags(),
                state: caller.trace_state().clone(),
            }
        } else {
            let mut trace_id = ids.new_trace_id();
            while trace_id == TraceId::INVALID {
                trace_id = ids.new_trace_id();
            }
            // Every request is logged, so every trace that starts here is recorded: sampled.
            RequestSpan {
                trace_id,
                span_id: new_span_id(&ids),
                parent: None,
                flags: TraceFlags::SAMPLED,
                state: TraceState::NONE,
            }
        }
    }

    /// Sets `traceparent` (this span as the parent) and `tracestate` on an outgoing request,
    /// replacing any the guest set: a guest's own value would detach the call from the trace.
    pub(crate) fn inject(&self, headers: &mut http::HeaderMap) {
        let context = SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            false,
            self.state.clone(),
        );
        let context = Context::new().with_remote_span_context(context);
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }

    /// Adds the ids to a Perfetto slice's arguments (`trace_id`, `span`, `parent`).
    pub(crate) fn annotate(&self, args: &mut serde_json::Value) {
        let hex = self.hex();
        args["trace_id"] = hex.trace_id.into();
        args["span"] = hex.span.into();
        args["parent"] = hex.parent.into();
    }

    /// The `tracestate` header value passed on (empty when there is none).
    pub(crate) fn trace_state_header(&self) -> String {
        self.state.header()
    }

    /// The ids as the access log shows them.
    pub(crate) fn hex(&self) -> SpanHex {
        SpanHex {
            trace_id: self.trace_id.to_string(),
            parent: self.parent.map(|p| p.to_string()),
            span: self.span_id.to_string(),
        }
    }
}

/// A random span id; the all-zero id is invalid in `traceparent`.
pub(crate) fn new_span_id(ids: &RandomIdGenerator) -> SpanId {
    loop {
        let id = ids.new_span_id();
        if id != SpanId::INVALID {
            return id;
        }
    }
}

/// [`RequestSpan`]'s ids in lowercase hex.
pub(crate) struct SpanHex {
    pub(crate) trace_id: String,
    pub(crate) parent: Option<String>,
    pub(crate) span: String,
}

impl SpanHex {
    pub(crate) fn fields(&self) -> TraceFields<'_> {
        TraceFields {
            trace_id: &self.trace_id,
            parent: self.parent.as_deref(),
            span: &self.span,
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = http::HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        // An empty `tracestate` is sent as no header at all (and a guest's own is dropped).
        match http::HeaderValue::from_str(&value) {
            Ok(value) if !value.is_empty() => {
                self.0.insert(name, value);
            }
            _ => {
                self.0.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn an_incoming_traceparent_is_continued_as_a_child_span() {
        let incoming = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=opaque,other=x"),
        ]);
        let span = RequestSpan::for_incoming(&incoming);
        assert_eq!(
            span.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.parent.unwrap().to_string(), "00f067aa0ba902b7");
        assert_ne!(span.span_id, span.parent.unwrap());

        let mut outgoing = headers(&[("traceparent", "guest-made"), ("x-other", "kept")]);
        span.inject(&mut outgoing);
        assert_eq!(
            outgoing["traceparent"],
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", span.span_id).as_str()
        );
        assert_eq!(outgoing["tracestate"], "vendor=opaque,other=x");
        assert_eq!(outgoing["x-other"], "kept");
    }

    #[test]
    fn without_a_valid_traceparent_a_new_sampled_trace_starts() {
        for incoming in [
            headers(&[]),
            headers(&[("traceparent", "garbage"), ("tracestate", "a=b")]),
            headers(&[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
        ] {
            let span = RequestSpan::for_incoming(&incoming);
            assert!(span.parent.is_none());
            assert_ne!(span.trace_id, TraceId::INVALID);
            let mut outgoing = headers(&[("tracestate", "guest=state")]);
            span.inject(&mut outgoing);
            let value = outgoing["traceparent"].to_str().unwrap().to_string();
            assert_eq!(
                value,
                format!("00-{}-{}-01", span.trace_id, span.span_id),
                "a fresh trace, this request's span the parent"
            );
            assert!(
                !outgoing.contains_key("tracestate"),
                "no state travels with a trace that began here"
            );
        }
    }

    #[test]
    fn two_requests_get_different_ids() {
        let a = RequestSpan::for_incoming(&headers(&[]));
        let b = RequestSpan::for_incoming(&headers(&[]));
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        let hex = a.hex();
        assert_eq!(hex.trace_id.len(), 32);
        assert_eq!(hex.span.len(), 16);
        assert_eq!(hex.fields().parent, None);
    }
}
