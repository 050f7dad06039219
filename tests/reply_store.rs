//! The reply store end to end: JetStream routes with `[routes.reply_store]` against the
//! real JetStream key-value, each test with its own stream, bucket and service that counts
//! its calls per request id. What a user relies on: a request whose reply is stored never
//! reaches the service again (a redelivery, a replay of the whole stream, a second delivery
//! while the first is still calling), and its reply is the one first published, byte for
//! byte.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use common::jetstream::{request_headers, Stream};
use common::*;
use futures::StreamExt;
use http::Response;
use http_body_util::Full;

/// A service that counts its calls per request path and answers each with its call
/// number, so that a second call would show in the reply.
struct Counting {
    upstream: Upstream,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Counting {
    async fn start(delay: Duration, gate: Option<Gate>) -> Self {
        let calls = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let total = Arc::new(AtomicUsize::new(0));
        let record = calls.clone();
        let upstream = Upstream::start(move |seen| {
            let path = seen.path_and_query.clone();
            let n = {
                let mut calls = record.lock().unwrap();
                let n = calls.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            let call = total.fetch_add(1, Ordering::SeqCst) + 1;
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.passed().await;
                }
                tokio::time::sleep(delay).await;
                Response::builder()
                    .status(201)
                    .header("x-call", call.to_string())
                    .header("set-cookie", "a=1")
                    .header("x-name", &b"caf\xc3\xa9"[..])
                    .header("set-cookie", "b=2")
                    .body(Full::new(Bytes::from(format!(
                        "{path} call {n} #{call}\0\u{1}"
                    ))))
                    .unwrap()
            }
        })
        .await;
        Self { upstream, calls }
    }

    /// Calls per path.
    fn calls(&self) -> HashMap<String, usize> {
        self.calls.lock().unwrap().clone()
    }

    fn total(&self) -> usize {
        self.calls().values().sum()
    }
}

/// The JetStream route of `stream` with a reply store in `bucket`; `extra` adds route keys
/// and `store` store keys.
fn route(stream: &Stream, bucket: &str, store: &str, consumer: &str) -> String {
    let backoff = match consumer.contains("redelivery_backoff") {
        true => "",
        false => "redelivery_backoff = [\"200ms\"]",
    };
    let consumer =
        format!("durable = \"ricochet-store\"\nack_wait = \"5s\"\n{backoff}\n{consumer}");
    let route = stream.route("", &consumer);
    format!("{route}\n[routes.reply_store]\nbucket = \"{bucket}\"\nttl = \"10m\"\n{store}\n")
}

fn bucket() -> String {
    unique("replies_").replace('-', "_")
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("a message within 15 s")
        .expect("subscription open")
}

/// Everything a reply carries: its headers (every value of each name, in order; the
/// client's header map does not keep the order between names, so they are sorted) and its
/// payload.
fn bytes_of(reply: &async_nats::Message) -> (Vec<(String, Vec<String>)>, Bytes) {
    let mut headers: Vec<(String, Vec<String>)> = reply
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .map(|(n, v)| {
                    let values = v.iter().map(|v| v.as_str().to_string()).collect();
                    (n.to_string(), values)
                })
                .collect()
        })
        .unwrap_or_default();
    headers.sort();
    (headers, reply.payload.clone())
}

async fn store_metric(ricochet: &Ricochet, name: &str, label: &str) -> f64 {
    metric(&ricochet.metrics().await, name, &["route=\"js\"", label])
}

async fn delete_bucket(bucket: &str) {
    let _ = jetstream::new(nats().await).delete_key_value(bucket).await;
}

#[tokio::test]
async fn a_redelivered_message_whose_reply_is_stored_never_reaches_the_service_and_gets_the_same_bytes(
) {
    let stream = Stream::create("storeredeliver").await;
    let service = Counting::start(Duration::ZERO, None).await;
    // The replies go to a subject a full stream captures (discard new): the first reply's
    // confirmation fails, so the message is redelivered; a core subscriber still sees it.
    let replies = format!("{}.replies", stream.prefix);
    let reply_stream = format!("{}_REPLIES", stream.name);
    let js = jetstream::new(nats().await);
    js.create_stream(stream::Config {
        name: reply_stream.clone(),
        subjects: vec![replies.clone()],
        storage: stream::StorageType::Memory,
        max_messages: 1,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish(replies.clone(), "fills the reply stream".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let client = nats().await;
    let mut sub = client.subscribe(replies.clone()).await.unwrap();
    client.flush().await.unwrap();
    let bucket = bucket();
    let admin = free_port();
    // Time to make room in the reply stream before the redelivery.
    let backoff = "redelivery_backoff = [\"2s\"]";
    let toml = route(&stream, &bucket, "on_unavailable = \"redeliver\"", backoff);
    let ricochet =
        Ricochet::start(&config(&service.upstream.base_url(), admin, &toml), admin).await;

    stream
        .publish("7", request_headers(&replies, "c-7"), b"order 7")
        .await;
    let first = next(&mut sub).await;
    assert_eq!(header(&first, "Ricochet-Status").as_deref(), Some("201"));
    // The first reply was not confirmed: ricochet redelivers. Make room for the next one.
    eventually(
        Duration::from_secs(10),
        "the first reply refused",
        || async {
            let failed = metric(
                &ricochet.metrics().await,
                "ricochet_messages_handled_total",
                &["outcome=\"publish_failed\""],
            );
            holds(failed >= 1.0, failed)
        },
    )
    .await;
    js.get_stream(&reply_stream)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let second = next(&mut sub).await;

    assert_eq!(
        bytes_of(&second),
        bytes_of(&first),
        "the same reply, byte for byte"
    );
    assert_eq!(
        std::str::from_utf8(&first.payload).unwrap(),
        "/orders/7 call 1 #1\0\u{1}"
    );
    assert_eq!(
        service.calls(),
        HashMap::from([("/orders/7".to_string(), 1)])
    );
    eventually(Duration::from_secs(10), "the message acked", || async {
        let info = stream.consumer("ricochet-store").await;
        holds(info.num_ack_pending == 0, info.num_ack_pending)
    })
    .await;
    assert_eq!(
        store_metric(
            &ricochet,
            "ricochet_reply_store_lookups_total",
            "result=\"miss\""
        )
        .await,
        1.0
    );
    assert_eq!(
        store_metric(
            &ricochet,
            "ricochet_reply_store_lookups_total",
            "result=\"hit\""
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &ricochet.metrics().await,
            "ricochet_redeliveries_total",
            &["route=\"js\""]
        ),
        1.0
    );
    drop(ricochet);
    let _ = js.delete_stream(&reply_stream).await;
    delete_bucket(&bucket).await;
    stream.delete().await;
}

#[tokio::test]
async fn a_whole_stream_replay_reaches_the_service_for_no_stored_request() {
    const REQUESTS: usize = 200;
    let stream = Stream::create("storereplay").await;
    let service = Counting::start(Duration::ZERO, None).await;
    let (replies, mut sub) = stream.subscribe("replies").await;
    let bucket = bucket();
    let admin = free_port();
    let toml = route(&stream, &bucket, "on_unavailable = \"redeliver\"", "");
    let toml = config(&service.upstream.base_url(), admin, &toml);
    let ricochet = Ricochet::start(&toml, admin).await;
    for id in 0..REQUESTS {
        let id = id.to_string();
        stream
            .publish(
                &id,
                request_headers(&replies, &format!("c-{id}")),
                format!("order {id}"),
            )
            .await;
    }
    let mut first = HashMap::new();
    for _ in 0..REQUESTS {
        let reply = next(&mut sub).await;
        first.insert(header(&reply, "correlation-id").unwrap(), bytes_of(&reply));
    }
    assert_eq!(first.len(), REQUESTS);
    eventually(Duration::from_secs(10), "every request acked", || async {
        let info = stream.consumer("ricochet-store").await;
        holds(info.num_ack_pending == 0, info.num_ack_pending)
    })
    .await;
    drop(ricochet);

    // What a server that forgot the consumer's state does: deliver the stream from its start.
    stream
        .js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .delete_consumer("ricochet-store")
        .await
        .unwrap();
    let admin = free_port();
    let toml = route(&stream, &bucket, "on_unavailable = \"redeliver\"", "");
    let ricochet =
        Ricochet::start(&config(&service.upstream.base_url(), admin, &toml), admin).await;
    let mut again = HashMap::new();
    for _ in 0..REQUESTS {
        let reply = next(&mut sub).await;
        again.insert(header(&reply, "correlation-id").unwrap(), bytes_of(&reply));
    }
    let differ: Vec<&String> = (first.keys())
        .filter(|id| again.get(*id) != first.get(*id))
        .collect();
    assert!(
        differ.is_empty(),
        "replies that differ from the first: {differ:?}"
    );
    let calls = service.calls();
    assert_eq!(calls.len(), REQUESTS);
    assert!(
        calls.values().all(|&n| n == 1),
        "each request called once: {calls:?}"
    );
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_reply_store_lookups_total",
            &["result=\"hit\""]
        ),
        REQUESTS as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_reply_store_lookups_total",
            &["result=\"miss\""]
        ),
        0.0
    );
    drop(ricochet);
    delete_bucket(&bucket).await;
    stream.delete().await;
}

#[tokio::test]
async fn a_second_delivery_while_the_first_is_calling_waits_for_its_reply_on_another_replica() {
    // Two replicas on one durable consumer; the publisher sends request 9 twice with the
    // same Nats-Msg-Id after the stream's duplicate window, so each replica may take one.
    let prefix = unique("storeconcurrent");
    let stream = Stream::create_with(jetstream::new(nats().await), &prefix, |config| {
        config.duplicate_window = Duration::from_millis(100);
    })
    .await;
    let (service_gate, gate) = {
        let gate = Gate::default();
        (gate.clone(), gate)
    };
    let service = Counting::start(Duration::ZERO, Some(service_gate)).await;
    let (replies, mut sub) = stream.subscribe("replies").await;
    let bucket = bucket();
    let toml = route(&stream, &bucket, "on_unavailable = \"redeliver\"", "");
    let (a, b) = (free_port(), free_port());
    let base = service.upstream.base_url();
    let first = Ricochet::start(&config(&base, a, &toml), a).await;
    let second = Ricochet::start(&config(&base, b, &toml), b).await;

    let mut headers = request_headers(&replies, "c-9");
    headers.insert("Nats-Msg-Id", "order-9");
    stream.publish("9", headers.clone(), b"order 9").await;
    service.upstream.wait_for_calls(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.publish("9", headers, b"order 9").await;
    assert_eq!(stream.state().await.messages, 2, "two copies in the stream");
    // The second copy is delivered and finds the first's claim.
    eventually(
        Duration::from_secs(10),
        "the second copy delivered",
        || async {
            let info = stream.consumer("ricochet-store").await;
            let seen = format!(
                "{} ack pending, {} pending",
                info.num_ack_pending, info.num_pending
            );
            holds(info.num_ack_pending == 2 && info.num_pending == 0, seen)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open();
    let one = next(&mut sub).await;
    let two = next(&mut sub).await;
    assert_eq!(
        bytes_of(&one),
        bytes_of(&two),
        "both copies get the first's reply"
    );
    assert_eq!(service.total(), 1, "the service was called once");
    let mut waited = 0.0;
    for ricochet in [&first, &second] {
        let metrics = ricochet.metrics().await;
        waited += metric(
            &metrics,
            "ricochet_reply_store_lookups_total",
            &["result=\"hit_after_wait\""],
        );
    }
    assert_eq!(waited, 1.0, "one delivery waited for the other's call");
    drop((first, second));
    delete_bucket(&bucket).await;
    stream.delete().await;
}

/// An AMQP route whose reply store lives on a nats-server of the test's own, which the test
/// stops: the route's `on_unavailable` decides what a request gets meanwhile.
struct Outage {
    nats: common::brokers::OwnBroker,
    service: Counting,
    queue: String,
    ricochet: Ricochet,
}

impl Outage {
    async fn start(choice: &str) -> Self {
        let mut nats = common::brokers::OwnBroker::nats_server(|dir| {
            format!("jetstream {{ store_dir: {:?} }}", dir.join("jetstream"))
        });
        nats.start();
        nats.wait_listening(Duration::from_secs(10));
        let service = Counting::start(Duration::ZERO, None).await;
        let queue = unique("ricochet.test.store.");
        let route = amqp::route(
            "js",
            &queue,
            &queue,
            &format!(
                "[routes.reply_store]\nbucket = \"outage\"\ntimeout = \"300ms\"\n\
                 on_unavailable = \"{choice}\"\n"
            ),
            "max_deliver = 1000",
        );
        let admin = free_port();
        let toml = format!(
            "[nats]\nurl = \"nats://127.0.0.1:{}\"\n\n[upstream]\nbase_url = \"{}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n{route}",
            nats.port(),
            service.upstream.base_url()
        );
        let ricochet = Ricochet::start(&toml, admin).await;
        Self {
            nats,
            service,
            queue,
            ricochet,
        }
    }

    /// Sends `count` requests (message ids `m-<prefix>-<i>`) and waits up to `timeout` s.
    fn rpc(&self, prefix: &str, count: usize, timeout: u64) -> serde_json::Value {
        serde_json::json!({"op": "rpc", "routing_key": self.queue, "count": count,
            "timeout": timeout, "prefix": prefix, "body": "same body"})
    }

    async fn metric(&self, name: &str, label: &str) -> f64 {
        metric(&self.ricochet.metrics().await, name, &[label])
    }

    async fn delete(self) {
        amqp::client(serde_json::json!({"op": "delete", "queues": [self.queue, format!("{}.ricochet-retry.100ms", self.queue)], "exchanges": []})).await;
    }
}

#[tokio::test]
async fn a_store_outage_with_redeliver_calls_nothing_until_the_store_is_back() {
    let mut outage = Outage::start("redeliver").await;
    let answer = amqp::client(outage.rpc("before", 1, 30)).await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(outage.service.total(), 1);

    outage.nats.kill();
    let asked = amqp::client(outage.rpc("during", 2, 60));
    let asked = tokio::spawn(asked);
    eventually(Duration::from_secs(20), "lookups failing", || async {
        let failed = outage
            .metric(
                "ricochet_reply_store_failures_total",
                "operation=\"lookup\"",
            )
            .await;
        holds(failed >= 4.0, failed)
    })
    .await;
    assert_eq!(outage.service.total(), 1, "no call while the store is down");
    let refused = outage
        .metric("ricochet_errors_total", "kind=\"store_unavailable\"")
        .await;
    assert!(
        refused >= 4.0,
        "answered store_unavailable meanwhile: {refused}"
    );
    outage.nats.start();
    let answer = asked.await.unwrap();
    assert_eq!(answer["answered"], 2, "{answer}");
    assert_eq!(answer["duplicates"], 0, "{answer}");
    assert_eq!(
        outage.service.total(),
        3,
        "each request called once, after the outage"
    );
    assert_eq!(
        outage
            .metric(
                "ricochet_reply_store_unprotected_total",
                "reason=\"unavailable\""
            )
            .await,
        0.0
    );
    outage.delete().await;
}

#[tokio::test]
async fn a_store_outage_with_call_calls_the_service_and_counts_it() {
    let mut outage = Outage::start("call").await;
    outage.nats.kill();
    let answer = amqp::client(outage.rpc("during", 3, 60)).await;
    assert_eq!(answer["answered"], 3, "{answer}");
    assert_eq!(outage.service.total(), 3);
    assert_eq!(
        outage
            .metric(
                "ricochet_reply_store_unprotected_total",
                "reason=\"unavailable\""
            )
            .await,
        3.0
    );
    assert_eq!(
        outage
            .metric(
                "ricochet_reply_store_failures_total",
                "operation=\"lookup\""
            )
            .await,
        3.0
    );
    outage.delete().await;
}

/// A core NATS route with a reply store, in front of `service`.
async fn core_ricochet(service: &Counting, bucket: &str, prefix: &str) -> Ricochet {
    let admin = free_port();
    let route = format!(
        r#"
[[routes]]
name = "core"
subject = "{prefix}.{{id}}"
method = "POST"
path = "/orders/{{id}}"

[routes.reply_store]
bucket = "{bucket}"
on_unavailable = "call"
"#
    );
    Ricochet::start(&config(&service.upstream.base_url(), admin, &route), admin).await
}

async fn request(
    client: &async_nats::Client,
    subject: String,
    key: Option<&str>,
    body: &'static str,
) -> async_nats::Message {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(key) = key {
        headers.insert("Idempotency-Key", key);
    }
    let asked = client.request_with_headers(subject, headers, body.into());
    tokio::time::timeout(Duration::from_secs(10), asked)
        .await
        .expect("a reply within 10 s")
        .expect("a reply")
}

#[tokio::test]
async fn a_core_nats_callers_retry_with_its_idempotency_key_gets_the_stored_reply() {
    let service = Counting::start(Duration::ZERO, None).await;
    let bucket = bucket();
    let prefix = unique("storecore");
    let ricochet = core_ricochet(&service, &bucket, &prefix).await;
    let client = nats().await;
    let first = request(&client, format!("{prefix}.1"), Some("k-1"), "order 1").await;
    let again = request(&client, format!("{prefix}.1"), Some("k-1"), "order 1").await;
    assert_eq!(bytes_of(&again), bytes_of(&first));
    assert_eq!(service.total(), 1);
    // Without the header there is no key: each request is called.
    request(&client, format!("{prefix}.2"), None, "order 2").await;
    request(&client, format!("{prefix}.2"), None, "order 2").await;
    assert_eq!(service.total(), 3);
    let metrics = ricochet.metrics().await;
    let lookups = |result: &str| {
        let label = format!("result=\"{result}\"");
        metric(
            &metrics,
            "ricochet_reply_store_lookups_total",
            &["route=\"core\"", &label],
        )
    };
    assert_eq!((lookups("miss"), lookups("hit")), (1.0, 1.0));
    delete_bucket(&bucket).await;
}

#[tokio::test]
async fn a_known_key_with_another_body_or_subject_does_not_read_the_stored_reply() {
    // A publisher that learned a key must not read another request's reply with it.
    let service = Counting::start(Duration::ZERO, None).await;
    let bucket = bucket();
    let prefix = unique("storeforged");
    let _ricochet = core_ricochet(&service, &bucket, &prefix).await;
    let client = nats().await;
    let first = request(&client, format!("{prefix}.1"), Some("k-1"), "order 1").await;
    let other_body = request(&client, format!("{prefix}.1"), Some("k-1"), "order 1!").await;
    let other_subject = request(&client, format!("{prefix}.9"), Some("k-1"), "order 1").await;
    assert_eq!(service.total(), 3, "each is a request of its own");
    for reply in [&other_body, &other_subject] {
        assert_ne!(reply.payload, first.payload);
    }
    // A key of any bytes a header can carry, and a very long one, are keys like any other.
    let long = "k".repeat(16 * 1024);
    for key in ["../../$KV.>", "*", long.as_str()] {
        let one = request(&client, format!("{prefix}.3"), Some(key), "x").await;
        let two = request(&client, format!("{prefix}.3"), Some(key), "x").await;
        assert_eq!(
            bytes_of(&one),
            bytes_of(&two),
            "{}",
            &key[..key.len().min(20)]
        );
    }
    assert_eq!(service.total(), 6, "one call per key");
    delete_bucket(&bucket).await;
}

#[tokio::test]
async fn a_reply_larger_than_the_store_takes_is_published_not_stored_and_counted() {
    // AMQP carries a reply over the NATS server's 1 MiB max_payload; the store cannot.
    let big = Bytes::from(vec![b'x'; 1_200_000]);
    let upstream = Upstream::start(move |_| {
        let big = big.clone();
        async move { Response::builder().body(Full::new(big)).unwrap() }
    })
    .await;
    let queue = unique("ricochet.test.storebig.");
    let bucket = bucket();
    let store = format!("[routes.reply_store]\nbucket = \"{bucket}\"\non_unavailable = \"call\"\n");
    let route = amqp::route("big", &queue, &queue, &store, "");
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &route), admin).await;
    for _ in 0..2 {
        // The same message id and body both times.
        let rpc = serde_json::json!({"op": "rpc", "routing_key": &queue, "count": 1,
            "timeout": 30, "prefix": "same", "body": "same body"});
        let answer = amqp::client(rpc).await;
        assert_eq!(
            answer["answered"],
            1,
            "{}",
            &answer.to_string()[..300.min(answer.to_string().len())]
        );
    }
    assert_eq!(upstream.calls(), 2, "not stored: called again");
    let metrics = ricochet.metrics().await;
    let too_large = ["route=\"big\"", "reason=\"too_large\""];
    assert_eq!(
        metric(
            &metrics,
            "ricochet_reply_store_unprotected_total",
            &too_large
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_reply_store_lookups_total",
            &["route=\"big\"", "result=\"miss\""]
        ),
        2.0,
        "the claim was released: the second delivery claims again"
    );
    amqp::client(serde_json::json!({"op": "delete", "queues": [queue, format!("{queue}.ricochet-retry.100ms")], "exchanges": []})).await;
    delete_bucket(&bucket).await;
}
