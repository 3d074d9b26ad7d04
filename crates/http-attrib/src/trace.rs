//! Chrome trace event output (`--trace FILE.json`), as Perfetto and
//! `chrome://tracing` open it.
//!
//! Layout: one process per instance ("instance i3"), so each instance is one
//! track group. Inside it, requests are slices on "requests" lanes (a request
//! keeps its lane from start to finish, post-response work included);
//! outgoing calls are slices on "upstream" lanes; each green-thread context
//! has its own track with a slice per run. A flow arrow goes from each
//! request's slice to every outgoing call attributed to it.
//!
//! Slices are written whole when they end, so the file never holds an
//! unclosed slice; lanes are allocated so that slices on one track never
//! overlap (the viewers draw overlapping slices of one track wrongly).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::time::Instant;

use serde_json::{Value, json};

use crate::ids::{InstanceId, RequestId};

// Perfetto reads pids and tids as 32-bit: every tid stays below 2^32.
const REQUEST_LANE_TID: u64 = 1;
const UPSTREAM_LANE_TID: u64 = 1 << 20;
const CONTEXT_TID: u64 = 1 << 21;
const CONTEXT_TID_MASK: u64 = (1 << 31) - 1;

/// An outgoing call whose start was traced; see [`TraceWriter::outgoing_started`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutgoingSpan {
    flow: u64,
    instance: InstanceId,
    request: RequestId,
    start: Instant,
}

#[derive(Debug)]
struct OpenRequest {
    instance: InstanceId,
    lane: usize,
    start: Instant,
}

/// Writes trace events as they happen. Call [`TraceWriter::finish`] at the
/// end to close the JSON document (a file cut short still opens in
/// Perfetto, which accepts an unterminated event array).
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
    origin: Instant,
    first_event: bool,
    named_instances: HashSet<InstanceId>,
    named_tracks: HashSet<(InstanceId, u64)>,
    /// Per instance: which request lane is taken.
    request_lanes: HashMap<InstanceId, Vec<bool>>,
    /// Per instance: when the last slice on each upstream lane ends.
    upstream_lanes: HashMap<InstanceId, Vec<Instant>>,
    open_requests: HashMap<RequestId, OpenRequest>,
    next_flow: u64,
}

impl<W: Write> TraceWriter<W> {
    /// Starts the document; timestamps count from `origin`.
    pub fn new(mut out: W, origin: Instant) -> io::Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
        Ok(TraceWriter {
            out,
            origin,
            first_event: true,
            named_instances: HashSet::new(),
            named_tracks: HashSet::new(),
            request_lanes: HashMap::new(),
            upstream_lanes: HashMap::new(),
            open_requests: HashMap::new(),
            next_flow: 1,
        })
    }

    fn micros(&self, at: Instant) -> f64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        // Whole nanoseconds, as microseconds with three decimals.
        nanos as f64 / 1000.0
    }

    fn emit(&mut self, event: Value) -> io::Result<()> {
        if !self.first_event {
            self.out.write_all(b",\n")?;
        }
        self.first_event = false;
        serde_json::to_writer(&mut self.out, &event).map_err(io::Error::other)
    }

    fn name_instance(&mut self, instance: InstanceId) -> io::Result<()> {
        if self.named_instances.insert(instance) {
            let pid = instance.get();
            self.emit(
                json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                "args": {"name": format!("instance {instance}")}}),
            )?;
            self.emit(
                json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                "args": {"sort_index": pid}}),
            )?;
        }
        Ok(())
    }

    fn name_track(&mut self, instance: InstanceId, tid: u64, name: String) -> io::Result<()> {
        self.name_instance(instance)?;
        if self.named_tracks.insert((instance, tid)) {
            let pid = instance.get();
            self.emit(
                json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                "args": {"name": name}}),
            )?;
            self.emit(
                json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                "args": {"sort_index": tid}}),
            )?;
        }
        Ok(())
    }

    /// Names the instance's track group now (it is named on first use
    /// otherwise), so an instance that served nothing still shows.
    pub fn instance_started(&mut self, instance: InstanceId) -> io::Result<()> {
        self.name_instance(instance)
    }

    /// `request` started on `instance` at `at`.
    pub fn request_started(
        &mut self,
        request: RequestId,
        instance: InstanceId,
        at: Instant,
    ) -> io::Result<()> {
        let lanes = self.request_lanes.entry(instance).or_default();
        let lane = match lanes.iter().position(|taken| !taken) {
            Some(free) => free,
            None => {
                lanes.push(false);
                lanes.len() - 1
            }
        };
        lanes[lane] = true;
        self.open_requests.insert(
            request,
            OpenRequest {
                instance,
                lane,
                start: at,
            },
        );
        self.name_track(
            instance,
            REQUEST_LANE_TID + lane as u64,
            format!("requests #{lane}"),
        )
    }

    /// `request` finished at `at`; `label` names its slice (say `GET /x 200`)
    /// and `args` are shown with it. Unknown requests are ignored (never
    /// started, or already finished), so tracing never fails a request.
    pub fn request_finished(
        &mut self,
        request: RequestId,
        at: Instant,
        label: &str,
        args: Value,
    ) -> io::Result<()> {
        let Some(open) = self.open_requests.remove(&request) else {
            return Ok(());
        };
        if let Some(lanes) = self.request_lanes.get_mut(&open.instance) {
            lanes[open.lane] = false;
        }
        let ts = self.micros(open.start);
        let dur = self.micros(at) - ts;
        self.emit(json!({"ph": "X", "cat": "request", "name": label,
            "pid": open.instance.get(), "tid": REQUEST_LANE_TID + open.lane as u64,
            "ts": ts, "dur": dur.max(0.0),
            "args": merge(json!({"request": request.to_string()}), args)}))
    }

    /// An outgoing call attributed to `request` (which must have been
    /// started) began at `at`: the flow arrow starts on the request's slice.
    /// `None` if the request is not open in this trace.
    pub fn outgoing_started(
        &mut self,
        request: RequestId,
        at: Instant,
    ) -> io::Result<Option<OutgoingSpan>> {
        let Some(open) = self.open_requests.get(&request) else {
            return Ok(None);
        };
        let (instance, tid) = (open.instance, REQUEST_LANE_TID + open.lane as u64);
        let flow = self.next_flow;
        self.next_flow += 1;
        let ts = self.micros(at);
        self.emit(
            json!({"ph": "s", "cat": "attribution", "name": "outgoing", "id": flow,
            "pid": instance.get(), "tid": tid, "ts": ts}),
        )?;
        Ok(Some(OutgoingSpan {
            flow,
            instance,
            request,
            start: at,
        }))
    }

    /// The outgoing call ended at `at`: its slice, and the arrow's head.
    pub fn outgoing_finished(
        &mut self,
        span: OutgoingSpan,
        at: Instant,
        label: &str,
        args: Value,
    ) -> io::Result<()> {
        let lanes = self.upstream_lanes.entry(span.instance).or_default();
        let lane = match lanes
            .iter()
            .position(|&busy_until| busy_until <= span.start)
        {
            Some(free) => free,
            None => {
                lanes.push(span.start);
                lanes.len() - 1
            }
        };
        lanes[lane] = at.max(span.start);
        let tid = UPSTREAM_LANE_TID + lane as u64;
        self.name_track(span.instance, tid, format!("upstream #{lane}"))?;
        let ts = self.micros(span.start);
        let dur = (self.micros(at) - ts).max(0.0);
        let pid = span.instance.get();
        self.emit(
            json!({"ph": "X", "cat": "outgoing", "name": label, "pid": pid, "tid": tid,
            "ts": ts, "dur": dur,
            "args": merge(json!({"request": span.request.to_string()}), args)}),
        )?;
        // The arrow's head binds to the slice enclosing its timestamp: put it
        // inside the slice rather than on its first instant, where a viewer
        // that orders events of equal time differently could miss it.
        self.emit(
            json!({"ph": "f", "bp": "e", "cat": "attribution", "name": "outgoing",
            "id": span.flow, "pid": pid, "tid": tid, "ts": ts + dur / 2.0}),
        )
    }

    /// Green-thread context `context` of `instance` ran from `start` to
    /// `end` (until it switched away, blocked or exited), for `request`.
    pub fn context_run(
        &mut self,
        instance: InstanceId,
        context: u64,
        request: Option<RequestId>,
        start: Instant,
        end: Instant,
    ) -> io::Result<()> {
        let tid = CONTEXT_TID + (context & CONTEXT_TID_MASK);
        self.name_track(instance, tid, format!("context {context}"))?;
        let ts = self.micros(start);
        let dur = (self.micros(end) - ts).max(0.0);
        let request = request.map_or(Value::Null, |r| Value::String(r.to_string()));
        self.emit(
            json!({"ph": "X", "cat": "context", "name": "run", "pid": instance.get(),
            "tid": tid, "ts": ts, "dur": dur, "args": {"context": context, "request": request}}),
        )
    }

    /// Closes the document and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(origin: Instant, n: u64) -> Instant {
        origin + Duration::from_millis(n)
    }

    struct Slice {
        pid: u64,
        tid: u64,
        ts: f64,
        end: f64,
        cat: String,
        request: Option<String>,
    }

    fn slices(events: &[Value]) -> Vec<Slice> {
        events
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| Slice {
                pid: e["pid"].as_u64().unwrap(),
                tid: e["tid"].as_u64().unwrap(),
                ts: e["ts"].as_f64().unwrap(),
                end: e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap(),
                cat: e["cat"].as_str().unwrap().to_owned(),
                request: e["args"]["request"].as_str().map(str::to_owned),
            })
            .collect()
    }

    /// Two instances, overlapping requests, outgoing calls (one after the
    /// response), and context runs: the document is valid JSON, slices on
    /// one track never cross, and every arrow joins a request to an
    /// outgoing call attributed to it.
    #[test]
    fn a_trace_has_tracks_spans_and_flows_perfetto_can_bind() {
        let origin = Instant::now();
        let mut w = TraceWriter::new(Vec::new(), origin).unwrap();
        let (i1, i2) = (InstanceId(1), InstanceId(2));
        let (a, b, c) = (
            RequestId::from_seq(1),
            RequestId::from_seq(2),
            RequestId::from_seq(3),
        );
        w.instance_started(i1).unwrap();
        w.instance_started(i2).unwrap();
        w.request_started(a, i1, ms(origin, 0)).unwrap();
        w.request_started(b, i1, ms(origin, 1)).unwrap();
        w.request_started(c, i2, ms(origin, 1)).unwrap();
        let oa1 = w.outgoing_started(a, ms(origin, 2)).unwrap().unwrap();
        let ob = w.outgoing_started(b, ms(origin, 3)).unwrap().unwrap();
        let oa2 = w.outgoing_started(a, ms(origin, 4)).unwrap().unwrap();
        w.context_run(i1, 7, Some(a), ms(origin, 0), ms(origin, 2))
            .unwrap();
        w.context_run(i1, 7, Some(a), ms(origin, 6), ms(origin, 7))
            .unwrap();
        w.context_run(i1, u64::MAX, None, ms(origin, 6), ms(origin, 7))
            .unwrap();
        w.outgoing_finished(
            oa1,
            ms(origin, 6),
            "GET http://up/a",
            json!({"status": 200}),
        )
        .unwrap();
        w.outgoing_finished(ob, ms(origin, 5), "GET http://up/b", json!({}))
            .unwrap();
        w.outgoing_finished(oa2, ms(origin, 9), "GET http://up/a2", json!({}))
            .unwrap();
        w.request_finished(c, ms(origin, 3), "GET /c 200", json!({"status": 200}))
            .unwrap();
        w.request_finished(b, ms(origin, 8), "GET /b 200", json!({}))
            .unwrap();
        w.request_finished(
            a,
            ms(origin, 10),
            "GET /a 200",
            json!({"post_response_ms": 4.0}),
        )
        .unwrap();
        // A request that never started on this trace is ignored.
        w.request_finished(RequestId::from_seq(9), ms(origin, 11), "x", json!({}))
            .unwrap();
        assert!(w.outgoing_started(a, ms(origin, 12)).unwrap().is_none());
        // Lanes are reused once free.
        let d = RequestId::from_seq(4);
        w.request_started(d, i1, ms(origin, 12)).unwrap();
        w.request_finished(d, ms(origin, 13), "GET /d 200", json!({}))
            .unwrap();
        let bytes = w.finish().unwrap();

        let doc: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        let events = doc["traceEvents"].as_array().unwrap();
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "process_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["instance i1", "instance i2"]);

        let all = slices(events);
        assert_eq!(all.iter().filter(|s| s.cat == "request").count(), 4);
        assert_eq!(all.iter().filter(|s| s.cat == "outgoing").count(), 3);
        assert_eq!(all.iter().filter(|s| s.cat == "context").count(), 3);
        let request_tracks: HashSet<(u64, u64)> = all
            .iter()
            .filter(|s| s.cat == "request" && s.pid == 1)
            .map(|s| (s.pid, s.tid))
            .collect();
        assert_eq!(
            request_tracks.len(),
            2,
            "a and b overlap: two lanes; d reuses one"
        );
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                if (x.pid, x.tid) == (y.pid, y.tid) {
                    let disjoint = x.end <= y.ts || y.end <= x.ts;
                    let nested =
                        (x.ts <= y.ts && y.end <= x.end) || (y.ts <= x.ts && x.end <= y.end);
                    assert!(disjoint || nested, "crossing slices on one track");
                }
            }
        }

        let flows = |ph: &str| -> HashMap<u64, (u64, u64, f64)> {
            events
                .iter()
                .filter(|e| e["ph"] == ph)
                .map(|e| {
                    let at = (
                        e["pid"].as_u64().unwrap(),
                        e["tid"].as_u64().unwrap(),
                        e["ts"].as_f64().unwrap(),
                    );
                    (e["id"].as_u64().unwrap(), at)
                })
                .collect()
        };
        let (starts, ends) = (flows("s"), flows("f"));
        assert_eq!(starts.len(), 3);
        assert_eq!(
            starts.keys().collect::<HashSet<_>>(),
            ends.keys().collect::<HashSet<_>>()
        );
        for (id, (pid, tid, ts)) in &starts {
            let from = all
                .iter()
                .find(|s| {
                    s.cat == "request"
                        && (s.pid, s.tid) == (*pid, *tid)
                        && s.ts <= *ts
                        && *ts <= s.end
                })
                .expect("an arrow starts inside a request slice");
            let (epid, etid, ets) = ends[id];
            let to = all
                .iter()
                .find(|s| {
                    s.cat == "outgoing"
                        && (s.pid, s.tid) == (epid, etid)
                        && s.ts <= ets
                        && ets <= s.end
                })
                .expect("an arrow ends inside an outgoing slice");
            assert_eq!(
                from.request, to.request,
                "the arrow joins a call to its own request"
            );
        }
        assert!(
            events
                .iter()
                .all(|e| e["ts"].as_f64().is_none_or(|ts| ts >= 0.0))
        );
        // Perfetto reads pids and tids as 32-bit numbers.
        let fits_u32 = |v: &Value| v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX));
        assert!(
            events
                .iter()
                .all(|e| fits_u32(&e["pid"]) && fits_u32(&e["tid"]))
        );
    }
}
