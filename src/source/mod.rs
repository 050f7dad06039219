//! Sources: the first and last step of the flow. A source turns broker messages into one
//! [`Inbound`] type, hands each to [`crate::pipeline::Pipeline::deliver`] with a [`Settle`]
//! handle, and does what the pipeline decided: publish the reply or the dead letter to its
//! broker, then ack, redeliver or terminate the message.
//!
//! Everything that is the same for every broker lives in the pipeline: routing checks,
//! validation, the HTTP call, the settlement policy (`pipeline::policy`), the dead-letter
//! header set, the oversize rule and metrics. A source only knows its broker: how to take
//! messages (with its flow control), how to publish, how to settle, and what its
//! idempotency key, correlation id and dead-letter origin are.
//!
//! Adding a source: a folder here with an intake loop, a [`Settle`] implementation and its
//! `config.rs` (keys, defaults, checks), and one variant in [`config::SourceConfig`].

pub mod amqp;
pub mod config;
pub mod jetstream;
pub mod kafka;
pub mod nats;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use self::config::{SourceConfig, SourceKind};
use crate::mapping::Reply;
use crate::pipeline::Policy;
use crate::reply::DeadLetter;

/// The settlement policy of a route: the source's redelivery settings.
pub fn policy(source: &SourceConfig) -> Policy {
    match source {
        SourceConfig::Nats(_) => Policy::at_most_once(),
        SourceConfig::Jetstream(js) => {
            let max = Some(js.settings.max_deliver);
            let delays = js.settings.redelivery_backoff.clone();
            Policy::durable(js.delivery, max, "max_deliver", delays)
        }
        SourceConfig::Amqp(amqp) => {
            let max = Some(amqp.settings.max_deliver);
            let delays = amqp.settings.redelivery_backoff.clone();
            Policy::durable(amqp.delivery, max, "max_deliver", delays)
        }
        SourceConfig::Kafka(kafka) => {
            let max = kafka.settings.dead_letter_after;
            let delays = kafka.settings.retry_backoff.clone();
            Policy::durable(kafka.delivery, max, "dead_letter_after", delays)
        }
    }
}

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

/// Why a reply or dead letter did not reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// Not now (connection, broker refused it for the moment): the message should come
    /// again.
    #[error("{0}")]
    Failed(String),
    /// The message is no longer this replica's (its partition was revoked, or ricochet is
    /// stopping): leave it to its next owner, settle nothing.
    #[error("the message is no longer ours")]
    Lost,
    /// Never: no retry can publish it (no such topic, not authorised). Counted as a failed
    /// publish; the message is finished.
    #[error("{0}")]
    Dropped(String),
}

/// How a source publishes and settles one message. The pipeline calls these in the order
/// the settlement policy decides; a source without settlement (core NATS) leaves the
/// defaults.
pub trait Settle: Sync {
    /// The broker's limit on a reply, if this one would exceed it: `(size, limit, what)`.
    fn too_large(
        &self,
        _destination: &str,
        _reply: &Reply,
    ) -> Option<(usize, usize, &'static str)> {
        None
    }

    /// Why the broker cannot take a reply at `destination` (not a subject, a system subject,
    /// not a topic name), if it cannot.
    fn destination_problem(&self, _destination: &str) -> Option<&'static str> {
        None
    }

    /// Publishes the reply; durable sources return once the broker confirmed it.
    fn reply(
        &self,
        destination: &str,
        reply: &Reply,
    ) -> impl Future<Output = Result<(), Undelivered>> + Send;

    /// Publishes the message to the route's dead-letter destination, if it has one
    /// (`Ok(false)` when it has none).
    fn dead_letter(
        &self,
        _letter: &DeadLetter<'_>,
    ) -> impl Future<Output = Result<bool, Undelivered>> + Send {
        async { Ok(false) }
    }

    /// The message is done.
    fn ack(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }

    /// The message should come again after `delay` (JetStream naks; Kafka waits locally).
    fn redeliver(&self, _delay: Duration) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }

    /// The message must never come again (after its dead letter).
    fn terminate(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
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
