//! The HTTP client behind the guest's `fetch`: outgoing HTTP/1.1 requests: hyper's client over
//! weft-sched's `TcpStream` on connections kept between calls (`crate::upstream`), run in a
//! green thread of its own so only the calling context waits.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Request;

use crate::upstream::{SendError, Upstreams, address, full_body};

/// How long the exchange of a fetch may take once connected (send, response head and body).
/// The connect itself is bounded by the OS (a refused or unreachable loopback port fails at
/// once).
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body kept for the guest.
pub(crate) const MAX_FETCH_BODY: usize = 16 << 20;

/// A validated outgoing request.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct FetchResponse {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

use weft_wasix_context::Errno;

const EINVAL: Errno = Errno::Inval;
const EIO: Errno = Errno::Io;

impl FetchRequest {
    /// Parses what the guest passed; `Err(errno)` for anything invalid. Only `http://` URLs,
    /// with a port that fits in 16 bits when one is given.
    pub(crate) fn parse(
        method: &[u8],
        url: &[u8],
        headers: &[u8],
        body: Vec<u8>,
    ) -> Result<Self, Errno> {
        let method = http::Method::from_bytes(method).map_err(|_| EINVAL)?;
        let url = std::str::from_utf8(url).map_err(|_| EINVAL)?;
        let uri: http::Uri = url.parse().map_err(|_| EINVAL)?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(EINVAL);
        }
        // `Uri` accepts a port it cannot read as u16 (`:99999`) and then reports none at all;
        // sending such a request to the default port would reach a server the guest did not
        // name. A port is explicit when the authority ends in `:digits` outside brackets.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let explicit_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.contains(']'));
        if explicit_port && uri.port_u16().is_none() {
            return Err(EINVAL);
        }
        let text = std::str::from_utf8(headers).map_err(|_| EINVAL)?;
        let mut map = http::HeaderMap::new();
        for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
            if line.is_empty() {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or(EINVAL)?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| EINVAL)?;
            let value = http::HeaderValue::from_str(value.trim()).map_err(|_| EINVAL)?;
            map.append(name, value);
        }
        Ok(FetchRequest {
            method,
            uri,
            headers: map,
            body: Bytes::from(body),
        })
    }

    /// Sends it on a kept or new connection of `upstreams`, carrying `request_id` in
    /// `weft-request-id` (replacing any the guest set). Runs in a green thread; `Err(errno)`
    /// on failure.
    pub(crate) fn send(
        self,
        upstreams: &Upstreams,
        request_id: &str,
    ) -> Result<FetchResponse, Errno> {
        let mut request = Request::builder()
            .method(self.method)
            .uri(self.uri)
            .body(full_body(self.body))
            .map_err(|_| EINVAL)?;
        *request.headers_mut() = self.headers;
        let origin = address(&mut request, request_id).map_err(|_| EINVAL)?;
        let exchange = async move {
            let response = upstreams
                .send(&origin, request)
                .await
                .map_err(|error| match error {
                    SendError::Refused => Errno::Connrefused,
                    SendError::ConnectTimeout => Errno::Timedout,
                    SendError::Connect(_) | SendError::Http(_) => EIO,
                })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_FETCH_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        Errno::Msgsize
                    } else {
                        EIO
                    }
                })?
                .to_bytes();
            Ok(FetchResponse { status, body })
        };
        weft_sched::block_on(crate::timeout::with_timeout(exchange, FETCH_TIMEOUT))
            .unwrap_or(Err(Errno::Timedout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_http_urls_and_header_lines() {
        let request = FetchRequest::parse(
            b"POST",
            b"http://127.0.0.1:9/a?b=1",
            b"x-one: 1\r\nx-two:2\r\n",
            b"hi".to_vec(),
        )
        .unwrap();
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(request.uri.port_u16(), Some(9));
        let v6 = FetchRequest::parse(b"GET", b"http://[::1]/", b"", Vec::new()).unwrap();
        assert_eq!(v6.uri.port_u16(), None);
        let v6 = FetchRequest::parse(b"GET", b"http://[::1]:8080/", b"", Vec::new()).unwrap();
        assert_eq!(v6.uri.port_u16(), Some(8080));
        assert_eq!(request.headers["x-one"], "1");
        assert_eq!(request.headers["x-two"], "2");
        assert_eq!(&request.body[..], b"hi");
    }

    #[test]
    fn parse_refuses_bad_input_with_einval() {
        let parse = |m: &[u8], u: &[u8], h: &[u8]| FetchRequest::parse(m, u, h, Vec::new()).err();
        assert_eq!(parse(b"GET", b"https://x/", b""), Some(EINVAL));
        assert_eq!(parse(b"GET", b"/relative", b""), Some(EINVAL));
        assert_eq!(parse(b"G T", b"http://x/", b""), Some(EINVAL));
        assert_eq!(parse(b"GET", b"http://x/", b"no colon"), Some(EINVAL));
        assert_eq!(parse(b"GET", b"http://x/", b"bad name: v"), Some(EINVAL));
        assert_eq!(parse(b"GET", b"\xff", b""), Some(EINVAL));
        // A port that does not fit is refused, not sent to port 80.
        assert_eq!(
            parse(b"GET", b"http://127.0.0.1:99999/x", b""),
            Some(EINVAL)
        );
        assert_eq!(
            parse(b"GET", b"http://127.0.0.1:65536/x", b""),
            Some(EINVAL)
        );
    }
}
