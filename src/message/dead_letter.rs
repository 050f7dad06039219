//! Dead letters (the header set every source publishes): a request that can never be delivered, or that used up its deliveries, is
//! republished unchanged (payload and headers) to the route's dead-letter destination, with
//! headers saying why and where it came from. The header set is the same for every source;
//! each adds the headers naming the message's place in its broker (stream and sequence,
//! topic, partition and offset).

use super::Inbound;

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
