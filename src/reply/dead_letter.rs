//! Dead letters: a request that can never be delivered, or that used up its deliveries,
//! is republished unchanged (payload and headers) to the route's dead-letter destination,
//! with headers saying why and where it came from.

use async_nats::HeaderMap;

pub const REASON: &str = "Ricochet-Dead-Letter-Reason";
pub const LAST_STATUS: &str = "Ricochet-Last-Status";
pub const DELIVERY_COUNT: &str = "Ricochet-Delivery-Count";
pub const ROUTE: &str = "Ricochet-Route";
pub const ORIGINAL_STREAM: &str = "Ricochet-Original-Stream";
pub const ORIGINAL_SUBJECT: &str = "Ricochet-Original-Subject";
pub const ORIGINAL_SEQUENCE: &str = "Ricochet-Original-Sequence";
pub const ORIGINAL_MSG_ID: &str = "Ricochet-Original-Msg-Id";

/// Where a dead letter came from and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub route: &'a str,
    /// An error kind (`bad_request`, `payload_too_large`, ...) or `max_deliver`.
    pub reason: &'a str,
    /// The last HTTP status: the service's, or that of ricochet's own error reply.
    pub last_status: u16,
    pub delivered: u64,
    pub stream: &'a str,
    pub subject: &'a str,
    pub sequence: u64,
}

impl DeadLetter<'_> {
    /// The original headers plus ricochet's. The broker's own `Nats-*` headers are not
    /// copied (an expected-stream or expected-sequence header would make the publish fail);
    /// the original `Nats-Msg-Id` is kept as `Ricochet-Original-Msg-Id`, and a new one
    /// de-duplicates a dead letter published twice around a crash.
    pub fn headers(&self, original: &[(String, String)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in original {
            if name.eq_ignore_ascii_case("nats-msg-id") {
                headers.insert(ORIGINAL_MSG_ID, value.as_str());
            } else if !name.to_ascii_lowercase().starts_with("nats-") {
                headers.append(name.as_str(), value.as_str());
            }
        }
        headers.insert(REASON, self.reason);
        headers.insert(LAST_STATUS, self.last_status.to_string());
        headers.insert(DELIVERY_COUNT, self.delivered.to_string());
        headers.insert(ROUTE, self.route);
        headers.insert(ORIGINAL_STREAM, self.stream);
        headers.insert(ORIGINAL_SUBJECT, self.subject);
        headers.insert(ORIGINAL_SEQUENCE, self.sequence.to_string());
        headers.insert(
            "Nats-Msg-Id",
            format!("ricochet-dlq:{}:{}", self.stream, self.sequence),
        );
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_the_original_and_say_why() {
        let letter = DeadLetter {
            route: "orders",
            reason: "payload_too_large",
            last_status: 413,
            delivered: 1,
            stream: "ORDERS",
            subject: "orders.1.get",
            sequence: 42,
        };
        let original = vec![
            ("X-Tenant".to_string(), "acme".to_string()),
            ("Nats-Msg-Id".to_string(), "m-1".to_string()),
            ("Nats-Expected-Stream".to_string(), "ORDERS".to_string()),
        ];
        let headers = letter.headers(&original);
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Tenant").as_deref(), Some("acme"));
        assert_eq!(get(ORIGINAL_MSG_ID).as_deref(), Some("m-1"));
        assert_eq!(get("Nats-Expected-Stream"), None);
        assert_eq!(get(REASON).as_deref(), Some("payload_too_large"));
        assert_eq!(get(LAST_STATUS).as_deref(), Some("413"));
        assert_eq!(get(DELIVERY_COUNT).as_deref(), Some("1"));
        assert_eq!(get(ORIGINAL_STREAM).as_deref(), Some("ORDERS"));
        assert_eq!(get(ORIGINAL_SUBJECT).as_deref(), Some("orders.1.get"));
        assert_eq!(get(ORIGINAL_SEQUENCE).as_deref(), Some("42"));
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("ricochet-dlq:ORDERS:42")
        );
    }
}
