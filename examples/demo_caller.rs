//! The demo's caller: an event-native client that knows nothing of HTTP. It sends NATS
//! requests, a Kafka request record and an AMQP RPC request through ricochet to the orders
//! service and prints each reply. Exits non-zero if a reply is missing or not what the demo
//! expects.
//!
//! Environment: `NATS_URL` (default `nats://127.0.0.1:4222`), `KAFKA_BROKERS` (default
//! `127.0.0.1:9092`), `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! `READY_URL` (optional: ricochet's `/readyz` to wait for first), `DEMO_STARTED_AT`
//! (optional: when `scripts/demo.sh` started, Unix seconds; the first reply then says how long
//! it took to come).
//!
//! Arguments: the brokers to call, among `nats`, `kafka` and `amqp` (default: all three).
//! `scripts/demo.sh` calls NATS and AMQP first and Kafka once its broker is ready.

use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST_TOPIC: &str = "orders.requests";
const REPLY_TOPIC: &str = "orders.replies";
const AMQP_QUEUE: &str = "orders.amqp.create";
const BROKERS: [&str; 3] = ["nats", "kafka", "amqp"];

#[tokio::main]
async fn main() {
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) = wanted.iter().find(|b| !BROKERS.contains(&b.as_str())) {
        eprintln!("unknown broker {unknown:?}: name some of {BROKERS:?}, or none for all");
        std::process::exit(2);
    }
    if wanted.is_empty() {
        wanted = BROKERS.iter().map(|b| b.to_string()).collect();
    }
    let calls = |broker: &str| wanted.iter().any(|b| b == broker);
    if let Ok(url) = std::env::var("READY_URL") {
        wait_ready(&url).await;
    }
    let mut failures = 0;
    if calls("nats") {
        failures += nats_demo(&nats_url).await;
    }
    if calls("kafka") {
        failures += kafka_demo(&brokers).await;
    }
    if calls("amqp") {
        failures += amqp_demo(&amqp_url).await;
    }
    let which = if wanted.len() == BROKERS.len() {
        "every".to_string()
    } else {
        format!("every {}", wanted.join(" and "))
    };
    if failures == 0 {
        println!("demo: {which} reply as expected");
    } else {
        println!("demo: {failures} replies not as expected");
        std::process::exit(1);
    }
}

/// After the first reply printed: how long it took since `scripts/demo.sh` started
/// (`DEMO_STARTED_AT`), once per run.
fn first_reply() {
    static FIRST: Once = Once::new();
    FIRST.call_once(|| {
        let Some(started) = std::env::var("DEMO_STARTED_AT")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(started);
        let seconds = (now - started).max(0.0);
        println!(
            "demo: first reply {seconds:.0} s ({:.1} min) after scripts/demo.sh started",
            seconds / 60.0
        );
    });
}

async fn nats_demo(url: &str) -> usize {
    let client = match async_nats::connect(url).await {
        Ok(client) => client,
        Err(e) => {
            println!("FAIL cannot connect to NATS at {url}: {e}");
            return 1;
        }
    };
    let mut failures = 0;
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let created = request(
        &client,
        "orders.create",
        headers,
        r#"{"item":"book","qty":2}"#,
        201,
    )
    .await;
    failures += usize::from(created.is_none());
    let id = created
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|order| order["id"].as_u64())
        .unwrap_or(1);
    let steps = [
        (format!("orders.{id}.get"), 200),
        ("orders.list".to_string(), 200),
        ("orders.999.get".to_string(), 404),
        // 503 twice, then 200: ricochet retries (see Ricochet-Attempts).
        ("orders.flaky".to_string(), 200),
        // The service takes 3 s; the route allows 1 s.
        ("orders.slow".to_string(), 504),
    ];
    for (subject, expected) in steps {
        failures += usize::from(
            request(&client, &subject, HeaderMap::new(), "", expected)
                .await
                .is_none(),
        );
    }
    failures
}

/// Sends one request; prints the reply; returns its body when the status is `expected`.
async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &'static str,
    expected: u16,
) -> Option<String> {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(body.into())
        .timeout(Some(Duration::from_secs(10)));
    match client.send_request(subject.to_string(), request).await {
        Ok(reply) => {
            let header = |name: &str| {
                reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let status = header("Ricochet-Status");
            let text = String::from_utf8_lossy(&reply.payload).into_owned();
            let ok = status == expected.to_string();
            println!(
                "{} nats  {subject:<16} -> {status} (attempts {}) {text}",
                if ok { "OK  " } else { "FAIL" },
                header("Ricochet-Attempts")
            );
            first_reply();
            ok.then_some(text)
        }
        Err(e) => {
            println!("FAIL nats  {subject:<16} -> no reply: {e}");
            None
        }
    }
}

async fn kafka_demo(brokers: &str) -> usize {
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
    {
        Ok(admin) => admin,
        Err(e) => {
            println!("FAIL cannot reach Kafka at {brokers}: {e}");
            return 1;
        }
    };
    let topics = [
        NewTopic::new(REQUEST_TOPIC, 1, TopicReplication::Fixed(1)),
        NewTopic::new(REPLY_TOPIC, 1, TopicReplication::Fixed(1)),
    ];
    // "Already exists" is fine: ricochet or an earlier run created them.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await;

    let correlation = format!("demo-{}", nuid::next());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("demo-caller-{correlation}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    consumer.subscribe(&[REPLY_TOPIC]).expect("subscribe");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "reply-to",
            value: Some(REPLY_TOPIC),
        })
        .insert(Header {
            key: "correlation-id",
            value: Some(&correlation),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    let sent = producer
        .send(
            FutureRecord::to(REQUEST_TOPIC)
                .key("kafka-order")
                .payload(r#"{"item":"pen","qty":1}"#)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await;
    if let Err((e, _)) = sent {
        println!("FAIL kafka {REQUEST_TOPIC} -> not produced: {e}");
        return 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let header = |name: &str| {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key.eq_ignore_ascii_case(name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if header("correlation-id").as_deref() != Some(correlation.as_str()) {
            continue;
        }
        let status = header("Ricochet-Status").unwrap_or_default();
        let body = message
            .payload()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let ok = status == "201";
        println!("{} kafka {REQUEST_TOPIC:<16} -> {status} (reply on {REPLY_TOPIC}, key kafka-order) {body}", if ok { "OK  " } else { "FAIL" });
        first_reply();
        return usize::from(!ok);
    }
    println!("FAIL kafka {REQUEST_TOPIC} -> no reply on {REPLY_TOPIC} within 60 s");
    1
}

/// One RPC request over RabbitMQ: published to ricochet's queue with `reply_to` set to the
/// direct reply-to pseudo-queue and a correlation id; the reply comes back there.
async fn amqp_demo(url: &str) -> usize {
    match amqp_call(url).await {
        Ok((status, correlated, body)) => {
            let ok = status == "201" && correlated;
            println!(
                "{} amqp  {AMQP_QUEUE:<16} -> {status} (direct reply-to, correlation id {}) {body}",
                if ok { "OK  " } else { "FAIL" },
                if correlated { "echoed" } else { "missing" }
            );
            first_reply();
            usize::from(!ok)
        }
        Err(e) => {
            println!("FAIL amqp  {AMQP_QUEUE} -> {e}");
            1
        }
    }
}

async fn amqp_call(url: &str) -> Result<(String, bool, String), String> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let reply_to = "amq.rabbitmq.reply-to";
    let mut replies = channel
        .basic_consume(
            reply_to.into(),
            "demo-caller".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let correlation = format!("demo-{}", nuid::next());
    let properties = BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id(correlation.as_str().into())
        .with_content_type("application/json".into());
    channel
        .basic_publish(
            "".into(),
            AMQP_QUEUE.into(),
            BasicPublishOptions::default(),
            br#"{"item":"lamp","qty":1}"#,
            properties,
        )
        .await
        .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .map_err(|_| "no reply within 30 s".to_string())?
        .ok_or("the reply consumer ended")?
        .map_err(|e| e.to_string())?;
    let status = (reply.properties.headers().as_ref())
        .and_then(|h| h.inner().get("Ricochet-Status").cloned())
        .and_then(|v| v.as_long_string().map(|s| s.to_string()))
        .unwrap_or_default();
    let correlated = reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str())
        == Some(correlation.as_str());
    let _ = connection.close(200, "OK".into()).await;
    Ok((
        status,
        correlated,
        String::from_utf8_lossy(&reply.data).into_owned(),
    ))
}

/// Polls an HTTP URL (`http://host:port/path`) until it answers 200, for up to 2 minutes.
async fn wait_ready(url: &str) {
    let rest = url.trim_start_matches("http://");
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(authority).await {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_string(&mut answer).await.is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("FAIL ricochet not ready at {url} within 2 minutes");
    std::process::exit(1);
}
