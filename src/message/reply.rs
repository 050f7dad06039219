//! What gets published back to the caller: a [`Reply`] (status, headers as bytes, body),
//! the error kinds ricochet answers itself, and the header names of the reply contract.
//! How an HTTP response or an error becomes a `Reply` is the mapping's (`mapping::reply`).
//!
//! Header values are bytes ([`ReplyHeaders`]): Kafka and AMQP replies carry them as the
//! service sent them (`café` as UTF-8, obs-text, raw bytes) and a Kafka correlation id as
//! the request had it; each publisher decides what its broker can carry (NATS: UTF-8 only).

use bytes::Bytes;
use http::StatusCode;

pub const STATUS_HEADER: &str = "Ricochet-Status";
pub const ERROR_KIND_HEADER: &str = "Ricochet-Error";
pub const ATTEMPTS_HEADER: &str = "Ricochet-Attempts";
/// Request header: the caller's own deadline for this request, which may shorten the route's.
pub const TIMEOUT_HEADER: &str = "Ricochet-Timeout";
/// Request header: the caller's absolute deadline, in milliseconds since the Unix epoch.
pub const DEADLINE_HEADER: &str = "Ricochet-Deadline";
/// HTTP request header on each attempt: the milliseconds ricochet waits for this attempt's
/// answer (the route's `timeout`, cut to what is left of the message's deadline).
pub const BUDGET_HEADER: &str = "Ricochet-Budget-Ms";
/// HTTP request header on each attempt: its number within this delivery, from 1.
pub const ATTEMPT_HEADER: &str = "Ricochet-Attempt";
/// HTTP request header on each attempt: the broker's deliveries of the message so far, this
/// one included.
pub const DELIVERY_COUNT_HEADER: &str = "Ricochet-Delivery-Count";
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// Every kind, for metrics that pre-register one series each.
pub const ERROR_KINDS: [ErrorKind; 13] = [
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
    ErrorKind::Expired,
    ErrorKind::StoreUnavailable,
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
    /// The request is past its lifetime (`lifetime.max_age`, the caller's deadline) or has
    /// less than `lifetime.min_budget` left: the service is not called. Answered only when
    /// the route sets `lifetime.reply_expired`.
    Expired,
    /// The route's reply store could not be asked and its `on_unavailable` is `redeliver`:
    /// the service is not called; a durable source redelivers the message later.
    StoreUnavailable,
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
            ErrorKind::Expired => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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
            ErrorKind::Expired => "expired",
            ErrorKind::StoreUnavailable => "store_unavailable",
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
    /// No headers yet, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

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

/// Every status code's three digits, from 100 to 999, one after the other.
static STATUS_DIGITS: [u8; 2700] = {
    let mut digits = [0; 2700];
    let mut code = 100;
    while code < 1000 {
        let at = (code - 100) * 3;
        digits[at] = b'0' + (code / 100) as u8;
        digits[at + 1] = b'0' + (code / 10 % 10) as u8;
        digits[at + 2] = b'0' + (code % 10) as u8;
        code += 1;
    }
    digits
};

/// A status code as header text (`Ricochet-Status`, `Nats-Service-Error-Code`), without an
/// allocation.
pub fn status_text(status: StatusCode) -> Bytes {
    let at = usize::from(status.as_u16() - 100) * 3;
    Bytes::from_static(&STATUS_DIGITS[at..at + 3])
}

/// A single-digit number as static text: counts and attempt numbers written into headers
/// (reply and request) without an allocation.
pub fn digit_text(n: u64) -> Option<&'static str> {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    usize::try_from(n).ok().and_then(|i| DIGITS.get(i).copied())
}

/// A count as header text (`Ricochet-Attempts`); the small ones without an allocation.
pub fn count_text(n: u32) -> Bytes {
    match digit_text(n.into()) {
        Some(text) => Bytes::from_static(text.as_bytes()),
        None => Bytes::from(n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_count_texts_are_their_decimal_digits() {
        for code in [100, 200, 201, 404, 503, 599, 999] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_text(status), status.as_str().as_bytes());
        }
        for n in [0, 1, 9, 10, 123, u32::MAX] {
            assert_eq!(count_text(n), n.to_string().as_bytes());
        }
    }
}
