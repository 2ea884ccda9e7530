//! What can go wrong with one request, and the one place that turns it into the
//! status and short plain-text body the client sees. The body never names a backend
//! or an upstream; the cause goes to the log with the request id.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Who caused an error: the client, a backend, or fulcrum's own configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Backend,
    Fulcrum,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("client address denied by the access rules")]
    Denied,
    #[error("no route matched and the listener has no default upstream")]
    NoRoute,
    #[error("request body over max_body_size")]
    BodyTooLarge,
    #[error("request body not received within body_timeout")]
    BodyTimeout,
    #[error("no healthy backend to pick")]
    NoBackend,
    #[error("every backend at max_connections_per_backend: {0:?}")]
    Queue(crate::upstream::NoLease),
    #[error("connect to backend failed: {0}")]
    Connect(String),
    #[error("backend failed: {0}")]
    Backend(String),
    #[error("backend sent no response headers within {0:?}")]
    Timeout(std::time::Duration),
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("the request failed while its body was read: {0}")]
    ClientBody(String),
    #[error("over the rate limit")]
    RateLimited,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Denied => StatusCode::FORBIDDEN,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoBackend | ProxyError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Backend(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ProxyError::Denied
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::ClientBody(_)
            | ProxyError::RateLimited => Source::Client,
            ProxyError::NoRoute | ProxyError::NoBackend | ProxyError::Queue(_) => Source::Fulcrum,
            ProxyError::Connect(_) | ProxyError::Backend(_) | ProxyError::Timeout(_) => {
                Source::Backend
            }
        }
    }
}

impl ProxyError {
    /// The gRPC status a gRPC client gets for the error (fulcrum answers gRPC
    /// requests as gRPC: HTTP 200 with `grpc-status`), and its message.
    pub fn grpc_status(&self) -> (u8, &'static str) {
        match self {
            ProxyError::NoBackend | ProxyError::Queue(_) | ProxyError::Connect(_) => {
                (14, "no backend available")
            }
            ProxyError::Backend(_) => (13, "the backend failed"),
            ProxyError::Timeout(_) | ProxyError::BodyTimeout => (4, "deadline exceeded"),
            ProxyError::RateLimited => (8, "over the rate limit"),
            ProxyError::BodyTooLarge => (8, "request too large"),
            ProxyError::Denied => (7, "denied"),
            ProxyError::NoRoute => (12, "no route"),
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => (3, "malformed request"),
        }
    }
}

/// A trailers-only gRPC response carrying `error`'s status.
pub(super) fn grpc(error: &ProxyError) -> Response<Bytes> {
    let (code, message) = error.grpc_status();
    let mut r = Response::new(Bytes::new());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    h.insert("grpc-message", HeaderValue::from_static(message));
    r
}

/// A short plain-text response for `status`: its code and reason, nothing else.
pub(super) fn plain(status: StatusCode) -> Response<Bytes> {
    let body = Bytes::from(format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    ));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// The raw response written to a connection refused for being over a connection
/// limit, before it is closed.
pub const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\ncontent-length: 24\r\nconnection: close\r\n\r\n503 Service Unavailable\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_documented_status() {
        let cases = [
            (ProxyError::Denied, 403),
            (ProxyError::NoRoute, 404),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::NoBackend, 503),
            (ProxyError::Connect("refused".into()), 502),
            (ProxyError::Backend("invalid".into()), 502),
            (ProxyError::Timeout(std::time::Duration::from_secs(1)), 504),
            (ProxyError::BadRequest("x"), 400),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e}");
        }
    }

    #[test]
    fn the_overload_response_is_well_formed() {
        let text = std::str::from_utf8(OVERLOADED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn a_503_says_when_to_retry() {
        let r = plain(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.body().as_ref(), b"503 Service Unavailable\n");
    }
}
