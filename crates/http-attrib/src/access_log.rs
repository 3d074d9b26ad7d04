//! The per-request access log line.
//!
//! One line per finished request, `key=value` pairs (logfmt), so it is read
//! by eye and split by `grep`/`awk`/log shippers alike:
//!
//! ```text
//! 2026-11-21T14:03:07.412Z request=r17 id=3f2a9c0d11e4b7a8-17 instance=i2 method=GET path=/users/7 status=200 dur_ms=1.874 outgoing=2 post_response_ms=0.350 outcome=completed
//! ```
//!
//! `dur_ms` runs from arrival to response, `post_response_ms` from response
//! to the end of the last work for the request. Values with spaces, quotes,
//! `=` or control characters are quoted with backslash escapes.
//!
//! A server that propagates W3C Trace Context appends the request's span:
//! `trace_id=<32 hex> parent=<16 hex, or - when the trace began here>
//! span=<16 hex>`, so a request's line in one server's log is found from
//! another's by `parent` = `span`.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::registry::{Outcome, Summary};

/// Everything a line shows. `summary` comes from the registry; the HTTP
/// pieces from the front end.
#[derive(Debug, Clone)]
pub struct AccessLogLine<'a> {
    /// When the request finished, as wall-clock time.
    pub finished_at: SystemTime,
    /// The registry's record of the request: ids, timings, outgoing count
    /// and outcome.
    pub summary: &'a Summary,
    /// The request's `weft-request-id` header value, as its outgoing calls
    /// carried it.
    pub header_id: &'a str,
    /// The HTTP method, as received.
    pub method: &'a str,
    /// The request target as received (path, and query if any); quoted in
    /// the line when it holds spaces, quotes or `=`.
    pub path: &'a str,
    /// The status sent; `None` when no response went out.
    pub status: Option<u16>,
    /// The request's span in a distributed trace, when the server keeps one.
    pub trace: Option<TraceFields<'a>>,
}

/// Where a request sits in a distributed trace (W3C Trace Context ids, in
/// lowercase hex as they travel in `traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceFields<'a> {
    /// The trace the request belongs to (32 hex digits).
    pub trace_id: &'a str,
    /// The caller's span (16 hex digits); `None` when the trace began here.
    pub parent: Option<&'a str>,
    /// The request's own span (16 hex digits), the parent of its outgoing calls.
    pub span: &'a str,
}

impl fmt::Display for AccessLogLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.summary;
        write_rfc3339_millis(f, self.finished_at)?;
        write!(f, " request={} id=", s.request)?;
        write_value(f, self.header_id)?;
        match s.instance {
            Some(instance) => write!(f, " instance={instance}")?,
            None => f.write_str(" instance=-")?,
        }
        f.write_str(" method=")?;
        write_value(f, self.method)?;
        f.write_str(" path=")?;
        write_value(f, self.path)?;
        match self.status {
            Some(status) => write!(f, " status={status}")?,
            None => f.write_str(" status=-")?,
        }
        write!(
            f,
            " dur_ms={:.3} outgoing={} post_response_ms={:.3} outcome=",
            s.response_time().as_secs_f64() * 1e3,
            s.outgoing,
            s.post_response_time().as_secs_f64() * 1e3,
        )?;
        match s.outcome {
            Outcome::Completed => f.write_str("completed")?,
            Outcome::Drained { stragglers } => write!(f, "drained stragglers={stragglers}")?,
            Outcome::NoResponse => f.write_str("no_response")?,
            Outcome::Failed => f.write_str("failed")?,
        }
        if let Some(trace) = &self.trace {
            f.write_str(" trace_id=")?;
            write_value(f, trace.trace_id)?;
            f.write_str(" parent=")?;
            write_value(f, trace.parent.unwrap_or("-"))?;
            f.write_str(" span=")?;
            write_value(f, trace.span)?;
        }
        Ok(())
    }
}

fn write_value(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '"' && c != '=' && c != '\\');
    if plain {
        return f.write_str(value);
    }
    f.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC; times before 1970 print as the epoch.
fn write_rfc3339_millis(f: &mut fmt::Formatter<'_>, at: SystemTime) -> fmt::Result {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    write!(
        f,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{InstanceId, RequestId};
    use std::time::{Duration, Instant};

    fn summary(outcome: Outcome) -> Summary {
        let t0 = Instant::now();
        Summary {
            request: RequestId::from_seq(17),
            instance: Some(InstanceId(2)),
            outcome,
            outgoing: 2,
            submitted_at: t0,
            started_at: Some(t0 + Duration::from_micros(100)),
            responded_at: Some(t0 + Duration::from_micros(1874)),
            finished_at: t0 + Duration::from_micros(2224),
        }
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
    }

    #[test]
    fn line_has_every_field() {
        let s = summary(Outcome::Completed);
        let line = AccessLogLine {
            finished_at: UNIX_EPOCH + Duration::from_millis(1_795_269_787_412),
            summary: &s,
            header_id: "3f2a9c0d11e4b7a8-17",
            method: "GET",
            path: "/users/7",
            status: Some(200),
            trace: None,
        };
        assert_eq!(
            line.to_string(),
            "2026-11-21T14:03:07.412Z request=r17 id=3f2a9c0d11e4b7a8-17 instance=i2 method=GET \
             path=/users/7 status=200 dur_ms=1.874 outgoing=2 post_response_ms=0.350 outcome=completed"
        );
    }

    #[test]
    fn awkward_values_are_quoted_and_escaped() {
        let s = summary(Outcome::Drained { stragglers: 3 });
        let line = AccessLogLine {
            finished_at: UNIX_EPOCH,
            summary: &s,
            header_id: "x",
            method: "",
            path: "/a b?q=\"1\"\\\n",
            status: None,
            trace: None,
        }
        .to_string();
        assert!(line.starts_with("1970-01-01T00:00:00.000Z "), "{line}");
        assert!(line.contains(r#" method="" "#), "{line}");
        assert!(line.contains(r#" path="/a b?q=\"1\"\\\n" "#), "{line}");
        assert!(line.contains(" status=- "), "{line}");
        assert!(line.ends_with(" outcome=drained stragglers=3"), "{line}");
        assert_eq!(line.lines().count(), 1, "one line, whatever the path holds");
    }

    #[test]
    fn trace_fields_come_last_and_a_root_span_has_no_parent() {
        let s = summary(Outcome::Completed);
        let line = |parent| {
            AccessLogLine {
                finished_at: UNIX_EPOCH,
                summary: &s,
                header_id: "x",
                method: "GET",
                path: "/",
                status: Some(200),
                trace: Some(TraceFields {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                    parent,
                    span: "00f067aa0ba902b7",
                }),
            }
            .to_string()
        };
        assert!(
            line(Some("b7ad6b7169203331")).ends_with(
                " outcome=completed trace_id=4bf92f3577b34da6a3ce929d0e0e4736 \
                 parent=b7ad6b7169203331 span=00f067aa0ba902b7"
            ),
            "{}",
            line(None)
        );
        assert!(line(None).contains(" parent=- span="), "{}", line(None));
    }
}
