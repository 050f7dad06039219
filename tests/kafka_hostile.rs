//! Kafka header bytes, as a hostile or careless producer sends them, against a real
//! Kafka-protocol broker (tansu, `KAFKA_BROKERS`) with fresh topics: binary values, a BOM,
//! empty values and names, repeated names, null values, a binary correlation id; and
//! response headers that are not ASCII, on their way back into the reply record.
//! The rules are stated in docs/security.md ("Hostile messages") and docs/sources/kafka.md.

mod common;

use std::time::Duration;

use std::collections::HashMap;

use common::kafka::{self, next};
use common::*;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const WAIT: Duration = Duration::from_secs(20);

/// A record header as produced: `None` is a null value.
type RawHeader<'a> = (&'a str, Option<&'a [u8]>);

/// Produces one record (one per batch: the producer lingers 0 ms and each send is awaited)
/// with exactly these headers, bytes and nulls included.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    headers: &[RawHeader<'_>],
    payload: &[u8],
) {
    let owned = headers
        .iter()
        .fold(OwnedHeaders::new(), |all, (key, value)| {
            all.insert(Header { key, value: *value })
        });
    let record = FutureRecord::<(), _>::to(topic)
        .payload(payload)
        .headers(owned);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("request produced");
}

/// Every header of a record, in order, as bytes (`None` for a null value).
fn headers_of(message: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// The first value of `name` in a record, as bytes.
fn value(message: &OwnedMessage, name: &str) -> Option<Vec<u8>> {
    headers_of(message)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v)
}

fn text(message: &OwnedMessage, name: &str) -> Option<String> {
    value(message, name).map(|v| String::from_utf8(v).expect("a text header"))
}

#[tokio::test]
async fn a_binary_correlation_id_is_echoed_byte_for_byte() {
    let requests = kafka::topic("khbin", 1).await;
    let replies = kafka::topic("khbinrep", 1).await;
    let spring_requests = kafka::topic("khspring", 1).await;
    let spring_replies = kafka::topic("khspringrep", 1).await;
    let upstream = Upstream::echo().await;
    let mut routes = kafka::route(
        "bin",
        &requests,
        "",
        &format!("reply_topic = \"{replies}\""),
    );
    // Spring's ReplyingKafkaTemplate: 16 random bytes in kafka_correlationId.
    routes.push_str(&kafka::route(
        "spring",
        &spring_requests,
        "correlation_header = \"kafka_correlationId\"",
        &format!("reply_topic = \"{spring_replies}\""),
    ));
    let ricochet = kafka::start(&upstream, &routes, "bin").await;
    let producer = kafka::producer();

    let id: &[u8] = b"c1-\xffbin";
    produce(
        &producer,
        &requests,
        &[("correlation-id", Some(id))],
        b"one",
    )
    .await;
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(reply.payload(), Some(&b"one"[..]));
    assert_eq!(text(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(
        value(&reply, "correlation-id").as_deref(),
        Some(id),
        "not c1-\\xef\\xbf\\xbdbin"
    );
    let echoed: Vec<_> = headers_of(&reply)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("correlation-id"))
        .collect();
    assert_eq!(echoed.len(), 1, "echoed once: {echoed:?}");

    let random: Vec<u8> = {
        let mut bytes = nuid::next().as_bytes()[..14].to_vec();
        bytes.extend([0xff, 0x00]);
        bytes
    };
    let spring = [
        ("kafka_correlationId", Some(&random[..])),
        ("x-tenant", Some(&b"acme"[..])),
    ];
    kafka::wait_assigned(&ricochet, "spring").await;
    produce(&producer, &spring_requests, &spring, b"two").await;
    let reply = next(&kafka::consumer(&spring_replies), WAIT).await;
    assert_eq!(text(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(value(&reply, "kafka_correlationId"), Some(random));

    // Both reached the service; an id without a text form is not forwarded to it.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| !s.headers.contains_key("correlation-id")));
    assert!(!seen[1].headers.contains_key("kafka_correlationid"));
    assert_eq!(seen[1].headers["x-tenant"], "acme");
}

#[tokio::test]
async fn a_value_that_is_not_utf8_is_refused_and_dead_lettered_with_its_headers_intact() {
    let requests = kafka::topic("khbad", 1).await;
    let replies = kafka::topic("khbadrep", 1).await;
    let dead = kafka::topic("khbaddead", 1).await;
    let upstream = Upstream::echo().await;
    let extra = format!("reply_topic = \"{replies}\"\ndead_letter_topic = \"{dead}\"");
    let ricochet = kafka::start(
        &upstream,
        &kafka::route("bad", &requests, "", &extra),
        "bad",
    )
    .await;
    let producer = kafka::producer();

    // Refused: X-Bom is not UTF-8 (a UTF-16 byte order mark).
    let bad: [RawHeader; 8] = [
        ("correlation-id", Some(b"c-bad")),
        ("X-Tenant", Some(b"acme")),
        ("X-Bom", Some(b"\xff\xfe")),
        ("X-Empty", Some(b"")),
        ("X-Null", None),
        ("X-Dup", Some(b"1")),
        ("X-Dup", Some(b"2")),
        ("X-Bin", Some(b"c1-\xffbin")),
    ];
    produce(&producer, &requests, &bad, b"refused").await;
    // Refused: a header without a name cannot become an HTTP header.
    let nameless: [RawHeader; 2] = [("correlation-id", Some(b"c-nameless")), ("", Some(b"v"))];
    produce(&producer, &requests, &nameless, b"nameless").await;
    // Answered: every value text, repeats, empties and nulls included.
    let good: [RawHeader; 6] = [
        ("correlation-id", Some(b"c-good")),
        ("X-Empty", Some(b"")),
        ("X-Null", None),
        ("X-Dup", Some(b"1")),
        ("X-Dup", Some(b"2")),
        ("X-Name", Some("café".as_bytes())),
    ];
    produce(&producer, &requests, &good, b"good").await;

    // Replies and dead letters by correlation id (records without a key may run in
    // parallel, so their order is not the test's business).
    let reader = kafka::consumer(&replies);
    let mut answers: HashMap<String, OwnedMessage> = HashMap::new();
    while answers.len() < 3 {
        let reply = next(&reader, WAIT).await;
        answers.insert(text(&reply, "correlation-id").unwrap(), reply);
    }
    let refused = &answers["c-bad"];
    assert_eq!(text(refused, "Ricochet-Status").as_deref(), Some("400"));
    assert_eq!(
        text(refused, "Ricochet-Error").as_deref(),
        Some("bad_request")
    );
    let body: serde_json::Value = serde_json::from_slice(refused.payload().unwrap()).unwrap();
    let error = "header \"X-Bom\" cannot become an HTTP header: its value is 2 bytes that are \
                 not UTF-8 (the first invalid byte at offset 0)";
    assert_eq!(body["error"], error);
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/sources/kafka.md"
    ))
    .unwrap();
    assert!(
        page.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(error),
        "docs/sources/kafka.md quotes the refusal as ricochet words it"
    );
    let nameless_reply = &answers["c-nameless"];
    assert_eq!(
        text(nameless_reply, "Ricochet-Status").as_deref(),
        Some("400")
    );
    let body: serde_json::Value =
        serde_json::from_slice(nameless_reply.payload().unwrap()).unwrap();
    assert_eq!(body["error"], "header \"\" is not a valid HTTP header");
    let answered = &answers["c-good"];
    assert_eq!(text(answered, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(answered.payload(), Some(&b"good"[..]));

    // The dead letters: the original headers first, every one byte for byte and in order,
    // then ricochet's.
    let letters = kafka::consumer(&dead);
    let mut dead_letters: HashMap<Vec<u8>, OwnedMessage> = HashMap::new();
    while dead_letters.len() < 2 {
        let letter = next(&letters, WAIT).await;
        dead_letters.insert(letter.payload().unwrap_or_default().to_vec(), letter);
    }
    for (original, payload) in [
        (&bad[..], &b"refused"[..]),
        (&nameless[..], &b"nameless"[..]),
    ] {
        let letter = &dead_letters[payload];
        let headers = headers_of(letter);
        // A null value is produced as an empty one (documented).
        let expected: Vec<(String, Option<Vec<u8>>)> = original
            .iter()
            .map(|(n, v)| (n.to_string(), Some(v.unwrap_or_default().to_vec())))
            .collect();
        assert_eq!(headers[..expected.len()], expected[..], "{headers:?}");
        assert_eq!(
            text(letter, "Ricochet-Dead-Letter-Reason").as_deref(),
            Some("bad_request")
        );
        assert_eq!(text(letter, "Ricochet-Last-Status").as_deref(), Some("400"));
    }

    // The service saw the good record only, with every value in order.
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        1,
        "the refused records never reached the service"
    );
    let headers = &seen[0].headers;
    assert_eq!(headers["x-empty"], "");
    assert_eq!(
        headers["x-null"], "",
        "a null value arrives as an empty one"
    );
    let dups: Vec<_> = headers.get_all("x-dup").iter().collect();
    assert_eq!(dups, ["1", "2"]);
    assert_eq!(headers["x-name"].as_bytes(), "café".as_bytes());
    // Live and ready throughout: the refusals cost their own records only.
    assert_eq!(ricochet.admin_get("/healthz").await.unwrap().0, 200);
    ricochet.wait_ready().await;
}

#[tokio::test]
async fn response_headers_that_are_not_ascii_reach_the_reply_record_unchanged() {
    let requests = kafka::topic("khresp", 1).await;
    let replies = kafka::topic("khresprep", 1).await;
    let upstream = Upstream::non_ascii_echo().await;
    let extra = format!("reply_topic = \"{replies}\"");
    let _ricochet = kafka::start(
        &upstream,
        &kafka::route("resp", &requests, "", &extra),
        "resp",
    )
    .await;
    let producer = kafka::producer();
    produce(
        &producer,
        &requests,
        &[("correlation-id", Some(b"c-1"))],
        b"x",
    )
    .await;
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(text(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(
        value(&reply, "x-name").as_deref(),
        Some(&b"caf\xc3\xa9"[..])
    );
    assert_eq!(value(&reply, "x-raw").as_deref(), Some(&b"\xff\xfe"[..]));
}

/// A header *key* that is not UTF-8 (rdkafka's own producer API cannot write one; librdkafka's
/// C API can, as can any client writing the protocol itself). rdkafka's header reader would
/// panic on it and stop the route's consumer thread; ricochet reads the key itself, refuses
/// the record with 400, dead-letters it and answers the next one.
#[tokio::test]
async fn a_header_key_that_is_not_utf8_costs_only_its_record() {
    let requests = kafka::topic("khkey", 1).await;
    let replies = kafka::topic("khkeyrep", 1).await;
    let dead = kafka::topic("khkeydead", 1).await;
    let upstream = Upstream::echo().await;
    let extra = format!("reply_topic = \"{replies}\"\ndead_letter_topic = \"{dead}\"");
    let ricochet = kafka::start(
        &upstream,
        &kafka::route("key", &requests, "", &extra),
        "key",
    )
    .await;
    let producer = kafka::producer();

    let headers = OwnedHeaders::new().insert(Header {
        key: "correlation-id",
        value: Some(b"c-key"),
    });
    let name = b"X-\xff\xfeKey";
    let value = b"v";
    // SAFETY: `headers` owns the list the pointer names (rdkafka casts the same way); the
    // name and value are copied by librdkafka.
    let added = unsafe {
        let native =
            headers.as_borrowed() as *const _ as *mut rdkafka::bindings::rd_kafka_headers_t;
        rdkafka::bindings::rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            name.len() as isize,
            value.as_ptr().cast(),
            value.len() as isize,
        )
    };
    assert_eq!(
        added,
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    let record = FutureRecord::<(), _>::to(&requests)
        .payload(&b"bad key"[..])
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("request produced");
    produce(
        &producer,
        &requests,
        &[("correlation-id", Some(b"c-next"))],
        b"next",
    )
    .await;

    let reply_consumer = kafka::consumer(&replies);
    let mut statuses = HashMap::new();
    while statuses.len() < 2 {
        let reply = next(&reply_consumer, WAIT).await;
        statuses.insert(
            text(&reply, "correlation-id").unwrap(),
            text(&reply, "Ricochet-Status").unwrap(),
        );
    }
    assert_eq!(statuses["c-key"], "400");
    assert_eq!(statuses["c-next"], "200");
    let letter = next(&kafka::consumer(&dead), WAIT).await;
    assert_eq!(letter.payload(), Some(&b"bad key"[..]));
    assert_eq!(
        text(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
        Some("bad_request")
    );
    assert_eq!(
        upstream.calls(),
        1,
        "only the next record reached the service"
    );
    assert_eq!(ricochet.admin_get("/healthz").await.unwrap().0, 200);
    ricochet.wait_ready().await;
}
