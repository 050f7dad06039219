//! Validation at the edge, end to end for every source: the real binary, the real brokers,
//! a schema registry the tests run themselves (`common::registry`), and Avro written and read
//! by fastavro (Python), not by ricochet's own code.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::jetstream::{request_headers, Stream};
use common::registry::{fastavro, SchemaRegistry};
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A JSON Schema for orders: a string id, a positive integer quantity.
const ORDER_JSON_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "qty"],
  "properties": {
    "id": {"type": "string"},
    "qty": {"type": "integer", "minimum": 1}
  }
}"#;

/// An Avro order that references a named type of another subject.
const ADDRESS_AVRO: &str = r#"{"type": "record", "name": "Address", "namespace": "acme",
  "fields": [{"name": "city", "type": "string"}]}"#;
const ORDER_AVRO: &str = r#"{"type": "record", "name": "Order", "namespace": "acme", "fields": [
  {"name": "id", "type": "string"},
  {"name": "qty", "type": "int"},
  {"name": "ship_to", "type": "acme.Address"},
  {"name": "note", "type": ["null", "string"], "default": null}
]}"#;
const ORDER_RECORD: &str =
    r#"{"id": "o-1", "qty": 2, "ship_to": {"city": "Oslo"}, "note": "gift"}"#;

/// The reply a service gives, and its Avro schema.
const RECEIPT_AVRO: &str = r#"{"type": "record", "name": "Receipt", "namespace": "acme",
  "fields": [{"name": "order", "type": "string"}, {"name": "total", "type": "long"}]}"#;

/// Writes `text` to a file in a directory kept for the test's life.
fn schema_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A registry holding the order schema (with its reference) under `orders-<tag>`.
struct Orders {
    registry: SchemaRegistry,
    subject: String,
    id: u32,
}

impl Orders {
    async fn start(tag: &str) -> Self {
        let registry = SchemaRegistry::start().await;
        let address_subject = unique(&format!("address-{tag}-"));
        registry.register(&address_subject, ADDRESS_AVRO, &[]);
        let subject = unique(&format!("orders-{tag}-"));
        let id = registry.register(
            &subject,
            ORDER_AVRO,
            &[("acme.Address", &address_subject, 1)],
        );
        Self {
            registry,
            subject,
            id,
        }
    }

    /// `record` as fastavro writes it with schema `id`.
    fn message(&self, id: u32, record: &str) -> Vec<u8> {
        fastavro::encode(ORDER_AVRO, &[ADDRESS_AVRO], id, record)
    }

    /// The same schema registered again under the orders subject: a new id nobody has
    /// fetched yet.
    fn new_version(&self) -> u32 {
        let address_subject = unique("address-again-");
        self.registry.register(&address_subject, ADDRESS_AVRO, &[]);
        let references = [("acme.Address", address_subject.as_str(), 1)];
        self.registry
            .register(&self.subject, ORDER_AVRO, &references)
    }
}

fn core_route(name: &str, subject: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nsubject = \"{subject}\"\nmethod = \"POST\"\npath = \"/orders\"\n{extra}\n")
}

async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject.to_string(), headers, Bytes::from(body)),
    )
    .await
    .expect("reply within 10 s")
    .expect("reply")
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers
}

fn body(reply: &async_nats::Message) -> Value {
    serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&reply.payload)))
}

fn validation_failures(metrics: &str, kind: &str) -> f64 {
    let kind = format!("kind=\"{kind}\"");
    metric(metrics, "ricochet_validation_failures_total", &[&kind])
}

#[tokio::test]
async fn core_nats_json_schema_passes_valid_requests_unchanged_and_answers_invalid_ones_400() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(&dir, "order.json", ORDER_JSON_SCHEMA);
    let upstream = Upstream::echo().await;
    let subject = unique("val.json.");
    let admin = free_port();
    let validate = format!(
        "[routes.validate]\nformat = \"json_schema\"\nschema = \"{}\"\ncontent_types = [\"application/json\"]\nmax_headers = 8",
        schema.display()
    );
    let routes = core_route("orders", &subject, &validate);
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    // Valid: the service gets the very bytes.
    let valid = br#"{"id": "o-1",  "qty": 3}"#.to_vec();
    let reply = request(&client, &subject, json_headers(), valid.clone()).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(reply.payload.as_ref(), valid.as_slice());
    assert_eq!(upstream.seen()[0].body.as_ref(), valid.as_slice());

    // Invalid: 400, the violations listed, the service never called.
    let reply = request(
        &client,
        &subject,
        json_headers(),
        br#"{"id": 7, "qty": 0}"#.to_vec(),
    )
    .await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    assert_eq!(
        header(&reply, "Ricochet-Error").as_deref(),
        Some("validation")
    );
    let answer = body(&reply);
    assert_eq!(answer["code"], 400);
    assert_eq!(
        answer["error"],
        "the message does not match the schema (2 violations)"
    );
    let violations = answer["violations"].as_array().unwrap();
    let at = |path: &str| {
        violations
            .iter()
            .find(|v| v["instance_path"] == path)
            .cloned()
    };
    let id = at("/id").expect("a violation at /id");
    assert_eq!(id["schema_path"], "/properties/id/type");
    assert!(id["message"].as_str().unwrap().contains("string"), "{id}");
    assert_eq!(
        at("/qty").unwrap()["schema_path"],
        "/properties/qty/minimum"
    );

    // Not JSON, the wrong content type, too many headers: refused the same way.
    let reply = request(&client, &subject, json_headers(), b"{\"id\":".to_vec()).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    let mut xml = HeaderMap::new();
    xml.insert("Content-Type", "application/xml");
    let reply = request(&client, &subject, xml, valid.clone()).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    assert!(body(&reply)["error"]
        .as_str()
        .unwrap()
        .contains("application/xml"));
    let mut many = json_headers();
    for n in 0..10 {
        many.insert(format!("x-h{n}").as_str(), "v");
    }
    let reply = request(&client, &subject, many, valid.clone()).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );

    assert_eq!(
        upstream.calls(),
        1,
        "only the valid request reached the service"
    );
    let metrics = ricochet.metrics().await;
    assert_eq!(validation_failures(&metrics, "schema"), 1.0);
    assert_eq!(validation_failures(&metrics, "decode"), 1.0);
    assert_eq!(validation_failures(&metrics, "content_type"), 1.0);
    assert_eq!(validation_failures(&metrics, "headers"), 1.0);
}

#[tokio::test]
async fn core_nats_avro_is_decoded_to_json_and_unknown_or_unreachable_schemas_are_refused() {
    let orders = Orders::start("core").await;
    let upstream = Upstream::echo().await;
    let subject = unique("val.avro.");
    let admin = free_port();
    let extra = format!(
        "{}\n{}",
        orders.registry.config(),
        core_route(
            "avro",
            &subject,
            &format!(
                "[routes.validate]\nformat = \"avro\"\nsubject = \"{}\"\ndecode = \"json\"",
                orders.subject
            ),
        )
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &extra), admin).await;
    let client = nats().await;

    // Valid, written by fastavro: the service gets the record as JSON.
    let reply = request(
        &client,
        &subject,
        HeaderMap::new(),
        orders.message(orders.id, ORDER_RECORD),
    )
    .await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["content-type"], "application/json");
    let record: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(record, serde_json::from_str::<Value>(ORDER_RECORD).unwrap());

    // An id the registry does not know, and one of another subject: 400, permanent.
    let reply = request(
        &client,
        &subject,
        HeaderMap::new(),
        orders.message(9999, ORDER_RECORD),
    )
    .await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    assert!(
        body(&reply)["error"].as_str().unwrap().contains("9999"),
        "{}",
        body(&reply)
    );
    // Asked once: the same bogus id again is answered without the registry.
    let asked = orders.registry.answered();
    let again = orders.message(9999, ORDER_RECORD);
    let again = request(&client, &subject, HeaderMap::new(), again).await;
    let code = header(&again, "Nats-Service-Error-Code");
    assert_eq!(code.as_deref(), Some("400"));
    assert_eq!(orders.registry.answered(), asked);
    let other = orders
        .registry
        .register(&unique("other-"), ADDRESS_AVRO, &[]);
    let address = fastavro::encode(ADDRESS_AVRO, &[], other, r#"{"city": "Bergen"}"#);
    let reply = request(&client, &subject, HeaderMap::new(), address).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    assert!(body(&reply)["error"]
        .as_str()
        .unwrap()
        .contains("not a version of subject"));

    // Bytes that are not the record: 400 as well.
    let mut broken = orders.message(orders.id, ORDER_RECORD);
    broken.truncate(9);
    let reply = request(&client, &subject, HeaderMap::new(), broken).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );

    // The registry down with a schema not yet cached: 503, nothing let through; back: 200.
    let fresh = orders.new_version();
    orders.registry.set_down(true);
    let message = orders.message(fresh, ORDER_RECORD);
    let reply = request(&client, &subject, HeaderMap::new(), message.clone()).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("503")
    );
    assert_eq!(
        header(&reply, "Ricochet-Error").as_deref(),
        Some("registry_unavailable")
    );
    // The cached schema still serves while the registry is down.
    let cached = request(
        &client,
        &subject,
        HeaderMap::new(),
        orders.message(orders.id, ORDER_RECORD),
    )
    .await;
    assert_eq!(header(&cached, "Ricochet-Status").as_deref(), Some("200"));
    orders.registry.set_down(false);
    let reply = request(&client, &subject, HeaderMap::new(), message).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));

    // A registry that refuses ricochet (401) is not the message's fault either.
    let refused = orders.new_version();
    orders.registry.fail_with(Some(401));
    let message = orders.message(refused, ORDER_RECORD);
    let reply = request(&client, &subject, HeaderMap::new(), message.clone()).await;
    let code = header(&reply, "Nats-Service-Error-Code");
    assert_eq!(code.as_deref(), Some("503"));
    orders.registry.fail_with(None);
    let reply = request(&client, &subject, HeaderMap::new(), message).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));

    assert_eq!(
        upstream.calls(),
        4,
        "only the valid requests reached the service"
    );
    let metrics = ricochet.metrics().await;
    assert_eq!(validation_failures(&metrics, "unknown_schema"), 3.0);
    assert_eq!(validation_failures(&metrics, "decode"), 1.0);
    assert_eq!(validation_failures(&metrics, "registry_unavailable"), 2.0);
}

#[tokio::test]
async fn responses_that_do_not_match_become_502_and_json_answers_can_be_encoded_as_avro() {
    let dir = tempfile::tempdir().unwrap();
    let receipt_schema = schema_file(
        &dir,
        "receipt.json",
        r#"{"type": "object", "required": ["order", "total"], "properties": {"total": {"type": "integer"}}}"#,
    );
    let registry = SchemaRegistry::start().await;
    let receipts = unique("receipts-");
    registry.register(
        &receipts,
        r#"{"type": "record", "name": "Old", "fields": []}"#,
        &[],
    );
    let receipt_id = registry.register(&receipts, RECEIPT_AVRO, &[]);
    let receipt = r#"{"order": "o-1", "total": 1250}"#;
    let avro_receipt = fastavro::encode(RECEIPT_AVRO, &[], receipt_id, receipt);
    let foreign_id = registry.register(&unique("foreign-"), RECEIPT_AVRO, &[]);
    let foreign_receipt = fastavro::encode(RECEIPT_AVRO, &[], foreign_id, receipt);
    // The service's answer depends on what it is asked.
    let (avro_answer, foreign_answer) = (avro_receipt.clone(), foreign_receipt);
    let upstream = Upstream::start(move |seen| {
        let answer = match seen.body.as_ref() {
            b"good" => Bytes::from_static(receipt.as_bytes()),
            b"avro" => Bytes::from(avro_answer.clone()),
            b"foreign" => Bytes::from(foreign_answer.clone()),
            _ => Bytes::from_static(br#"{"order": "o-1", "total": "a lot"}"#),
        };
        async move {
            http::Response::builder()
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(answer))
                .unwrap()
        }
    })
    .await;
    let checked = unique("val.resp.");
    let encoded = unique("val.enc.");
    let avro = unique("val.avro.");
    let routes = format!(
        "{}\n{}\n{}\n{}",
        registry.config(),
        core_route(
            "checked",
            &checked,
            &format!(
                "[routes.validate.response]\nformat = \"json_schema\"\nschema = \"{}\"",
                receipt_schema.display()
            ),
        ),
        core_route(
            "encoded",
            &encoded,
            &format!("[routes.validate.response]\nencode = \"avro\"\nsubject = \"{receipts}\""),
        ),
        core_route(
            "avro",
            &avro,
            &format!("[routes.validate.response]\nformat = \"avro\"\nsubject = \"{receipts}\""),
        ),
    );
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let good = request(&client, &checked, HeaderMap::new(), b"good".to_vec()).await;
    assert_eq!(header(&good, "Ricochet-Status").as_deref(), Some("200"));
    let bad = request(&client, &checked, HeaderMap::new(), b"bad".to_vec()).await;
    assert_eq!(
        header(&bad, "Nats-Service-Error-Code").as_deref(),
        Some("502")
    );
    assert_eq!(
        header(&bad, "Ricochet-Error").as_deref(),
        Some("invalid_response")
    );
    let attempts = bad.headers.as_ref().unwrap().get_all("Ricochet-Attempts");
    let attempts: Vec<_> = attempts.map(|v| v.as_str().to_string()).collect();
    assert_eq!(attempts, ["1"], "the service was called once");
    let answer = body(&bad);
    assert_eq!(answer["violations"][0]["instance_path"], "/total");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("the service's response"));

    // Encoded with the subject's latest version; fastavro reads it back.
    let reply = request(&client, &encoded, HeaderMap::new(), b"good".to_vec()).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(
        header(&reply, "content-type").as_deref(),
        Some("avro/binary")
    );
    let (id, record) = fastavro::decode(RECEIPT_AVRO, &[], &reply.payload);
    assert_eq!(id, receipt_id);
    assert_eq!(record, json!({"order": "o-1", "total": 1250}));
    // An Avro answer must carry a version of the subject, and be Avro at all.
    let reply = request(&client, &avro, HeaderMap::new(), b"avro".to_vec()).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(reply.payload.as_ref(), avro_receipt.as_slice(), "unchanged");
    for (ask, why) in [
        ("foreign", "not a version of subject"),
        ("bad", "wire format"),
    ] {
        let reply = request(&client, &avro, HeaderMap::new(), ask.as_bytes().to_vec()).await;
        let code = header(&reply, "Nats-Service-Error-Code");
        assert_eq!(code.as_deref(), Some("502"), "{ask}");
        let error = body(&reply)["error"].as_str().unwrap().to_string();
        assert!(error.contains(why), "{ask}: {error}");
    }
    // JSON that does not fit the schema cannot be encoded: 502 too.
    let reply = request(&client, &encoded, HeaderMap::new(), b"bad".to_vec()).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("502")
    );

    let metrics = ricochet.metrics().await;
    assert_eq!(validation_failures(&metrics, "schema"), 2.0);
    assert_eq!(validation_failures(&metrics, "unknown_schema"), 1.0);
    assert_eq!(validation_failures(&metrics, "decode"), 1.0);
    let kind = "kind=\"invalid_response\"";
    assert_eq!(metric(&metrics, "ricochet_errors_total", &[kind]), 4.0);
}

/// Publishes request `id` on `stream`, its reply to `{prefix}.replies`.
async fn publish(stream: &Stream, id: &str, payload: Vec<u8>) {
    let replies = format!("{}.replies", stream.prefix);
    stream
        .publish(id, request_headers(&replies, id), payload)
        .await;
}

/// The route on `stream` (replies to `{prefix}.replies`, dead letters to `{prefix}.dlq`);
/// `extra` adds route sections.
fn route(stream: &Stream, extra: &str) -> String {
    let consumer = "durable = \"ricochet-validation\"\nack_wait = \"5s\"\nmax_deliver = 1000\n\
                    redelivery_backoff = [\"100ms\"]";
    stream.route(extra, consumer)
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .unwrap()
}

#[tokio::test]
async fn jetstream_dead_letters_an_invalid_request_at_once_with_its_violations() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(&dir, "order.json", ORDER_JSON_SCHEMA);
    let stream = Stream::create("valjs").await;
    let (_, mut replies) = stream.subscribe("replies").await;
    let (_, mut dlq) = stream.subscribe("dlq").await;
    let upstream = Upstream::echo().await;
    let validate = format!(
        "[routes.validate]\nformat = \"json_schema\"\nschema = \"{}\"",
        schema.display()
    );
    let admin = free_port();
    let ricochet = Ricochet::start(
        &config(&upstream.base_url(), admin, &route(&stream, &validate)),
        admin,
    )
    .await;

    publish(&stream, "bad", br#"{"id": "o-1", "qty": -1}"#.to_vec()).await;
    let letter = next(&mut dlq).await;
    assert_eq!(letter.payload.as_ref(), br#"{"id": "o-1", "qty": -1}"#);
    assert_eq!(
        header(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
        Some("validation")
    );
    assert_eq!(
        header(&letter, "Ricochet-Last-Status").as_deref(),
        Some("400")
    );
    assert_eq!(
        header(&letter, "Ricochet-Delivery-Count").as_deref(),
        Some("1")
    );
    let detail = header(&letter, "Ricochet-Dead-Letter-Detail").unwrap();
    assert!(detail.starts_with("/qty: "), "{detail}");
    let reply = next(&mut replies).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("bad"));
    assert_eq!(body(&reply)["violations"][0]["instance_path"], "/qty");

    // A valid one after it passes unchanged; the invalid one never came again.
    publish(&stream, "good", br#"{"id": "o-2", "qty": 1}"#.to_vec()).await;
    let reply = next(&mut replies).await;
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("good"));
    assert_eq!(reply.payload.as_ref(), br#"{"id": "o-2", "qty": 1}"#);
    assert_eq!(upstream.calls(), 1);
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"term\""]),
        1.0
    );
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"nak\""]),
        0.0
    );
    assert_eq!(validation_failures(&metrics, "schema"), 1.0);
    stream.delete().await;
}

#[tokio::test]
async fn jetstream_waits_out_a_registry_outage_and_loses_no_message() {
    let orders = Orders::start("js").await;
    let stream = Stream::create("valjsreg").await;
    let (_, mut replies) = stream.subscribe("replies").await;
    let (_, mut dlq) = stream.subscribe("dlq").await;
    let upstream = Upstream::echo().await;
    let validate = format!(
        "[routes.validate]\nformat = \"avro\"\nsubject = \"{}\"",
        orders.subject
    );
    let admin = free_port();
    let routes = format!(
        "{}\n{}",
        orders.registry.config(),
        route(&stream, &validate)
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;

    orders.registry.set_down(true);
    let messages: Vec<Vec<u8>> = (1..=3)
        .map(|n| orders.message(orders.id, &ORDER_RECORD.replace("o-1", &format!("o-{n}"))))
        .collect();
    for (n, message) in messages.iter().enumerate() {
        publish(&stream, &format!("m{n}"), message.clone()).await;
    }
    eventually(WAIT, "redeliveries while the registry is down", || async {
        let metrics = ricochet.metrics().await;
        let naks = metric(&metrics, "ricochet_settlements_total", &["action=\"nak\""]);
        holds(naks >= 6.0, format!("{naks} naks"))
    })
    .await;
    assert_eq!(
        upstream.calls(),
        0,
        "nothing unvalidated reached the service"
    );

    orders.registry.set_down(false);
    let mut answered = Vec::new();
    for _ in 0..3 {
        let reply = next(&mut replies).await;
        assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
        answered.push(reply.payload.to_vec());
    }
    answered.sort();
    let mut expected = messages.clone();
    expected.sort();
    assert_eq!(
        answered, expected,
        "every message, unchanged (Avro, not decoded)"
    );

    // An unknown id is permanent: dead-lettered at once with reason validation.
    publish(&stream, "unknown", orders.message(4242, ORDER_RECORD)).await;
    let letter = next(&mut dlq).await;
    assert_eq!(
        header(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
        Some("validation")
    );
    assert!(header(&letter, "Ricochet-Dead-Letter-Detail")
        .unwrap()
        .contains("4242"));
    assert_eq!(upstream.calls(), 3);
    stream.delete().await;
}

mod kafka_source {
    use super::*;
    use common::kafka::{self, produce};

    #[tokio::test]
    async fn kafka_validates_avro_encodes_replies_dead_letters_and_rides_out_a_registry_outage() {
        let orders = Orders::start("kafka").await;
        let receipts = unique("receipts-");
        let receipt_id = orders.registry.register(&receipts, RECEIPT_AVRO, &[]);
        let requests = kafka::topic("kval", 1).await;
        let replies = kafka::topic("kvalrep", 1).await;
        let dead = kafka::topic("kvaldead", 1).await;
        let upstream = Upstream::start(|seen| async move {
            let order: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
            let answer =
                json!({"order": order["id"], "total": order["qty"].as_i64().unwrap_or(0) * 100});
            http::Response::builder()
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(answer.to_string())))
                .unwrap()
        })
        .await;
        let extra = format!(
            "[routes.validate]\nformat = \"avro\"\nsubject = \"{}\"\ndecode = \"json\"\n[routes.validate.response]\nencode = \"avro\"\nsubject = \"{receipts}\"\nversion = 1",
            orders.subject
        );
        let route = kafka::route(
            "kval",
            &requests,
            &extra,
            &format!("reply_topic = \"{replies}\"\ndead_letter_topic = \"{dead}\""),
        );
        let admin = free_port();
        let routes = format!("{}\n{route}", orders.registry.config());
        let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
        eventually(WAIT, "partitions assigned", || async {
            let metrics = ricochet.metrics().await;
            let assigned = metric(&metrics, "ricochet_kafka_assigned_partitions", &[]);
            holds(assigned >= 1.0, assigned)
        })
        .await;
        let producer = kafka::producer();
        let reply_reader = kafka::consumer(&replies);

        // Valid: decoded for the service, its JSON answer encoded back as Avro.
        let valid = orders.message(orders.id, ORDER_RECORD);
        produce(
            &producer,
            &requests,
            Some("k1"),
            &[("correlation-id", "c1")],
            &valid,
        )
        .await;
        let reply = kafka::next(&reply_reader, WAIT).await;
        use rdkafka::Message;
        assert_eq!(
            kafka::header(&reply, "Ricochet-Status").as_deref(),
            Some("200")
        );
        let (id, record) = fastavro::decode(RECEIPT_AVRO, &[], reply.payload().unwrap());
        assert_eq!(id, receipt_id);
        assert_eq!(record, json!({"order": "o-1", "total": 200}));

        // Unknown schema: a 400 reply, a dead letter saying validation, no call.
        produce(
            &producer,
            &requests,
            Some("k2"),
            &[("correlation-id", "c2")],
            &orders.message(777, ORDER_RECORD),
        )
        .await;
        let reply = kafka::next(&reply_reader, WAIT).await;
        assert_eq!(
            kafka::header(&reply, "Ricochet-Status").as_deref(),
            Some("400")
        );
        assert_eq!(
            kafka::header(&reply, "Nats-Service-Error-Code").as_deref(),
            Some("400")
        );
        assert_eq!(
            kafka::header(&reply, "correlation-id").as_deref(),
            Some("c2")
        );
        let answer: Value = serde_json::from_slice(reply.payload().unwrap()).unwrap();
        assert!(
            answer["violations"][0]["message"]
                .as_str()
                .unwrap()
                .contains("777"),
            "{answer}"
        );
        let letter = kafka::next(&kafka::consumer(&dead), WAIT).await;
        assert_eq!(
            kafka::header(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
            Some("validation")
        );
        assert_eq!(kafka::key(&letter).as_deref(), Some("k2"));
        assert_eq!(upstream.calls(), 1);

        // Registry down, a schema not cached yet: the record waits, then goes through.
        let fresh = orders.new_version();
        orders.registry.set_down(true);
        let later = orders.message(fresh, &ORDER_RECORD.replace("\"qty\": 2", "\"qty\": 5"));
        produce(
            &producer,
            &requests,
            Some("k3"),
            &[("correlation-id", "c3")],
            &later,
        )
        .await;
        eventually(WAIT, "local retries while the registry is down", || async {
            let metrics = ricochet.metrics().await;
            let failures = validation_failures(&metrics, "registry_unavailable");
            holds(failures >= 2.0, failures)
        })
        .await;
        assert_eq!(
            upstream.calls(),
            1,
            "nothing unvalidated reached the service"
        );
        orders.registry.set_down(false);
        let reply = kafka::next(&reply_reader, WAIT).await;
        assert_eq!(
            kafka::header(&reply, "correlation-id").as_deref(),
            Some("c3")
        );
        assert_eq!(
            kafka::header(&reply, "Ricochet-Status").as_deref(),
            Some("200")
        );
        let (_, record) = fastavro::decode(RECEIPT_AVRO, &[], reply.payload().unwrap());
        assert_eq!(record, json!({"order": "o-1", "total": 500}));
        assert_eq!(upstream.calls(), 2);
    }
}

/// Replies encoded as Avro while the registry is down: the schemas cached serve (the latest
/// one past `latest_refresh` too, and a pinned version), so the service's answer goes out;
/// a schema never fetched is a 503 before the service is called, never after (a retry of a
/// POST the service already ran would run it twice).
#[tokio::test]
async fn encoding_replies_while_the_registry_is_down_uses_the_cache_or_refuses_before_the_call() {
    let registry = SchemaRegistry::start().await;
    let receipts = unique("receipts-down-");
    let receipt_id = registry.register(&receipts, RECEIPT_AVRO, &[]);
    let cold = unique("receipts-cold-");
    registry.register(&cold, RECEIPT_AVRO, &[]);
    let receipt = r#"{"order": "o-1", "total": 1250}"#;
    let upstream = Upstream::start(move |_| async move {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from_static(
                receipt.as_bytes(),
            )))
            .unwrap()
    })
    .await;
    let (latest, pinned, never) = (
        unique("val.enc.latest."),
        unique("val.enc.pinned."),
        unique("val.enc.cold."),
    );
    let encode = |subject: &str, version: &str| {
        format!("[routes.validate.response]\nencode = \"avro\"\nsubject = \"{subject}\"\n{version}")
    };
    let routes = format!(
        "{}latest_refresh = \"200ms\"\n\n{}\n{}\n{}",
        registry.config(),
        core_route("latest", &latest, &encode(&receipts, "")),
        core_route("pinned", &pinned, &encode(&receipts, "version = 1")),
        core_route("cold", &never, &encode(&cold, "")),
    );
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;
    let encoded = |reply: &async_nats::Message| {
        assert_eq!(header(reply, "Ricochet-Status").as_deref(), Some("200"));
        assert_eq!(
            header(reply, "content-type").as_deref(),
            Some("avro/binary")
        );
        let (id, record) = fastavro::decode(RECEIPT_AVRO, &[], &reply.payload);
        assert_eq!(id, receipt_id);
        assert_eq!(record, json!({"order": "o-1", "total": 1250}));
    };
    for subject in [&latest, &pinned] {
        encoded(&request(&client, subject, HeaderMap::new(), b"1".to_vec()).await);
    }
    assert_eq!(upstream.calls(), 2);

    // Down, and the latest schema older than latest_refresh: each call still answered
    // once, encoded with the schemas cached.
    registry.set_down(true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (n, subject) in [&latest, &pinned, &latest].into_iter().enumerate() {
        let reply = request(&client, subject, HeaderMap::new(), b"2".to_vec()).await;
        encoded(&reply);
        assert_eq!(upstream.calls(), 3 + n, "{subject}: one call, answered");
    }
    let logs = ricochet.logs();
    assert!(
        logs.contains("the latest schema cached serves on"),
        "{logs}"
    );

    // A schema never fetched: refused before the call, retryable; the service not called.
    let reply = request(&client, &never, HeaderMap::new(), b"3".to_vec()).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("503")
    );
    assert!(
        body(&reply)["error"]
            .as_str()
            .unwrap()
            .contains("try again later"),
        "{:?}",
        body(&reply)
    );
    assert_eq!(upstream.calls(), 5, "the service was not called");
    let metrics = ricochet.metrics().await;
    assert_eq!(validation_failures(&metrics, "registry_unavailable"), 1.0);

    // Back: the cold route fetches its schema and answers.
    registry.set_down(false);
    let reply = request(&client, &never, HeaderMap::new(), b"4".to_vec()).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(upstream.calls(), 6);
}
