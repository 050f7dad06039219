//! `http::Response` -> [`Reply`], and the error replies ricochet produces itself.
//!
//! Every reply carries the HTTP status in `Ricochet-Status`. Replies with status >= 400 also
//! carry `Nats-Service-Error` and `Nats-Service-Error-Code`, the NATS service API convention.
//! Errors ricochet produces itself add `Ricochet-Error: <kind>` and a JSON body
//! `{"error": "...", "code": N}`.
//!
//! Header values are bytes ([`ReplyHeaders`]): Kafka and AMQP replies carry them as the
//! service sent them (`café` as UTF-8, obs-text, raw bytes) and a Kafka correlation id as
//! the request had it; each publisher decides what its broker can carry (NATS: UTF-8 only).

use bytes::Bytes;
use http::StatusCode;

use super::headers::{self, HeaderFilter};
use crate::validate::Violation;

pub const STATUS_HEADER: &str = "Ricochet-Status";
pub const ERROR_KIND_HEADER: &str = "Ricochet-Error";
pub const ATTEMPTS_HEADER: &str = "Ricochet-Attempts";
/// Request header: the caller's own deadline for this request, which may shorten the route's.
pub const TIMEOUT_HEADER: &str = "Ricochet-Timeout";
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// Every kind, for metrics that pre-register one series each.
pub const ERROR_KINDS: [ErrorKind; 11] = [
    ErrorKind::BadRequest,
    ErrorKind::NoRoute,
    ErrorKind::PayloadTooLarge,
    ErrorKind::UpstreamUnavailable,
    ErrorKind::Timeout,
    ErrorKind::CircuitOpen,
    ErrorKind::RateLimited,
    ErrorKind::Overloaded,
    ErrorKind::Validation,
    ErrorKind::RegistryUnavailable,
    ErrorKind::InvalidResponse,
];

/// Errors that ricochet answers itself, without (or instead of) the service's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The message cannot be mapped to an HTTP request.
    BadRequest,
    /// No route matches the subject.
    NoRoute,
    /// The message is larger than the route's `max_payload`.
    PayloadTooLarge,
    /// The service could not be reached, broke the connection or answered unusably.
    UpstreamUnavailable,
    /// The service did not answer within the timeout.
    Timeout,
    /// The route's circuit breaker is open: the service is failing and is not called.
    CircuitOpen,
    /// The route's rate limit refused the message.
    RateLimited,
    /// Core NATS: the route is at `max_in_flight` with `max_pending` messages already
    /// waiting; the message is answered at once instead of queueing towards its caller's
    /// timeout.
    Overloaded,
    /// The message does not pass the route's `validate` rules (schema, content type,
    /// headers): never sent to the service, never retried.
    Validation,
    /// The schema registry could not be asked: the message is not validated, so it is not
    /// sent either; a durable source redelivers it later.
    RegistryUnavailable,
    /// The service's 2xx answer does not pass the route's response rules.
    InvalidResponse,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Validation => StatusCode::BAD_REQUEST,
            ErrorKind::RegistryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InvalidResponse => StatusCode::BAD_GATEWAY,
        }
    }

    /// Stable name: the `Ricochet-Error` header value and the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Validation => "validation",
            ErrorKind::RegistryUnavailable => "registry_unavailable",
            ErrorKind::InvalidResponse => "invalid_response",
        }
    }
}

/// A header name: ricochet's own are static, so a reply costs no allocation for them.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// A reply's headers in order (a name may repeat), each value the bytes to publish.
///
/// Values are bytes, not text: an HTTP response header may hold obs-text (bytes 0x80-0xFF,
/// e.g. UTF-8 `café`) and a Kafka correlation id any bytes, and Kafka and AMQP carry them
/// unchanged. `push` takes any value that converts to bytes (`String`, `&'static str`,
/// `Vec<u8>`), so the text ricochet writes itself needs no ceremony.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyHeaders(Vec<(HeaderName, Bytes)>);

impl ReplyHeaders {
    /// Appends a header (a `(name, value)` pair, as `Vec::push` would).
    pub fn push(&mut self, (name, value): (HeaderName, impl Into<Bytes>)) {
        self.0.push((name, value.into()));
    }

    /// Keeps the headers for which `keep` is true, in order.
    pub fn retain(&mut self, keep: impl FnMut(&(HeaderName, Bytes)) -> bool) {
        self.0.retain(keep);
    }

    /// The first value of `name` (case-insensitive), as published.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl std::ops::Deref for ReplyHeaders {
    type Target = [(HeaderName, Bytes)];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a ReplyHeaders {
    type Item = &'a (HeaderName, Bytes);
    type IntoIter = std::slice::Iter<'a, (HeaderName, Bytes)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<N: Into<HeaderName>, V: Into<Bytes>> FromIterator<(N, V)> for ReplyHeaders {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(headers: I) -> Self {
        Self(
            (headers.into_iter())
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// What gets published back to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: ReplyHeaders,
    pub body: Bytes,
}

impl Reply {
    /// The service's own answer.
    pub fn from_response(
        status: StatusCode,
        response_headers: &http::HeaderMap,
        body: Bytes,
        filter: &HeaderFilter,
    ) -> Self {
        let mut headers = headers::from_http(response_headers, filter);
        headers.push((STATUS_HEADER.into(), status.as_str().to_string()));
        if status.as_u16() >= 400 {
            let description = status
                .canonical_reason()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            headers.push((SERVICE_ERROR_HEADER.into(), description));
            headers.push((
                SERVICE_ERROR_CODE_HEADER.into(),
                status.as_str().to_string(),
            ));
        }
        Self {
            status,
            headers,
            body,
        }
    }

    /// An error ricochet answers itself. `detail` must not contain secrets: it is sent to
    /// the caller.
    pub fn error(kind: ErrorKind, detail: &str) -> Self {
        let status = kind.status();
        let body = serde_json::json!({ "error": detail, "code": status.as_u16() });
        Self::own(kind, detail, body)
    }

    /// An error reply that lists what a message (or response) violated:
    /// `{"error": "...", "code": N, "violations": [{"instance_path", "schema_path", "message"}]}`.
    /// The list is bounded by the validator (count and text length).
    pub fn invalid(kind: ErrorKind, detail: &str, violations: &[Violation]) -> Self {
        let status = kind.status();
        let body = serde_json::json!({
            "error": detail,
            "code": status.as_u16(),
            "violations": violations,
        });
        Self::own(kind, detail, body)
    }

    fn own(kind: ErrorKind, detail: &str, body: serde_json::Value) -> Self {
        let status = kind.status();
        Self {
            status,
            headers: [
                ("Content-Type", "application/json".to_string()),
                (STATUS_HEADER, status.as_str().to_string()),
                (ERROR_KIND_HEADER, kind.as_str().to_string()),
                (SERVICE_ERROR_HEADER, single_line(detail)),
                (SERVICE_ERROR_CODE_HEADER, status.as_str().to_string()),
            ]
            .into_iter()
            .collect(),
            body: Bytes::from(body.to_string()),
        }
    }

    /// Adds a header (used for `Ricochet-Attempts`, `Retry-After` and the correlation id).
    pub fn with_header(mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// The first value of `name` as text; `None` when absent or not UTF-8 (see
    /// [`ReplyHeaders::get`] for the bytes).
    pub fn header(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.headers.get(name)?).ok()
    }
}

/// Header values cannot hold line breaks.
fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn success_carries_status_and_headers_but_no_error_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-order", HeaderValue::from_static("42"));
        let reply = Reply::from_response(
            StatusCode::CREATED,
            &h,
            Bytes::from_static(b"ok"),
            &HeaderFilter::default(),
        );
        assert_eq!(reply.header("Ricochet-Status"), Some("201"));
        assert_eq!(reply.header("x-order"), Some("42"));
        assert_eq!(reply.header(SERVICE_ERROR_HEADER), None);
        assert_eq!(reply.body.as_ref(), b"ok");
    }

    #[test]
    fn service_errors_follow_the_nats_service_convention() {
        let reply = Reply::from_response(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Bytes::from_static(b"nope"),
            &HeaderFilter::default(),
        );
        assert_eq!(reply.header(SERVICE_ERROR_HEADER), Some("Not Found"));
        assert_eq!(reply.header(SERVICE_ERROR_CODE_HEADER), Some("404"));
        assert_eq!(reply.header(ERROR_KIND_HEADER), None);
        assert_eq!(reply.body.as_ref(), b"nope");
    }

    #[test]
    fn validation_errors_list_their_violations() {
        let violations = [Violation::new(
            "/qty",
            "/properties/qty/minimum",
            "0 is less than 1",
        )];
        let reply = Reply::invalid(ErrorKind::Validation, "2 violations", &violations);
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.header(ERROR_KIND_HEADER), Some("validation"));
        assert_eq!(reply.header(SERVICE_ERROR_CODE_HEADER), Some("400"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "2 violations", "code": 400, "violations": [
                {"instance_path": "/qty", "schema_path": "/properties/qty/minimum", "message": "0 is less than 1"}
            ]})
        );
    }

    #[test]
    fn own_errors_have_json_bodies() {
        let reply = Reply::error(ErrorKind::Timeout, "upstream did not answer within 5s\n");
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.header(ERROR_KIND_HEADER), Some("timeout"));
        assert_eq!(reply.header(SERVICE_ERROR_CODE_HEADER), Some("504"));
        assert!(!reply.header(SERVICE_ERROR_HEADER).unwrap().contains('\n'));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["code"], 504);
        assert_eq!(body["error"], "upstream did not answer within 5s\n");
    }
}
