//! The HTTP front end: the accept loop and one hyper `http1` connection per green thread.
//! A request is parsed, its body read (`413` beyond the limit), and submitted to the
//! registry under its lock (`508` for a loop, `503` when full or shutting down); the
//! connection's green thread then waits for the response the instance sends back.
//!
//! Clients are bounded: connections in all and per address, the time to send a head (and to
//! idle between requests), the time to send a body, a declared body over the limit refused
//! before it is read, `CONNECT` answered `405`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming as IncomingBody;
use hyper::{Method, Request, Response};
use weft_http_attrib::{REQUEST_ID_HEADER, Refusal};
use weft_sched::TcpListener;

use crate::body::ResponseBody;
use crate::connections::Connections;
use crate::dispatch::{Incoming, REPLY_CAPACITY, Shared, await_reply, plain_response};
use crate::timeout::with_timeout;

pub(crate) fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let limits = &shared.settings.limits;
    let connections = Connections::new(limits.max_connections, limits.max_connections_per_client);
    loop {
        let (stream, client) = match listener.accept() {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: back off a little instead of spinning.
            Err(_) => {
                weft_sched::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        // Over the limit: closed at once, before anything is read (the client sees a reset
        // or an EOF and can retry elsewhere).
        let Some(slot) = connections.admit(client.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        weft_sched::spawn(move || {
            let _slot = slot;
            let header_timeout = shared.settings.limits.header_timeout;
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(serve_one(shared, request).await) }
            });
            // Malformed requests are answered 400 by hyper, which then closes the connection.
            // The header timeout also bounds how long a kept-alive connection may sit idle
            // between requests.
            let _ = weft_sched::block_on(
                hyper::server::conn::http1::Builder::new()
                    .timer(weft_sched::hyper_rt::HyperTimer::current())
                    .header_read_timeout(header_timeout)
                    .serve_connection(stream, service),
            );
        });
    }
}

async fn serve_one(shared: Arc<Shared>, request: Request<IncomingBody>) -> Response<ResponseBody> {
    let refuse = |status: u16, text: &str| {
        let (parts, bytes) = plain_response(status, text).into_parts();
        Response::from_parts(
            parts,
            ResponseBody::new(bytes, shared.open_responses.clone()),
        )
    };
    let (parts, body) = request.into_parts();
    if parts.method == Method::CONNECT {
        // Tunnels are not served; answering (instead of upgrading) frees the connection.
        return refuse(405, "CONNECT is not supported\n");
    }
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let max_body = shared.settings.max_body;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        // Refused before reading: hyper sends `100 Continue` only once the body is polled,
        // so a client that asked for it is not invited to send what would be refused.
        return refuse(413, "request body too large\n");
    }
    let read = with_timeout(
        Limited::new(body, max_body).collect(),
        shared.settings.limits.body_timeout,
    );
    let body = match read.await {
        Some(Ok(collected)) => collected.to_bytes(),
        Some(Err(error)) => {
            return if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                refuse(413, "request body too large\n")
            } else {
                refuse(400, "cannot read the request body\n")
            };
        }
        None => return refuse(408, "the request body did not arrive in time\n"),
    };
    let (tx, rx) = weft_sched::channel(REPLY_CAPACITY);
    let trace = shared
        .trace_context
        .then(|| crate::trace_context::RequestSpan::for_incoming(&parts.headers));
    let submitted = {
        let ids: Vec<&str> = parts
            .headers
            .get_all(REQUEST_ID_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut registry = shared.registry.lock();
        match registry.submit(ids, Instant::now()) {
            Ok(id) => {
                let incoming = Arc::new(Incoming {
                    id,
                    header_value: registry.header_value(id),
                    method: parts.method.to_string(),
                    path: path.clone(),
                    headers: parts.headers.clone(),
                    body,
                    responder: Mutex::new(Some(tx)),
                    status: Mutex::new(None),
                    trace,
                });
                // Registered under the registry lock: no pump can start it before it is here.
                shared.requests.lock().unwrap().insert(id, incoming);
                Ok(id)
            }
            Err(refusal) => Err(refusal),
        }
    };
    match submitted {
        Ok(_) => {
            shared.pump();
            match await_reply(rx).await {
                Some(response) => response,
                None => refuse(500, "the request was lost\n"),
            }
        }
        Err(refusal) => {
            let status = refusal.status();
            if shared.settings.access_log {
                eprintln!(
                    "weft serve: refused method={} path={:?} status={status} reason={}",
                    parts.method,
                    path,
                    match refusal {
                        Refusal::LoopDetected { .. } => "loop_detected",
                        Refusal::Overloaded => "overloaded",
                        Refusal::ShuttingDown => "shutting_down",
                    }
                );
            }
            let text = if status == 508 {
                "loop detected: this request carries the id of one of this server's live requests\n"
            } else {
                "service unavailable\n"
            };
            refuse(status, text)
        }
    }
}
