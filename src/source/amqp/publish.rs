//! Replies, redeliveries and dead letters to RabbitMQ: published on a channel in confirm
//! mode and returned only once the broker confirmed them, so a request is acknowledged only
//! after its reply is safe. Published `mandatory`: a reply to a queue that does not exist
//! comes back as returned (never deliverable); a nack or a broken channel is a failure that
//! may pass. Replies to direct reply-to are not mandatory: RabbitMQ 3.10 returned such
//! replies as unroutable although it had delivered them (seen with a lapin caller, not with
//! pika), and a caller that is gone is gone, as with a NATS inbox.
//!
//! Also the conversion of reply headers to an AMQP field table (a request's table is read by
//! `source::amqp::fields`).

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::message::Reply;
use crate::message::{Cause, Undelivered};

/// Headers as a field table of long strings; a later value of a name replaces an earlier.
pub fn table<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        if let Ok(name) = ShortString::try_new(name) {
            let value = LongString::from(value.as_bytes().to_vec());
            table.insert(name, AMQPValue::LongString(value));
        }
    }
    table
}

/// RabbitMQ's direct reply-to: the caller consumes from this pseudo-queue, and a reply to it
/// can be neither persistent nor queued.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The message a reply becomes: the response's content type as the property, the other
/// headers (status, errors, allow-listed response headers) as headers, the request's
/// correlation id.
///
/// Header values are long strings holding the reply's bytes unchanged (an AMQP long string
/// is a byte sequence): UTF-8 `café` and raw bytes alike, nothing dropped. A content type
/// that cannot be the `content_type` property (not UTF-8, longer than 255 bytes) stays a
/// `Content-Type` header rather than being lost.
pub fn reply_message(
    destination: &str,
    reply: &Reply,
    correlation: Option<&str>,
) -> BasicProperties {
    let mut properties = BasicProperties::default();
    let mut headers = FieldTable::default();
    for (name, value) in &reply.headers {
        if name.eq_ignore_ascii_case("content-type") && properties.content_type().is_none() {
            let property = std::str::from_utf8(value)
                .ok()
                .and_then(|c| ShortString::try_new(c).ok());
            if let Some(content_type) = property {
                properties = properties.with_content_type(content_type);
                continue;
            }
        }
        if let Ok(name) = ShortString::try_new(name.as_ref()) {
            let value = LongString::from(value.to_vec());
            headers.insert(name, AMQPValue::LongString(value));
        }
    }
    properties = properties.with_headers(headers);
    if let Some(id) = correlation.and_then(|c| ShortString::try_new(c).ok()) {
        properties = properties.with_correlation_id(id);
    }
    if !destination.starts_with(DIRECT_REPLY_TO) {
        properties = properties.with_delivery_mode(PERSISTENT);
    }
    properties
}

/// `delivery_mode` of a message that survives a broker restart in a durable queue.
pub const PERSISTENT: u8 = 2;

/// Publishes and waits for the broker's confirm. `channel` must be in confirm mode.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), Undelivered> {
    let options = BasicPublishOptions {
        mandatory: !routing_key.starts_with(DIRECT_REPLY_TO),
        ..BasicPublishOptions::default()
    };
    let failed = |e: lapin::Error| Undelivered::Failed(Cause::new(e));
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            payload,
            properties,
        )
        .await
        .map_err(failed)?;
    match confirm.await.map_err(failed)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Undelivered::Dropped(Cause::text(match exchange {
            "" => format!("no queue named {routing_key:?}"),
            _ => format!("exchange {exchange:?} routes {routing_key:?} to no queue"),
        }))),
        Confirmation::Nack(_) => Err(Undelivered::Failed(Cause::text(format!(
            "the broker refused the message to {routing_key:?} (nack)"
        )))),
        Confirmation::NotRequested => Err(Undelivered::Failed(Cause::text(
            "the channel is not in confirm mode",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn a_reply_carries_its_content_type_as_the_property_and_the_correlation_id() {
        let reply = Reply {
            status: StatusCode::CREATED,
            headers: [
                ("Content-Type", "application/json"),
                ("Ricochet-Status", "201"),
            ]
            .into_iter()
            .collect(),
            body: bytes::Bytes::from_static(b"{}"),
        };
        let p = reply_message("replies", &reply, Some("c-1"));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c-1"));
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        let headers = crate::source::amqp::fields::decode(p.headers().as_ref()).headers;
        assert_eq!(
            headers,
            vec![("Ricochet-Status".to_string(), "201".to_string())]
        );
        // Direct reply-to cannot take a persistent message.
        let direct = reply_message("amq.rabbitmq.reply-to.g2dkABFyYWJiaXRA", &reply, None);
        assert_eq!(*direct.delivery_mode(), None);
        assert_eq!(*direct.correlation_id(), None);
    }

    #[test]
    fn reply_header_values_are_long_strings_of_their_bytes_unchanged() {
        let reply = Reply {
            status: StatusCode::OK,
            headers: [
                ("X-Name", &b"caf\xc3\xa9"[..]),
                ("X-Raw", &b"\xff\xfe\x00"[..]),
                ("X-Empty", &b""[..]),
                ("Content-Type", &b"text/plain; charset=caf\xe9"[..]),
            ]
            .into_iter()
            .map(|(n, v)| (n, bytes::Bytes::from_static(v)))
            .collect(),
            body: bytes::Bytes::new(),
        };
        let p = reply_message("replies", &reply, None);
        let table = p.headers().clone().unwrap();
        let get = |name: &str| match table.inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.as_bytes().to_vec(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(get("X-Name"), b"caf\xc3\xa9");
        assert_eq!(get("X-Raw"), b"\xff\xfe\x00");
        assert_eq!(get("X-Empty"), b"");
        // Not UTF-8: no content_type property, but not lost either.
        assert_eq!(*p.content_type(), None);
        assert_eq!(get("Content-Type"), b"text/plain; charset=caf\xe9");
    }
}
