//! A component's response on its way to the client. The request's connection reads the body
//! (the green thread that sends it: no hop to another one per request): held whole while it
//! fits the response buffer, the client then gets it with its length; past the buffer the head
//! goes out and the body streams ([`BodyStream`]) from a green thread of its own, the guest's
//! body read only as fast as the client takes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::mpsc::UnboundedSender;
use http_body_util::BodyExt;
use wasmtime_wasi_http::WasiBody;
use weft_http_attrib::REQUEST_ID_HEADER;
use weft_wasix_context::Errno;

use super::instance::InstanceMsg;
use crate::body::{BodyStream, StreamWriter};
use crate::dispatch::{Incoming, ReadThenRespond, Shared};
use crate::timeout::with_timeout;

/// How long the guest may take to produce the next piece of its response body.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What reading the guest's body gave.
enum Next {
    Data(Bytes),
    End,
    Failed(String),
}

async fn next(body: &mut WasiBody) -> Next {
    loop {
        match with_timeout(body.frame(), BODY_IDLE_TIMEOUT).await {
            None => {
                return Next::Failed(format!(
                    "no more of it came within {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                ));
            }
            Some(None) => return Next::End,
            Some(Some(Err(error))) => return Next::Failed(error.to_string()),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => return Next::Data(data),
                // Trailers: HTTP/1.1 responses here carry none.
                Err(_) => {}
            },
        }
    }
}

/// Has the connection of `incoming` read the body of `response` and send it to the client,
/// whole or streamed.
pub(super) fn deliver(
    shared: Arc<Shared>,
    incoming: Arc<Incoming>,
    inbox: UnboundedSender<InstanceMsg>,
    response: http::Response<WasiBody>,
) {
    let read = read_then_respond(shared, incoming.clone(), inbox, response);
    incoming.respond_after(ReadThenRespond::new(read));
}

async fn read_then_respond(
    shared: Arc<Shared>,
    incoming: Arc<Incoming>,
    inbox: UnboundedSender<InstanceMsg>,
    response: http::Response<WasiBody>,
) {
    let (mut parts, mut body) = response.into_parts();
    // The server frames the body itself: its length when whole, chunks when streamed.
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if let Ok(value) = http::HeaderValue::from_str(&incoming.header_value) {
        parts.headers.insert(REQUEST_ID_HEADER, value);
    }
    let limits = &shared.settings.limits;
    let mut held: Vec<Bytes> = Vec::new();
    let (mut held_len, mut total) = (0usize, 0usize);
    let whole = loop {
        match next(&mut body).await {
            Next::End => break true,
            Next::Data(data) => {
                total += data.len();
                if total > limits.max_response_body {
                    return failed(&shared, &incoming, "it is over --max-response-body");
                }
                held_len += data.len();
                held.push(data);
                if held_len > limits.response_buffer {
                    break false;
                }
            }
            Next::Failed(why) => return failed(&shared, &incoming, &why),
        }
    };
    if whole {
        let bytes: Bytes = match held.len() {
            1 => held.pop().expect("one"),
            _ => held.concat().into(),
        };
        // Already answered when it failed meanwhile (then the registry has settled it),
        // or by an earlier run on an instance that trapped (then this run's response
        // counts).
        incoming.respond(&shared, http::Response::from_parts(parts, bytes));
        responded(&shared, &incoming, &inbox, true);
        return;
    }
    let stream = BodyStream::new(limits.response_buffer);
    let writer = StreamWriter::new(stream.clone());
    incoming.respond_streaming(&shared, parts, stream);
    // The head is out: the request cannot be retried elsewhere now; the body's writer
    // keeps working until the body ends, so the drain deadline starts only then.
    let in_registry = responded(&shared, &incoming, &inbox, false);
    weft_sched::spawn(move || {
        let limits = &shared.settings.limits;
        let outcome = (|| {
            for data in held {
                write_all(&writer, data, limits.request_timeout)?;
            }
            loop {
                match weft_sched::block_on(next(&mut body)) {
                    Next::End => return Ok(()),
                    Next::Data(data) => {
                        total += data.len();
                        if total > limits.max_response_body {
                            return Err("it is over --max-response-body".to_string());
                        }
                        write_all(&writer, data, limits.request_timeout)?;
                    }
                    Next::Failed(why) => return Err(why),
                }
            }
        })();
        match outcome {
            Ok(()) => writer.finish(),
            Err(why) => {
                eprintln!(
                    "weft serve: the response body of {} was cut short: {why}",
                    incoming.id
                );
                drop(writer);
            }
        }
        // The guest's body is dropped: a writer still at it sees its stream closed.
        drop(body);
        if in_registry {
            let _ = inbox.unbounded_send(InstanceMsg::Responded {
                request: incoming.id,
                deadline: Instant::now() + shared.settings.drain_timeout,
            });
        }
        shared.pump();
    });
}

/// Writes all of `data`, waiting (at most `timeout` each time) while the client has not read
/// enough.
fn write_all(writer: &StreamWriter, mut data: Bytes, timeout: Duration) -> Result<(), String> {
    while !data.is_empty() {
        match writer.stream().write(&data) {
            Ok(taken) => {
                let _ = data.split_to(taken);
            }
            Err(Errno::Again) => {
                let (tx, rx) = weft_sched::channel(1);
                writer.stream().on_writable(Box::new(move || {
                    let _ = tx.try_send(());
                }));
                if weft_sched::block_on(with_timeout(rx.recv_async(), timeout)).is_none() {
                    return Err(format!(
                        "the client read none of it for {} ms",
                        timeout.as_millis()
                    ));
                }
            }
            Err(_) => return Err("the client hung up".to_string()),
        }
    }
    Ok(())
}

/// Tells the registry the response (or its head) went out. With `drain_now`, work still
/// running for the request gets its drain deadline now; otherwise the caller sends it when the
/// body ends. Returns whether the request is still live (so a deadline is due).
fn responded(
    shared: &Arc<Shared>,
    incoming: &Incoming,
    inbox: &UnboundedSender<InstanceMsg>,
    drain_now: bool,
) -> bool {
    let now = Instant::now();
    let sent = shared.registry.lock().response_sent(incoming.id, now);
    let live = match sent {
        Ok(Some(summary)) => {
            shared.finish(&summary);
            false
        }
        Ok(None) => true,
        // Failed meanwhile (its instance trapped): the registry has settled it.
        Err(_) => false,
    };
    if live && drain_now {
        let _ = inbox.unbounded_send(InstanceMsg::Responded {
            request: incoming.id,
            deadline: now + shared.settings.drain_timeout,
        });
    }
    shared.pump();
    live
}

/// The body could not be read: the request gets `500` (nothing of it went out).
fn failed(shared: &Arc<Shared>, incoming: &Incoming, why: &str) {
    eprintln!(
        "weft serve: the response body of {} failed: {why}",
        incoming.id
    );
    shared.no_response(incoming.id);
    shared.pump();
}
