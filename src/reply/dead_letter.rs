//! Dead letters: a request that can never be delivered, or that used up its deliveries, is
//! republished unchanged (payload and headers) to the route's dead-letter destination, with
//! headers saying why and where it came from. The header set is the same for every source;
//! each adds the headers naming the message's place in its broker (stream and sequence,
//! topic, partition and offset).

use async_nats::HeaderMap;

use crate::source::Inbound;

pub const REASON: &str = "Ricochet-Dead-Letter-Reason";
pub const LAST_STATUS: &str = "Ricochet-Last-Status";
pub const DELIVERY_COUNT: &str = "Ricochet-Delivery-Count";
pub const ROUTE: &str = "Ricochet-Route";
pub const ORIGINAL_STREAM: &str = "Ricochet-Original-Stream";
pub const ORIGINAL_SUBJECT: &str = "Ricochet-Original-Subject";
pub const ORIGINAL_SEQUENCE: &str = "Ricochet-Original-Sequence";
pub const ORIGINAL_MSG_ID: &str = "Ricochet-Original-Msg-Id";
pub const ORIGINAL_TOPIC: &str = "Ricochet-Original-Topic";
pub const ORIGINAL_PARTITION: &str = "Ricochet-Original-Partition";
pub const ORIGINAL_OFFSET: &str = "Ricochet-Original-Offset";
pub const ORIGINAL_QUEUE: &str = "Ricochet-Original-Queue";
pub const ORIGINAL_EXCHANGE: &str = "Ricochet-Original-Exchange";
pub const ORIGINAL_ROUTING_KEY: &str = "Ricochet-Original-Routing-Key";
/// What exactly was wrong with a refused message: for a validation failure, its first
/// violations (`/qty: 0 is less than the minimum of 1; ...`), at most 1 KiB.
pub const DETAIL: &str = "Ricochet-Dead-Letter-Detail";
/// Set when the payload was left out because it would not fit the broker's limit.
pub const PAYLOAD_OMITTED: &str = "Ricochet-Payload-Omitted";

/// Why a message is dead-lettered, and the message.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub route: &'a str,
    /// An error kind (`bad_request`, `payload_too_large`, ...), `max_deliver`,
    /// `dead_letter_after` or `publish_failed`.
    pub reason: &'a str,
    /// Why exactly, when ricochet refused it (the detail of its error reply, or for a
    /// validation failure the first violations).
    pub detail: Option<&'a str>,
    /// The last HTTP status: the service's, or that of ricochet's error reply.
    pub last_status: u16,
    pub delivered: u32,
    pub inbound: &'a Inbound,
}

impl DeadLetter<'_> {
    /// ricochet's headers, the same for every source.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (REASON, self.reason.to_string()),
            (LAST_STATUS, self.last_status.to_string()),
            (DELIVERY_COUNT, self.delivered.to_string()),
            (ROUTE, self.route.to_string()),
        ];
        if let Some(detail) = self.detail {
            headers.push((DETAIL, single_line(detail)));
        }
        headers
    }

    /// NATS: the original headers plus ricochet's and `origin`. The broker's own `Nats-*`
    /// headers are not copied (an expected-stream or expected-sequence header would make the
    /// publish fail); the original `Nats-Msg-Id` is kept as `Ricochet-Original-Msg-Id`, and
    /// `msg_id` (stable for this message) de-duplicates a dead letter published twice
    /// around a crash.
    pub fn nats_headers(&self, origin: &[(&str, String)], msg_id: String) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.inbound.headers {
            if name.eq_ignore_ascii_case("nats-msg-id") {
                headers.insert(ORIGINAL_MSG_ID, value.as_str());
            } else if !name.to_ascii_lowercase().starts_with("nats-") {
                headers.append(name.as_str(), value.as_str());
            }
        }
        for (name, value) in self.headers().iter().chain(origin) {
            headers.insert(*name, value.as_str());
        }
        headers.insert("Nats-Msg-Id", msg_id);
        headers
    }
}

/// A header value: no line breaks, at most 1 KiB (cut on a character boundary).
fn single_line(text: &str) -> String {
    let mut end = text.len().min(1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_the_original_and_say_why() {
        let mut inbound = Inbound::new(
            "orders.1.get".into(),
            None,
            vec![
                ("X-Tenant".to_string(), "acme".to_string()),
                ("Nats-Msg-Id".to_string(), "m-1".to_string()),
                ("Nats-Expected-Stream".to_string(), "ORDERS".to_string()),
            ],
            bytes::Bytes::from_static(b"{}"),
        );
        inbound.delivered = 1;
        let letter = DeadLetter {
            route: "orders",
            reason: "payload_too_large",
            detail: Some("message of 20 bytes exceeds\nthe limit"),
            last_status: 413,
            delivered: 1,
            inbound: &inbound,
        };
        let origin = [
            (ORIGINAL_STREAM, "ORDERS".to_string()),
            (ORIGINAL_SUBJECT, "orders.1.get".to_string()),
            (ORIGINAL_SEQUENCE, "42".to_string()),
        ];
        let headers = letter.nats_headers(&origin, "ricochet-dlq:ORDERS:42".into());
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Tenant").as_deref(), Some("acme"));
        assert_eq!(get(ORIGINAL_MSG_ID).as_deref(), Some("m-1"));
        assert_eq!(get("Nats-Expected-Stream"), None);
        assert_eq!(get(REASON).as_deref(), Some("payload_too_large"));
        assert_eq!(get(LAST_STATUS).as_deref(), Some("413"));
        assert_eq!(
            get(DETAIL).as_deref(),
            Some("message of 20 bytes exceeds the limit")
        );
        assert_eq!(get(DELIVERY_COUNT).as_deref(), Some("1"));
        assert_eq!(get(ROUTE).as_deref(), Some("orders"));
        assert_eq!(get(ORIGINAL_STREAM).as_deref(), Some("ORDERS"));
        assert_eq!(get(ORIGINAL_SUBJECT).as_deref(), Some("orders.1.get"));
        assert_eq!(get(ORIGINAL_SEQUENCE).as_deref(), Some("42"));
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("ricochet-dlq:ORDERS:42")
        );
    }
}
