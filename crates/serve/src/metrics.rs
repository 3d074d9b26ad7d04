//! Prometheus metrics of a server ([`ServeConfig::metrics_addr`]), encoded in the Prometheus
//! text format by `prometheus-client`.
//!
//! What the registry of `weft-http-attrib` already counts ([`Stats`](weft_http_attrib::Stats):
//! refusals, outgoing requests, stragglers, instances created and dropped) and what it knows
//! at any moment (in flight, queue depth, live instances) is read from it at scrape time, not
//! counted a second time. The rest is counted here: finished requests by status and outcome,
//! latency histograms, requests served per instance, live contexts, stalls and CPU-budget
//! traps. A server without a metrics address has no [`Metrics`] and pays nothing.
//!
//! [`ServeConfig::metrics_addr`]: crate::ServeConfig::metrics_addr

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weft_http_attrib::{InstanceId, SharedRegistry, Summary};

use crate::dispatch::outcome_name;

/// The `Content-Type` of a `/metrics` answer.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Finished requests by (status, outcome); `None`: no response went out.
type FinishedCounts = HashMap<(Option<u16>, &'static str), u64>;

/// The metrics of one server.
pub(crate) struct Metrics {
    registry: Registry,
    finished: Arc<Mutex<FinishedCounts>>,
    response_time: Histogram,
    post_response: Histogram,
    instance_requests: Histogram,
    /// Requests started per live instance, observed into `instance_requests` when it is dropped.
    started_on: Mutex<HashMap<InstanceId, u64>>,
    stalls: Counter,
    cpu_budget_traps: Counter,
    live_contexts: Gauge,
}

impl Metrics {
    pub(crate) fn new(requests: SharedRegistry) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("weft");
        let seconds = || Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let (response_time, post_response) = (seconds(), seconds());
        let instance_requests = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let (stalls, cpu_budget_traps) = (Counter::default(), Counter::default());
        let live_contexts = Gauge::default();
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response (to its end when none went out)",
            response_time.clone(),
        );
        registry.register(
            "post_response_seconds",
            "Time work for a request went on after its response",
            post_response.clone(),
        );
        registry.register(
            "instance_requests",
            "Requests an instance served, observed when it is dropped (its reuse)",
            instance_requests.clone(),
        );
        registry.register(
            "stalls",
            "Contexts still running at an epoch tick: their instance took no new requests until \
             they came back to the host",
            stalls.clone(),
        );
        registry.register(
            "cpu_budget_traps",
            "Requests trapped for exceeding their CPU budget",
            cpu_budget_traps.clone(),
        );
        registry.register(
            "contexts_live",
            "WASIX contexts alive in all instances (handlers and the contexts they created)",
            live_contexts.clone(),
        );
        let finished = Arc::new(Mutex::new(HashMap::new()));
        registry.register_collector(Box::new(FromRegistry {
            registry: requests,
            finished: finished.clone(),
        }));
        Arc::new(Metrics {
            registry,
            finished,
            response_time,
            post_response,
            instance_requests,
            started_on: Mutex::new(HashMap::new()),
            stalls,
            cpu_budget_traps,
            live_contexts,
        })
    }

    /// A request finished (answered `status`, or not answered).
    pub(crate) fn request_finished(&self, summary: &Summary, status: Option<u16>) {
        *lock(&self.finished)
            .entry((status, outcome_name(&summary.outcome)))
            .or_default() += 1;
        self.response_time
            .observe(summary.response_time().as_secs_f64());
        if summary.responded_at.is_some() {
            self.post_response
                .observe(summary.post_response_time().as_secs_f64());
        }
    }

    /// A request was started on `instance`.
    pub(crate) fn request_started(&self, instance: InstanceId) {
        *lock(&self.started_on).entry(instance).or_default() += 1;
    }

    /// `instance` was dropped: its reuse is observed.
    pub(crate) fn instance_dropped(&self, instance: InstanceId) {
        let served = lock(&self.started_on).remove(&instance).unwrap_or(0);
        self.instance_requests.observe(served as f64);
    }

    pub(crate) fn stalled(&self) {
        self.stalls.inc();
    }

    pub(crate) fn cpu_budget_trapped(&self) {
        self.cpu_budget_traps.inc();
    }

    /// Everything, in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String fails only if an encoder does, and ours do not.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A poisoned counter map is still a valid map: counting goes on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One instance's share of `weft_contexts_live`: it reports its live count after every change
/// it applies, and takes it back when it is dropped, however the instance ended.
pub(crate) struct ContextGauge {
    metrics: Option<Arc<Metrics>>,
    reported: i64,
}

impl ContextGauge {
    pub(crate) fn new(metrics: Option<Arc<Metrics>>) -> Self {
        ContextGauge {
            metrics,
            reported: 0,
        }
    }

    /// The instance now has `live` contexts.
    pub(crate) fn set(&mut self, live: usize) {
        let Some(metrics) = &self.metrics else { return };
        let live = i64::try_from(live).unwrap_or(i64::MAX);
        if live != self.reported {
            metrics.live_contexts.inc_by(live - self.reported);
            self.reported = live;
        }
    }
}

impl Drop for ContextGauge {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// What the attribution registry knows, read at scrape time.
struct FromRegistry {
    registry: SharedRegistry,
    finished: Arc<Mutex<FinishedCounts>>,
}

impl fmt::Debug for FromRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromRegistry").finish_non_exhaustive()
    }
}

impl Collector for FromRegistry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // One consistent reading, and the registry lock is not held while encoding.
        let (stats, in_flight, queued, live, retiring) = {
            let registry = self.registry.lock();
            (
                registry.stats().clone(),
                registry.in_flight(),
                registry.queue_len(),
                registry.instance_count(),
                registry.retiring_instance_count(),
            )
        };
        let mut finished: Vec<((String, &'static str), u64)> = lock(&self.finished)
            .iter()
            .map(|(&(status, outcome), &n)| {
                (
                    (status.map_or("-".to_string(), |s| s.to_string()), outcome),
                    n,
                )
            })
            .collect();
        // Refused requests never reach an instance: the registry counted them. (Help texts end
        // in a full stop here as `Registry::register` adds one to the others.)
        for (status, outcome, n) in [
            ("508", "refused_loop", stats.refused_loop),
            ("503", "refused_overload", stats.refused_overload),
            ("503", "refused_shutdown", stats.refused_shutdown),
        ] {
            if n > 0 {
                finished.push(((status.to_string(), outcome), n));
            }
        }
        finished.sort();
        {
            let mut family = encoder.encode_descriptor(
                "requests",
                "Requests finished or refused, by status (- when none was sent) and outcome.",
                None,
                MetricType::Counter,
            )?;
            for ((status, outcome), n) in &finished {
                let labels = [("status", status.as_str()), ("outcome", *outcome)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        let counters = [
            (
                "outgoing_requests",
                "Outgoing requests (fetches) made by guests.",
                stats.outgoing,
            ),
            (
                "stragglers",
                "Contexts still working for a request at its drain deadline, killed.",
                stats.stragglers,
            ),
            (
                "requeued",
                "Requests moved off a trapped instance to run again elsewhere.",
                stats.requeued,
            ),
            (
                "instances_created",
                "Instances created.",
                stats.instances_created,
            ),
            (
                "instances_retired",
                "Instances dropped after retiring or trapping.",
                stats.instances_dropped,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "requests_in_flight",
                "Requests started and not yet answered.",
                in_flight,
            ),
            ("queue_depth", "Requests waiting for an instance.", queued),
            ("instances_live", "Live instances.", live),
            (
                "instances_retiring",
                "Live instances that take no new requests and are dropped once empty.",
                retiring,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
