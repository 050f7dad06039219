//! Kafka record headers -> the header form of [`Inbound`](crate::message::Inbound), at the
//! start of the flow (source -> admission). Pure; the record's raw headers stay on the
//! record for its reply (the correlation id) and its dead letter (every header, byte for
//! byte).
//!
//! A Kafka header value is bytes; an HTTP header value is text. The rule, the same as the
//! AMQP source's:
//! - a value that is valid UTF-8 is text, and follows the text rules of the request mapping
//!   (a line break or other control character gets the message a 400, as on every source);
//! - a value that is not UTF-8 cannot become an HTTP header value: it is kept out of the
//!   text headers as an [`UnreadableHeader`], and the request mapping refuses the message
//!   with 400 when the route would forward that header (a durable route then dead-letters
//!   it with its original headers);
//! - except the route's `correlation_header`: ricochet echoes it on the reply byte for byte
//!   whatever its bytes (Spring's `ReplyingKafkaTemplate` sends 16 random bytes), so a
//!   value that is not UTF-8 there is not an error; it is not forwarded to the service,
//!   which could not receive it.
//!
//! Order is kept and a name may repeat: every value is forwarded, in order, as separate
//! HTTP header lines. An empty value is an empty header value; an empty name is not a valid
//! HTTP header name, so the mapping refuses the message with 400 (unless the route's lists
//! would not forward it). A null value (Kafka tells null from empty) arrives as empty.

use crate::message::UnreadableHeader;

/// A record's headers split by the rule above: `(text, unreadable)`.
pub fn split(
    headers: &[(String, Vec<u8>)],
    correlation_header: &str,
) -> (Vec<(String, String)>, Vec<UnreadableHeader>) {
    let mut text = Vec::with_capacity(headers.len());
    let mut unreadable = Vec::new();
    for (name, value) in headers {
        match std::str::from_utf8(value) {
            Ok(value) => text.push((name.clone(), value.to_string())),
            // Echoed from the raw bytes (see `correlation`), never forwarded.
            Err(_) if name.eq_ignore_ascii_case(correlation_header) => {}
            Err(e) => unreadable.push(UnreadableHeader {
                name: name.clone(),
                why: not_utf8(value.len(), e.valid_up_to()),
            }),
        }
    }
    (text, unreadable)
}

/// The correlation id to echo: the first value of `correlation_header`, as its bytes.
pub fn correlation<'a>(
    headers: &'a [(String, Vec<u8>)],
    correlation_header: &str,
) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(correlation_header))
        .map(|(_, value)| value.as_slice())
}

/// Why a value is unreadable, without its content (which may be a secret).
fn not_utf8(len: usize, valid_up_to: usize) -> String {
    format!("{len} bytes that are not UTF-8 (the first invalid byte at offset {valid_up_to})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a producer sends, every header is accounted for, in order: text with its
        /// exact bytes, or unreadable by name; only a binary correlation id is neither, and
        /// it is what `correlation` echoes when it comes first.
        #[test]
        fn no_header_is_lost_or_altered(
            headers in prop::collection::vec(
                (
                    prop_oneof![Just("correlation-id".to_string()), Just("X-Dup".to_string()), any::<String>()],
                    prop_oneof![any::<Vec<u8>>(), any::<String>().prop_map(String::into_bytes)],
                ),
                0..12,
            )
        ) {
            let (text, unreadable) = split(&headers, "correlation-id");
            let (mut text, mut unreadable) = (text.into_iter(), unreadable.into_iter());
            for (name, value) in &headers {
                match std::str::from_utf8(value) {
                    Ok(value) => {
                        prop_assert_eq!(text.next(), Some((name.clone(), value.to_string())));
                    }
                    Err(_) if name.eq_ignore_ascii_case("correlation-id") => {}
                    Err(_) => prop_assert_eq!(unreadable.next().map(|u| u.name), Some(name.clone())),
                }
            }
            prop_assert!(text.next().is_none() && unreadable.next().is_none());
            let first = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("correlation-id"));
            prop_assert_eq!(correlation(&headers, "correlation-id"), first.map(|(_, v)| v.as_slice()));
        }
    }

    fn raw(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn utf8_values_are_text_in_order_with_repeats_and_empties() {
        let headers = raw(&[
            ("X-Name", "café".as_bytes()),
            ("X-Dup", b"1"),
            ("X-Empty", b""),
            ("", b"no name"),
            ("X-Dup", b"2"),
            ("X-Line", b"a\r\nb"),
        ]);
        let (text_headers, unreadable) = split(&headers, "correlation-id");
        assert_eq!(
            text_headers,
            text(&[
                ("X-Name", "café"),
                ("X-Dup", "1"),
                ("X-Empty", ""),
                ("", "no name"),
                ("X-Dup", "2"),
                // Text: the request mapping refuses its line break, as on every source.
                ("X-Line", "a\r\nb"),
            ])
        );
        assert!(unreadable.is_empty());
    }

    #[test]
    fn values_that_are_not_utf8_are_unreadable_never_replaced() {
        let headers = raw(&[
            ("X-Ok", b"fine"),
            ("X-Bin", b"c1-\xffbin"),
            ("X-Bom", b"\xff\xfe"),
        ]);
        let (text_headers, unreadable) = split(&headers, "correlation-id");
        assert_eq!(text_headers, text(&[("X-Ok", "fine")]));
        assert_eq!(
            unreadable,
            [
                UnreadableHeader {
                    name: "X-Bin".into(),
                    why: "7 bytes that are not UTF-8 (the first invalid byte at offset 3)".into(),
                },
                UnreadableHeader {
                    name: "X-Bom".into(),
                    why: "2 bytes that are not UTF-8 (the first invalid byte at offset 0)".into(),
                },
            ]
        );
    }

    #[test]
    fn a_binary_correlation_id_is_neither_text_nor_an_error_and_is_echoed_as_its_bytes() {
        let id: &[u8] = b"\x00\xff\x10\x80 random \xfe";
        let headers = raw(&[("kafka_correlationId", id), ("X-Ok", b"1")]);
        let (text_headers, unreadable) = split(&headers, "KAFKA_CORRELATIONID");
        assert_eq!(text_headers, text(&[("X-Ok", "1")]));
        assert!(unreadable.is_empty());
        assert_eq!(correlation(&headers, "kafka_correlationid"), Some(id));
        // A text correlation id is forwarded as before; the first of several is echoed.
        let headers = raw(&[("correlation-id", b"c-1"), ("correlation-id", b"c-2")]);
        let (text_headers, _) = split(&headers, "correlation-id");
        assert_eq!(text_headers.len(), 2);
        assert_eq!(correlation(&headers, "correlation-id"), Some(&b"c-1"[..]));
        assert_eq!(correlation(&headers, "other"), None);
    }
}
