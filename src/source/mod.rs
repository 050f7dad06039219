//! Sources turn broker messages into one [`Inbound`] type. Core NATS is the first source;
//! JetStream and Kafka follow the same shape and add settlement.

pub mod jetstream;
pub mod kafka;
pub mod nats;

use std::time::Instant;

use bytes::Bytes;

/// One request message, whatever broker it came from.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The subject (or topic) the message was published to; routing matches on it.
    pub subject: String,
    /// Where the reply goes; `None` means fire-and-forget.
    pub reply: Option<String>,
    /// Message headers in arrival order; a name may repeat.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// When ricochet took the message, for latency and deadlines.
    pub received: Instant,
}
