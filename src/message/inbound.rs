//! The request message as every part of ricochet sees it, whatever broker it came from.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

/// One request message, whatever broker it came from.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The subject (or topic) the message was published to; routing matches on it.
    pub subject: String,
    /// Where the reply goes (see [`reply_destination`]); `None` means fire-and-forget.
    pub reply: Option<String>,
    /// Message headers in arrival order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Headers the broker delivered whose values have no text form (see
    /// [`UnreadableHeader`]); kept out of `headers`, never dropped silently.
    pub unreadable: Vec<UnreadableHeader>,
    pub payload: Bytes,
    /// When ricochet took the message, for latency and deadlines.
    pub received: Instant,
    /// Durable sources: the same on every redelivery (a `Nats-Msg-Id`, a stream sequence,
    /// topic-partition-offset); sent as `Idempotency-Key` unless the message has one.
    pub idempotency_key: Option<String>,
    /// Echoed on the reply in the route's `correlation_header`. Text, as NATS and AMQP ids
    /// are and as traces show it; a Kafka id may be any bytes, so the Kafka source keeps the
    /// record's own and puts them on the reply byte for byte (this is then their lossy
    /// text form).
    pub correlation: Option<String>,
    /// Deliveries of this message so far, this one included.
    pub delivered: u32,
    /// Where the message sits in its stream or partition, for traces.
    pub position: Position,
    /// When the broker took the message (a JetStream message's timestamp, a Kafka record's,
    /// an AMQP `timestamp` property); `None` when it has none: its age counts from receipt.
    pub sent_at: Option<SystemTime>,
    /// How long the publisher said the message lives, counted from `sent_at` (else from
    /// receipt): AMQP's `expiration` property.
    pub expires_in: Option<Duration>,
}

/// A header whose value cannot become an HTTP header value: bytes that are not UTF-8, or an
/// AMQP field type with no text form. A message with one that would be forwarded is refused
/// with 400 (and dead-lettered on a durable source) by the request mapping, as a text value
/// with a line break is; one the route's header lists would not forward is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableHeader {
    pub name: String,
    /// What the value is, in words, e.g. "bytes that are not UTF-8".
    pub why: String,
}

/// A message's place in a durable log, where its broker has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Position {
    #[default]
    None,
    /// A JetStream stream sequence.
    Stream { sequence: u64 },
    /// A Kafka partition and offset.
    Partition { partition: i32, offset: i64 },
}

impl Inbound {
    /// A message delivered for the first time, with nothing but what it carries.
    pub fn new(
        subject: String,
        reply: Option<String>,
        headers: Vec<(String, String)>,
        payload: Bytes,
    ) -> Self {
        Self {
            subject,
            reply,
            headers,
            unreadable: Vec::new(),
            payload,
            received: Instant::now(),
            idempotency_key: None,
            correlation: None,
            delivered: 1,
            position: Position::None,
            sent_at: None,
            expires_in: None,
        }
    }

    /// The first value of header `name`, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The first value of header `name` in `headers`, case-insensitively.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where a durable source sends the reply: the destination the request names in the route's
/// `reply_to_header`, else the route's default destination.
pub fn reply_destination(
    headers: &[(String, String)],
    reply_to_header: &str,
    default: Option<&str>,
) -> Option<String> {
    header(headers, reply_to_header)
        .or(default)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn headers_are_found_case_insensitively_first_value_first() {
        let h = headers(&[("Reply-To", "a"), ("reply-to", "b"), ("X", "1")]);
        assert_eq!(header(&h, "reply-to"), Some("a"));
        assert_eq!(header(&h, "x"), Some("1"));
        assert_eq!(header(&h, "missing"), None);
    }

    #[test]
    fn the_request_names_the_reply_destination_else_the_route_does() {
        let named = headers(&[("reply-to", "caller.inbox")]);
        assert_eq!(
            reply_destination(&named, "reply-to", Some("route.default")).as_deref(),
            Some("caller.inbox")
        );
        assert_eq!(
            reply_destination(&[], "reply-to", Some("route.default")).as_deref(),
            Some("route.default")
        );
        assert_eq!(reply_destination(&[], "reply-to", None), None);
        // The route chooses the header's name.
        let custom = headers(&[("X-Reply", "x.inbox")]);
        assert_eq!(
            reply_destination(&custom, "x-reply", None).as_deref(),
            Some("x.inbox")
        );
    }
}
