//! AMQP header field tables on the request side: what each field type of a request's
//! `headers` becomes on its way to HTTP ([`decode`], the first step of the flow for this
//! source), and the table a retry copy or a dead letter carries ([`copy`]: the request's
//! own table as it arrived, ricochet's headers beside it).
//!
//! | field type | HTTP header value |
//! |---|---|
//! | long string `S`, byte array `x` | its text when the bytes are UTF-8, then held to the rules for text (CR, LF, NUL and other control characters: refused); bytes that are not UTF-8: refused |
//! | boolean `t` | `true` or `false` |
//! | integers `b` `B` `s` `u` `I` `i` `l` | decimal, e.g. `-128`, `4294967295` |
//! | float `f`, double `d` | the shortest decimal that reads back as the same number (`1.5`, `-0.25`, `NaN`, `inf`) |
//! | decimal `D` | scale *s* and value *v* as *v* × 10<sup>-s</sup>, every digit kept (`1.50`); *v* read as a signed 32-bit number, as the Java client and pika write it |
//! | timestamp `T` | seconds since the Unix epoch, decimal |
//! | void `V` | the empty value |
//! | field table `F`, field array `A` | refused: no single text form |
//!
//! "Refused" means the header goes to [`Inbound::unreadable`](crate::message::Inbound), and
//! the request mapping answers 400 (and dead-letters the request) when the route would
//! forward that header. RabbitMQ's own headers (`x-death`, ...) are neither forwarded nor
//! copied.
//!
//! Why lapin's table is copied rather than the request's text headers: a copy must carry the
//! request's headers with their types (an integer stays an integer, a byte array a byte
//! array), including those that have no text form.

use lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};

use crate::message::UnreadableHeader;

/// Headers RabbitMQ sets itself when it dead-letters or counts a message: never forwarded
/// to the service and not copied onto republished messages.
const BROKER_HEADERS: [&str; 3] = ["x-death", "x-delivery-count", "x-received-from"];

fn is_broker_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    BROKER_HEADERS.contains(&lower.as_str())
        || lower.starts_with("x-first-death-")
        || lower.starts_with("x-last-death-")
}

/// A request's field table as ricochet's headers.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// Headers with a text form, in the table's order.
    pub headers: Vec<(String, String)>,
    /// Headers without one, for the request mapping to refuse.
    pub unreadable: Vec<UnreadableHeader>,
}

/// Every header of `table` but the broker's own, as text or as unreadable.
pub fn decode(table: Option<&FieldTable>) -> Decoded {
    let mut decoded = Decoded::default();
    for (name, value) in table.into_iter().flat_map(FieldTable::inner) {
        if is_broker_header(name.as_str()) {
            continue;
        }
        match text_of(value) {
            Ok(text) => decoded.headers.push((name.to_string(), text)),
            Err(why) => decoded.unreadable.push(UnreadableHeader {
                name: name.to_string(),
                why: why.into(),
            }),
        }
    }
    decoded
}

/// A field value as the text of an HTTP header value, or what it is when it has none.
pub fn text_of(value: &AMQPValue) -> Result<String, &'static str> {
    let utf8 = |bytes: &[u8], what| match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(_) => Err(what),
    };
    Ok(match value {
        AMQPValue::LongString(s) => utf8(s.as_bytes(), "a long string that is not UTF-8")?,
        AMQPValue::ByteArray(b) => utf8(b.as_slice(), "a byte array that is not UTF-8")?,
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => decimal(*d),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldTable(_) => return Err("a field table"),
        AMQPValue::FieldArray(_) => return Err("a field array"),
    })
}

/// `value × 10^-scale` with every digit. The AMQP 0-9-1 grammar calls the value unsigned,
/// but the Java client and pika write (and read) it as a signed 32-bit number, so a
/// decimal of -1.5 arrives as 4294967281 with scale 1: read it as they mean it.
fn decimal(d: DecimalValue) -> String {
    let value = d.value as i32;
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(d.scale);
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// A whole number header value (`x-delivery-count` is a long; ricochet's own are text).
pub fn number_of(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// The table of a copy of a request (a retry copy, a dead letter): `original` as it
/// arrived (every name, type and value), minus the broker's own headers and the names in
/// `drop`, with `ours` added as long strings. A name of `ours` replaces the original's of
/// the same name in any case, so a copy never carries two of ricochet's headers.
pub fn copy<'a>(
    original: Option<&FieldTable>,
    drop: &[&str],
    ours: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> FieldTable {
    let ours: Vec<(&str, &str)> = ours.into_iter().collect();
    let replaced = |name: &str| {
        is_broker_header(name)
            || (drop.iter().chain(ours.iter().map(|(n, _)| n)))
                .any(|d| d.eq_ignore_ascii_case(name))
    };
    let kept = (original.into_iter().flat_map(FieldTable::inner))
        .filter(|(name, _)| !replaced(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()));
    let mut table = FieldTable::from(kept.collect::<std::collections::BTreeMap<_, _>>());
    for (name, value) in ours {
        if let Ok(name) = ShortString::try_new(name) {
            let value = LongString::from(value.as_bytes().to_vec());
            table.insert(name, AMQPValue::LongString(value));
        }
    }
    table
}

/// The `timestamp` property (whole seconds since the Unix epoch) as the time the message
/// was sent. Zero is what some clients write for none, and a time the system clock cannot
/// hold is none either: the message's age then counts from its receipt.
pub fn sent_at(seconds: Option<u64>) -> Option<std::time::SystemTime> {
    let seconds = seconds.filter(|s| *s > 0)?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
}

/// The `expiration` property: the message's time-to-live in milliseconds, as RabbitMQ
/// defines it (a non-negative integer in text; the broker refuses anything else at publish).
pub fn expires_in(expiration: Option<&str>) -> Option<std::time::Duration> {
    let millis = expiration?.trim().parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, FieldArray};

    #[test]
    fn the_timestamp_and_expiration_properties_are_read_and_none_is_none() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(sent_at(None), None);
        // 0 is what some clients send for none; u64::MAX seconds no clock holds.
        assert_eq!(sent_at(Some(0)), None);
        assert_eq!(sent_at(Some(u64::MAX)), None);
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(sent_at(Some(1_700_000_000)), Some(at));
        assert_eq!(expires_in(Some("1500")), Some(Duration::from_millis(1500)));
        assert_eq!(expires_in(Some("0")), Some(Duration::ZERO));
        for bad in ["-1", "1.5", "soon", ""] {
            assert_eq!(expires_in(Some(bad)), None, "{bad}");
        }
        assert_eq!(expires_in(None), None);
    }

    fn text(value: AMQPValue) -> Result<String, &'static str> {
        text_of(&value)
    }

    #[test]
    fn every_field_type_has_its_documented_text_or_is_unreadable() {
        assert_eq!(text(AMQPValue::Boolean(true)), Ok("true".into()));
        assert_eq!(text(AMQPValue::ShortShortInt(-128)), Ok("-128".into()));
        assert_eq!(text(AMQPValue::ShortShortUInt(255)), Ok("255".into()));
        assert_eq!(text(AMQPValue::ShortInt(-32768)), Ok("-32768".into()));
        assert_eq!(text(AMQPValue::ShortUInt(65535)), Ok("65535".into()));
        assert_eq!(text(AMQPValue::LongInt(i32::MIN)), Ok("-2147483648".into()));
        assert_eq!(text(AMQPValue::LongUInt(u32::MAX)), Ok("4294967295".into()));
        assert_eq!(
            text(AMQPValue::LongLongInt(i64::MIN)),
            Ok("-9223372036854775808".into())
        );
        assert_eq!(text(AMQPValue::Float(1.5)), Ok("1.5".into()));
        assert_eq!(text(AMQPValue::Double(-0.25)), Ok("-0.25".into()));
        assert_eq!(text(AMQPValue::Double(f64::NAN)), Ok("NaN".into()));
        assert_eq!(
            text(AMQPValue::Timestamp(1_700_000_000)),
            Ok("1700000000".into())
        );
        assert_eq!(text(AMQPValue::Void), Ok(String::new()));
        assert_eq!(
            text(AMQPValue::LongString("é\r\n".into())),
            Ok("é\r\n".into()),
            "text keeps its line breaks: the header rules refuse them"
        );
        assert_eq!(
            text(AMQPValue::ByteArray(ByteArray::from(b"Bearer t".to_vec()))),
            Ok("Bearer t".into())
        );
        assert_eq!(
            text(AMQPValue::ByteArray(ByteArray::from(vec![1, 0xff]))),
            Err("a byte array that is not UTF-8")
        );
        assert_eq!(
            text(AMQPValue::LongString(LongString::from(vec![0xc3]))),
            Err("a long string that is not UTF-8")
        );
        assert_eq!(
            text(AMQPValue::FieldTable(FieldTable::default())),
            Err("a field table")
        );
        assert_eq!(
            text(AMQPValue::FieldArray(FieldArray::default())),
            Err("a field array")
        );
    }

    #[test]
    fn decimals_keep_every_digit_and_their_sign() {
        let d = |scale, value: i32| {
            decimal(DecimalValue {
                scale,
                value: value as u32,
            })
        };
        assert_eq!(d(2, 150), "1.50");
        assert_eq!(d(0, 7), "7");
        assert_eq!(d(3, 5), "0.005");
        assert_eq!(d(1, -15), "-1.5");
        assert_eq!(d(2, i32::MIN), "-21474836.48");
        assert_eq!(d(0, 0), "0");
    }

    #[test]
    fn decoding_keeps_the_text_apart_from_the_unreadable_and_skips_the_brokers_own() {
        let mut t = FieldTable::default();
        t.insert("X-Tenant".into(), AMQPValue::LongString("acme".into()));
        t.insert("x-retry".into(), AMQPValue::LongInt(3));
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        t.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        t.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("q".into()),
        );
        t.insert(
            "nested".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let decoded = decode(Some(&t));
        assert_eq!(
            decoded.headers,
            vec![
                ("X-Tenant".to_string(), "acme".to_string()),
                ("x-retry".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(
            decoded.unreadable,
            vec![UnreadableHeader {
                name: "nested".into(),
                why: "a field table".into()
            }]
        );
        assert_eq!(decode(None), Decoded::default());
    }

    #[test]
    fn numbers_are_read_from_integers_and_text() {
        assert_eq!(number_of(&AMQPValue::LongLongInt(4)), Some(4));
        assert_eq!(number_of(&AMQPValue::ShortUInt(4)), Some(4));
        assert_eq!(number_of(&AMQPValue::LongString("7".into())), Some(7));
        assert_eq!(number_of(&AMQPValue::LongString("x".into())), None);
        assert_eq!(number_of(&AMQPValue::LongInt(-1)), None);
        assert_eq!(number_of(&AMQPValue::Double(1.0)), None);
        assert_eq!(number_of(&AMQPValue::Boolean(true)), None);
    }

    #[test]
    fn a_copy_keeps_the_original_table_and_adds_ours_beside_it() {
        let mut inner = FieldTable::default();
        inner.insert("k".into(), AMQPValue::LongString("v".into()));
        let mut t = FieldTable::default();
        t.insert("X-Num".into(), AMQPValue::ShortUInt(7));
        t.insert("X-Bin".into(), AMQPValue::ByteArray(vec![1, 2].into()));
        t.insert("X-Tab".into(), AMQPValue::FieldTable(inner.clone()));
        t.insert("X-Void".into(), AMQPValue::Void);
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        t.insert(
            "Ricochet-Deliveries".into(),
            AMQPValue::LongString("2".into()),
        );
        t.insert(
            "ricochet-route".into(),
            AMQPValue::LongString("spoofed".into()),
        );
        let copy = copy(
            Some(&t),
            &["ricochet-deliveries"],
            [("Ricochet-Route", "r")],
        );
        let get = |name: &str| {
            copy.inner()
                .get(&ShortString::from(name.to_string()))
                .cloned()
        };
        assert_eq!(get("X-Num"), Some(AMQPValue::ShortUInt(7)));
        assert_eq!(get("X-Bin"), Some(AMQPValue::ByteArray(vec![1, 2].into())));
        assert_eq!(get("X-Tab"), Some(AMQPValue::FieldTable(inner)));
        assert_eq!(get("X-Void"), Some(AMQPValue::Void));
        assert_eq!(get("x-death"), None, "the broker's own are not copied");
        assert_eq!(get("Ricochet-Deliveries"), None);
        assert_eq!(
            get("ricochet-route"),
            None,
            "ours replace theirs in any case"
        );
        assert_eq!(
            get("Ricochet-Route"),
            Some(AMQPValue::LongString("r".into()))
        );
        assert_eq!(copy.inner().len(), 5);
    }
}
