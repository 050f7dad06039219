//! Response headers that are not visible ASCII (UTF-8 `café`, raw obs-text bytes) on their
//! way into AMQP and NATS replies, end to end against the local RabbitMQ and nats-server
//! with random names. AMQP carries them unchanged as long strings; NATS carries UTF-8 text
//! and names what it left out in `Ricochet-Dropped-Headers`. (Kafka: tests/kafka_hostile.rs.)
//! The rules are stated in docs/message-contract.md and docs/security.md.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::amqp::{self, client};
use common::*;
use serde_json::json;

/// One RPC with Python's pika (an independent client): publishes to `queue` with an
/// exclusive reply queue and prints the reply's headers with their values as hex bytes.
const PIKA_RPC: &str = r#"
import json, sys, pika
url, queue = sys.argv[1], sys.argv[2]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
reply_to = ch.queue_declare(queue="", exclusive=True).method.queue
ch.basic_publish("", queue, b"hello", pika.BasicProperties(reply_to=reply_to, correlation_id="c-1"))
for method, props, body in ch.consume(reply_to, auto_ack=True, inactivity_timeout=30):
    if method is None:
        sys.exit("no reply within 30 s")
    out = {}
    for name, value in (props.headers or {}).items():
        # pika hands a long string over as str when it is UTF-8, else as bytes.
        out[name] = (value.encode("utf-8") if isinstance(value, str) else bytes(value)).hex()
    print(json.dumps({"correlation_id": props.correlation_id, "body": body.decode(), "headers": out}))
    break
conn.close()
"#;

#[tokio::test]
async fn amqp_replies_carry_response_header_bytes_unchanged() {
    let queue = unique("ricochet.test.hbytes.");
    let upstream = Upstream::non_ascii_echo().await;
    let admin = free_port();
    let routes = amqp::route("hbytes", &queue, &queue, "", "");
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args(["-c", PIKA_RPC, &amqp::url(), &queue])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the RPC ends")
    .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["correlation_id"], "c-1");
    assert_eq!(reply["body"], "hello");
    assert_eq!(reply["headers"]["x-name"], hex(b"caf\xc3\xa9"), "{reply}");
    assert_eq!(reply["headers"]["x-raw"], hex(b"\xff\xfe"), "{reply}");
    assert_eq!(reply["headers"]["Ricochet-Status"], hex(b"200"));
    client(json!({"op": "delete", "queues": [queue, format!("{queue}.ricochet-retry.100ms")]}))
        .await;
}

#[tokio::test]
async fn nats_replies_carry_utf8_header_values_and_name_the_ones_they_cannot() {
    let upstream = Upstream::non_ascii_echo().await;
    let subject = unique("hbytes");
    let admin = free_port();
    let routes = format!(
        "[[routes]]\nname = \"hbytes\"\nsubject = \"{subject}\"\nmethod = \"POST\"\npath = \"/work\"\n"
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, Bytes::from_static(b"hello")),
    )
    .await
    .expect("reply within 10 s")
    .expect("reply");
    assert_eq!(reply.payload.as_ref(), b"hello");
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(header(&reply, "x-name").as_deref(), Some("café"));
    assert_eq!(header(&reply, "x-raw"), None);
    assert_eq!(
        header(&reply, "Ricochet-Dropped-Headers").as_deref(),
        Some("x-raw")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
