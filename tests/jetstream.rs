//! JetStream end to end: durable consumers against the real JetStream, each test with its
//! own stream (memory storage, random name, deleted at the end).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use common::jetstream::{request_headers, Stream};
use common::*;
use futures::StreamExt;

/// A stream for one test, on subjects `{prefix}.req.>`, with this file's route on it.
struct TestStream(Stream);

impl std::ops::Deref for TestStream {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        &self.0
    }
}

impl TestStream {
    async fn create(tag: &str) -> Self {
        Self(Stream::create(tag).await)
    }

    /// A subscription to this test's reply subject, in place before anything is published.
    async fn replies(&self) -> (String, async_nats::Subscriber) {
        self.subscribe("replies").await
    }

    /// ricochet in front of `upstream` with this stream's route (see [`Self::route`]).
    async fn ricochet(&self, upstream: &Upstream, extra: &str, js_extra: &str) -> Ricochet {
        let admin = free_port();
        Ricochet::start(
            &config(&upstream.base_url(), admin, &self.route(extra, js_extra)),
            admin,
        )
        .await
    }

    async fn delete(self) {
        self.0.delete().await;
    }

    /// A JetStream route on this stream; `extra` adds route keys, `js_extra` consumer keys
    /// (one per line, replacing the test defaults).
    fn route(&self, extra: &str, js_extra: &str) -> String {
        let mut consumer = vec![
            ("durable", "\"ricochet-test\"".to_string()),
            ("ack_wait", "\"2s\"".to_string()),
            ("redelivery_backoff", "[\"100ms\"]".to_string()),
        ];
        for line in js_extra.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once('=').unwrap();
            consumer.retain(|(k, _)| *k != key.trim());
            consumer.push((key.trim(), value.trim().to_string()));
        }
        let consumer: String = consumer
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        self.0.route(extra, &consumer)
    }
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .expect("subscription open")
}

/// What a dead letter says: why, the last status, and after how many deliveries.
fn dead_letter_says(letter: &async_nats::Message) -> [Option<String>; 3] {
    [
        "Ricochet-Dead-Letter-Reason",
        "Ricochet-Last-Status",
        "Ricochet-Delivery-Count",
    ]
    .map(|name| header(letter, name))
}

fn says(reason: &str, status: &str, deliveries: &str) -> [Option<String>; 3] {
    [reason, status, deliveries].map(|s| Some(s.to_string()))
}

/// Asserts nothing more arrives on `sub` within `wait`.
async fn nothing_more(sub: &mut async_nats::Subscriber, wait: Duration) {
    if let Ok(Some(message)) = tokio::time::timeout(wait, sub.next()).await {
        panic!(
            "unexpected message on {}: {:?}",
            message.subject, message.payload
        );
    }
}

#[tokio::test]
async fn requests_are_answered_with_correlation_and_stable_idempotency_keys() {
    let stream = TestStream::create("jsok").await;
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let replies = format!("{}.replies", stream.prefix);
    let default_replies = format!("{}.default-replies", stream.prefix);
    let mut sub = client.subscribe(replies.clone()).await.unwrap();
    let mut default_sub = client.subscribe(default_replies.clone()).await.unwrap();
    client.flush().await.unwrap();
    let ricochet = stream
        .ricochet(
            &upstream,
            &format!("reply_subject = \"{default_replies}\""),
            "",
        )
        .await;

    let mut headers = request_headers(&replies, "c-1");
    headers.insert("Nats-Msg-Id", "order-42-v1");
    stream.publish("42", headers, b"first").await;
    let reply = next(&mut sub).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("c-1"));
    assert_eq!(reply.payload.as_ref(), b"first");
    // The same on every redelivery: a stream capturing replies keeps one of them.
    assert_eq!(
        header(&reply, "Nats-Msg-Id"),
        Some(format!("ricochet-reply:{}:order-42-v1", stream.name))
    );

    // No reply-to header: the route's reply_subject.
    stream.publish("43", HeaderMap::new(), b"second").await;
    let reply = next(&mut default_sub).await;
    assert_eq!(reply.payload.as_ref(), b"second");

    let seen = upstream.seen();
    assert_eq!(seen[0].path_and_query, "/orders/42");
    assert_eq!(seen[0].headers["idempotency-key"], "order-42-v1");
    assert_eq!(
        seen[1].headers["idempotency-key"],
        format!("{}:2", stream.name)
    );
    assert!(
        seen[0].headers.get("reply-to").is_some(),
        "ordinary headers are forwarded"
    );

    // The ack follows the confirmed reply: it may trail the reply's arrival by a moment.
    eventually(Duration::from_secs(5), "both acknowledged", || async {
        let info = stream.consumer("ricochet-test").await;
        let metrics = ricochet.metrics().await;
        let acks = metric(&metrics, "ricochet_settlements_total", &["action=\"ack\""]);
        holds(
            info.num_ack_pending == 0 && acks == 2.0,
            format!("{acks} acks, {info:?}"),
        )
    })
    .await;
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_messages_received_total",
            &["source=\"jetstream\""]
        ),
        2.0
    );
    stream.delete().await;
}

#[tokio::test]
async fn retryable_failures_are_redelivered_with_a_delay_and_answered_once() {
    let stream = TestStream::create("jsretry").await;
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let record = times.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = Upstream::start(move |_| {
        record.lock().unwrap().push(Instant::now());
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                respond(500, "flaky")
            } else {
                respond(200, "recovered")
            }
        }
    })
    .await;
    let (replies, mut sub) = stream.replies().await;
    let _ricochet = stream
        .ricochet(
            &upstream,
            "[routes.retry]\nmax_attempts = 1\nretry_on = [500]\n",
            "redelivery_backoff = [\"300ms\"]",
        )
        .await;

    stream
        .publish("7", request_headers(&replies, "c-7"), b"payload")
        .await;
    let reply = next(&mut sub).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(reply.payload.as_ref(), b"recovered");
    nothing_more(&mut sub, Duration::from_millis(800)).await;

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let keys: Vec<_> = upstream
        .seen()
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key across redeliveries: {keys:?}"
    );
    let times = times.lock().unwrap().clone();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(300),
            "redelivered after the nak delay"
        );
    }
    stream.delete().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_not_redelivered() {
    let stream = TestStream::create("jspoison").await;
    let upstream = Upstream::start(|seen| async move {
        if seen.path_and_query.ends_with("/down") {
            respond(503, "down")
        } else {
            respond(200, "ok")
        }
    })
    .await;
    let client = nats().await;
    let replies = format!("{}.replies", stream.prefix);
    let mut sub = client.subscribe(replies.clone()).await.unwrap();
    let mut dlq = client
        .subscribe(format!("{}.dlq", stream.prefix))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let ricochet = stream.ricochet(&upstream, "max_payload = 16\n[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nenabled = false\n",
        "ack_wait = \"1s\"\nmax_deliver = 2").await;

    let mut headers = request_headers(&replies, "c-big");
    headers.insert("X-Tenant", "acme");
    stream
        .publish("1", headers, b"far more than sixteen bytes")
        .await;
    let letter = next(&mut dlq).await;
    assert_eq!(letter.payload.as_ref(), b"far more than sixteen bytes");
    let get = |name: &str| header(&letter, name);
    assert_eq!(
        dead_letter_says(&letter),
        says("payload_too_large", "413", "1")
    );
    assert_eq!(
        get("Ricochet-Original-Stream").as_deref(),
        Some(stream.name.as_str())
    );
    assert_eq!(
        get("Ricochet-Original-Subject"),
        Some(format!("{}.req.1", stream.prefix))
    );
    assert_eq!(get("Ricochet-Original-Sequence").as_deref(), Some("1"));
    assert_eq!(get("X-Tenant").as_deref(), Some("acme"));
    let reply = next(&mut sub).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("413"));
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("c-big"));

    // Retryable until max_deliver: dead-lettered on the last delivery.
    stream
        .publish("down", request_headers(&replies, "c-down"), b"small")
        .await;
    let letter = next(&mut dlq).await;
    assert_eq!(dead_letter_says(&letter), says("max_deliver", "503", "2"));
    let reply = next(&mut sub).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("503"));
    assert_eq!(
        upstream.calls(),
        2,
        "the oversized message never reached the service"
    );

    // Terminated: nothing comes back after ack_wait.
    nothing_more(&mut dlq, Duration::from_millis(1500)).await;
    let info = stream.consumer("ricochet-test").await;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    let metrics = ricochet.metrics().await;
    assert_eq!(metric(&metrics, "ricochet_dead_letters_total", &[]), 2.0);
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"term\""]),
        2.0
    );
    stream.delete().await;
}

#[tokio::test]
async fn a_call_slower_than_ack_wait_is_kept_alive_with_in_progress() {
    let stream = TestStream::create("jsslow").await;
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        respond(200, "slow but fine")
    })
    .await;
    let (replies, mut sub) = stream.replies().await;
    let ricochet = stream
        .ricochet(
            &upstream,
            "timeout = \"5s\"\n[routes.retry]\nmax_attempts = 1\n",
            "ack_wait = \"1s\"",
        )
        .await;

    stream
        .publish("9", request_headers(&replies, "c-9"), b"x")
        .await;
    let reply = next(&mut sub).await;
    assert_eq!(reply.payload.as_ref(), b"slow but fine");
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    assert_eq!(upstream.calls(), 1, "no redelivery while the call ran");
    let info = stream.consumer("ricochet-test").await;
    assert_eq!(info.num_redelivered, 0);
    let metrics = ricochet.metrics().await;
    assert!(
        metric(
            &metrics,
            "ricochet_settlements_total",
            &["action=\"in_progress\""]
        ) >= 2.0
    );
    stream.delete().await;
}

#[tokio::test]
async fn an_open_breaker_stops_pulling_until_the_service_recovers() {
    let stream = TestStream::create("jsbreak").await;
    let (upstream, healthy) = Upstream::down_until_healthy().await;
    let (replies, mut sub) = stream.replies().await;
    let ricochet = stream.ricochet(&upstream, "max_in_flight = 1\n[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nconsecutive_failures = 3\nbreak_duration = \"2s\"\n",
        "max_deliver = 20").await;
    for i in 0..20 {
        stream
            .publish(
                &i.to_string(),
                request_headers(&replies, &format!("c-{i}")),
                b"x",
            )
            .await;
    }

    // Three failures open the breaker; then nothing more is pulled or called.
    eventually(Duration::from_secs(5), "the breaker open", || async {
        let state = metric(&ricochet.metrics().await, "ricochet_circuit_state", &[]);
        holds(state == 1.0, format!("state {state}"))
    })
    .await;
    let calls = upstream.calls();
    assert_eq!(calls, 3);
    // While the circuit stays open nothing is pulled or called. The break may end during
    // the wait on a slow machine: then one probe, and only one, may have been taken.
    let half_open = |text: &str| {
        let labels = ["to=\"half_open\""];
        metric(text, "ricochet_circuit_transitions_total", &labels)
    };
    let probes_before = half_open(&ricochet.metrics().await);
    let pending = stream.consumer("ricochet-test").await.num_pending;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pending_after = stream.consumer("ricochet-test").await.num_pending;
    let calls_after = upstream.calls();
    let probes = half_open(&ricochet.metrics().await) - probes_before;
    let allowed: u64 = if probes == 0.0 { 0 } else { 1 };
    assert!(
        pending.saturating_sub(pending_after) <= allowed
            && (calls_after.saturating_sub(calls) as u64) <= allowed,
        "no pulls or calls while open beyond one probe per half-open ({probes} half-opens): \
         pending {pending} -> {pending_after}, calls {calls} -> {calls_after}"
    );

    healthy.store(true, Ordering::SeqCst);
    let mut answered = HashMap::new();
    while answered.len() < 20 {
        let reply = next(&mut sub).await;
        assert_eq!(
            header(&reply, "Ricochet-Status").as_deref(),
            Some("200"),
            "no error replies for redelivered messages"
        );
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_insert(0) += 1;
    }
    assert!(answered.values().all(|n| *n == 1));
    stream.delete().await;
}

#[tokio::test]
async fn sigterm_finishes_and_acknowledges_in_flight_messages() {
    let stream = TestStream::create("jsterm").await;
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        respond(200, "done")
    })
    .await;
    let (replies, mut sub) = stream.replies().await;
    let mut ricochet = stream.ricochet(&upstream, "", "").await;
    for i in 0..5 {
        stream
            .publish(
                &i.to_string(),
                request_headers(&replies, &format!("c-{i}")),
                b"x",
            )
            .await;
    }
    upstream.wait_for_calls(5).await;
    ricochet.signal("-TERM");
    for _ in 0..5 {
        assert_eq!(next(&mut sub).await.payload.as_ref(), b"done");
    }
    assert_eq!(
        ricochet.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    let info = stream.consumer("ricochet-test").await;
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "all settled before exit"
    );
    stream.delete().await;
}

#[tokio::test]
async fn a_crash_mid_run_loses_no_request() {
    const TOTAL: usize = 2000;
    let stream = TestStream::create("jscrash").await;
    let upstream = Upstream::start(|seen| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        http::Response::new(http_body_util::Full::new(seen.body))
    })
    .await;
    let (replies, mut sub) = stream.replies().await;
    let admin = free_port();
    let routes = stream.route("max_in_flight = 32", "max_deliver = 100");
    let toml = config(&upstream.base_url(), admin, &routes);
    let mut first = Ricochet::start(&toml, admin).await;

    let published = Arc::new(AtomicUsize::new(0));
    let killing = Arc::new(tokio::sync::Notify::new());
    let publisher = {
        let js = stream.js.clone();
        let prefix = stream.prefix.clone();
        let replies = replies.clone();
        let published = published.clone();
        let killing = killing.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                if i == TOTAL / 2 {
                    // The second half goes out while ricochet is killed and restarted.
                    killing.notified().await;
                }
                let ack = js
                    .publish_with_headers(
                        format!("{prefix}.req.{i}"),
                        request_headers(&replies, &i.to_string()),
                        "x".into(),
                    )
                    .await
                    .unwrap();
                ack.await.unwrap();
                published.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut answered: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    while total < TOTAL / 10 {
        let reply = next(&mut sub).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
        total += 1;
    }
    killing.notify_one();
    first.signal("-KILL");
    let published_at_kill = published.load(Ordering::SeqCst);
    let unanswered_at_kill = TOTAL - answered.len();
    first.wait_exit(Duration::from_secs(10)).await;
    drop(first);
    println!("crash test: at the kill {published_at_kill} of {TOTAL} published, {unanswered_at_kill} unanswered");
    assert!(
        published_at_kill < TOTAL && unanswered_at_kill >= TOTAL / 3,
        "a real share of the requests is in flight or not yet taken at the kill"
    );
    let _second = Ricochet::start(&toml, admin).await;
    publisher.await.unwrap();

    while answered.len() < TOTAL {
        let reply = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {TOTAL} requests answered", answered.len()))
            .unwrap();
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    let duplicates: usize = answered.values().map(|n| n - 1).sum();
    println!("crash test: {TOTAL} requests, all answered, {duplicates} answered twice");
    assert_eq!(answered.len(), TOTAL);
    assert!(
        duplicates <= 64,
        "only work in flight at the crash is repeated: {duplicates}"
    );
    stream.delete().await;
}

#[tokio::test]
async fn a_reply_to_a_system_subject_is_refused_and_dead_lettered() {
    let stream = TestStream::create("jssys").await;
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let mut dlq = client
        .subscribe(format!("{}.dlq", stream.prefix))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let _ricochet = stream.ricochet(&upstream, "", "").await;

    let hostile = format!("$JS.API.STREAM.DELETE.{}", stream.name);
    stream
        .publish("1", request_headers(&hostile, "c-1"), b"x")
        .await;
    let letter = next(&mut dlq).await;
    assert_eq!(
        header(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
        Some("bad_request")
    );
    assert_eq!(upstream.calls(), 0);
    assert!(
        stream.js.get_stream(&stream.name).await.is_ok(),
        "the stream still exists"
    );
    stream.delete().await;
}

#[tokio::test]
async fn a_reply_too_large_for_nats_is_a_502_and_settles_the_request() {
    let stream = TestStream::create("jsbig").await;
    let big: &'static str = Box::leak("y".repeat(2 * 1024 * 1024).into_boxed_str());
    let upstream = Upstream::start(move |_| async move { respond(200, big) }).await;
    let (replies, mut sub) = stream.replies().await;
    let _ricochet = stream.ricochet(&upstream, "", "ack_wait = \"1s\"").await;

    stream
        .publish("1", request_headers(&replies, "c-big"), b"x")
        .await;
    let reply = next(&mut sub).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("502"));
    assert!(String::from_utf8_lossy(&reply.payload).contains("max_payload"));
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    assert_eq!(upstream.calls(), 1, "settled: not redelivered");
    let info = stream.consumer("ricochet-test").await;
    assert_eq!((info.num_ack_pending, info.num_redelivered), (0, 0));
    stream.delete().await;
}

#[tokio::test]
async fn a_deleted_consumer_makes_ricochet_unready_until_it_is_bound_again() {
    let stream = TestStream::create("jsgone").await;
    let upstream = Upstream::echo().await;
    let (replies, mut sub) = stream.replies().await;
    let admin = free_port();
    let ricochet = Ricochet::start(
        &config(&upstream.base_url(), admin, &stream.route("", "")),
        admin,
    )
    .await;

    let js_stream = stream.js.get_stream(&stream.name).await.unwrap();
    js_stream.delete_consumer("ricochet-test").await.unwrap();
    ricochet.wait_unready(Duration::from_secs(3)).await;
    ricochet.wait_ready().await;
    stream
        .publish("1", request_headers(&replies, "c-1"), b"after")
        .await;
    assert_eq!(next(&mut sub).await.payload.as_ref(), b"after");
    stream.delete().await;
}

#[tokio::test]
async fn a_reply_its_stream_refuses_leaves_the_request_unacknowledged() {
    // Replies go to one subject per request, captured by a wildcard stream that holds one
    // message and refuses more: the second reply is not stored, so its request must be
    // redelivered, not acknowledged as if it had been answered.
    let stream = TestStream::create("jsfull").await;
    let out = Stream::create_with(stream.js.clone(), &stream.prefix, |config| {
        config.name = format!("{}_OUT", stream.name);
        config.subjects = vec![format!("{}.out.>", stream.prefix)];
        config.max_messages = 1;
        config.discard = stream::DiscardPolicy::New;
    })
    .await;
    let upstream = Upstream::echo().await;
    let _ricochet = stream.ricochet(&upstream, "", "").await;
    for id in ["1", "2"] {
        let reply_to = format!("{}.out.{id}", stream.prefix);
        stream
            .publish(id, request_headers(&reply_to, id), b"{}")
            .await;
    }
    eventually(
        Duration::from_secs(10),
        "the request of the refused reply redelivered",
        || async {
            let info = stream.consumer("ricochet-test").await;
            holds(info.num_redelivered > 0, format!("{info:?}"))
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the service called again for it",
        || async { holds(upstream.calls() > 2, format!("{} calls", upstream.calls())) },
    )
    .await;
    assert_eq!(out.state().await.messages, 1);
    out.delete().await;
    stream.delete().await;
}

/// Three routes on one stream, each with its own durable consumer and path.
fn routes_on_one_stream(stream: &TestStream, names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                r#"
[[routes]]
name = "{name}"
source = "jetstream"
subject = "{prefix}.req.{name}.{{id}}"
method = "POST"
path = "/{name}/{{id}}"
dead_letter = "{prefix}.dlq"

[routes.jetstream]
stream = "{stream}"
durable = "ricochet-{name}"
ack_wait = "2s"
redelivery_backoff = ["100ms"]
"#,
                prefix = stream.prefix,
                stream = stream.name
            )
        })
        .collect()
}

async fn server_version() -> (String, bool) {
    let version = nats().await.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let multi_filter = (major, minor) >= (2, 10);
    (version, multi_filter)
}

#[tokio::test]
async fn routes_sharing_a_stream_each_answer_only_their_own_subjects() {
    const PER_ROUTE: usize = 100;
    let names = ["a", "b", "c"];
    let stream = TestStream::create("jsshared").await;
    let upstream = Upstream::echo().await;
    let (replies, mut sub) = stream.replies().await;
    let mut dlq = nats()
        .await
        .subscribe(format!("{}.dlq", stream.prefix))
        .await
        .unwrap();
    let admin = free_port();
    let ricochet = Ricochet::start(
        &config(
            &upstream.base_url(),
            admin,
            &routes_on_one_stream(&stream, &names),
        ),
        admin,
    )
    .await;

    for name in names {
        let info = stream.consumer(&format!("ricochet-{name}")).await;
        let filter = format!("{}.req.{name}.*", stream.prefix);
        let kept = [info.config.filter_subject.clone()]
            .into_iter()
            .chain(info.config.filter_subjects.clone())
            .filter(|f| !f.is_empty())
            .collect::<Vec<_>>();
        assert_eq!(kept, [filter], "the server kept route {name}'s filter");
    }
    for i in 0..PER_ROUTE {
        for name in names {
            let id = format!("{name}.{i}");
            stream
                .publish(&id, request_headers(&replies, &id), b"{}")
                .await;
        }
    }
    let mut answered: HashMap<String, usize> = HashMap::new();
    for _ in 0..PER_ROUTE * names.len() {
        let reply = next(&mut sub).await;
        let id = header(&reply, "correlation-id").unwrap();
        assert_eq!(
            header(&reply, "Ricochet-Status").as_deref(),
            Some("200"),
            "{id}"
        );
        // The route that answered called its own path with the request's id.
        let (name, n) = id.split_once('.').unwrap();
        assert_eq!(
            header(&reply, "x-echo-path").as_deref(),
            Some(format!("/{name}/{n}").as_str()),
            "{id} answered by its own route"
        );
        *answered.entry(id).or_default() += 1;
    }
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    nothing_more(&mut dlq, Duration::from_millis(10)).await;
    assert_eq!(answered.len(), PER_ROUTE * names.len());
    assert!(answered.values().all(|&n| n == 1), "each answered once");
    assert_eq!(
        upstream.calls(),
        PER_ROUTE * names.len(),
        "each called once"
    );
    let metrics = ricochet.metrics().await;
    assert_eq!(metric(&metrics, "ricochet_dead_letters_total", &[]), 0.0);
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"term\""]),
        0.0
    );
    stream.delete().await;
}

#[tokio::test]
async fn several_filter_subjects_work_on_2_10_and_are_refused_by_name_on_older_servers() {
    let (version, multi_filter) = server_version().await;
    let stream = TestStream::create("jsmulti").await;
    let upstream = Upstream::echo().await;
    let (replies, mut sub) = stream.replies().await;
    let filters = format!(
        "filter_subjects = [\"{p}.req.x.*\", \"{p}.req.y.*\"]",
        p = stream.prefix
    );
    let routes = stream
        .route("", &filters)
        .replace(".req.{id}\"", ".req.*.{id}\"");
    let admin = free_port();
    let ricochet = Ricochet::spawn(&config(&upstream.base_url(), admin, &routes), admin);
    if multi_filter {
        ricochet.wait_ready().await;
        for (id, kind) in [("1", "x"), ("2", "y"), ("3", "z")] {
            stream
                .publish(
                    &format!("{kind}.{id}"),
                    request_headers(&replies, id),
                    b"{}",
                )
                .await;
        }
        let mut got: Vec<String> = Vec::new();
        for _ in 0..2 {
            got.push(header(&next(&mut sub).await, "correlation-id").unwrap());
        }
        got.sort();
        assert_eq!(got, ["1", "2"], "x and y answered");
        nothing_more(&mut sub, Duration::from_millis(1000)).await;
        assert_eq!(upstream.calls(), 2, "z is not the consumer's subject");
    } else {
        let refusal = "several filter subjects need nats-server 2.10";
        eventually(Duration::from_secs(10), "the refusal logged", || async {
            let logs = ricochet.logs();
            holds(logs.contains(refusal), logs)
        })
        .await;
        let logs = ricochet.logs();
        assert!(
            logs.contains(&version),
            "the log names the server's version:\n{logs}"
        );
        assert_eq!(ricochet.admin_get("/readyz").await.unwrap().0, 503);
        assert!(
            stream.try_consumer("ricochet-test").await.is_err(),
            "no consumer that would take every subject was created"
        );
    }
    stream.delete().await;
}

#[tokio::test]
async fn a_server_error_is_redelivered_and_dead_lettered_with_its_status_after_max_deliver() {
    let stream = TestStream::create("js500").await;
    let upstream = Upstream::start(|_| async { respond(500, "broken") }).await;
    let (replies, mut sub) = stream.replies().await;
    let mut dlq = nats()
        .await
        .subscribe(format!("{}.dlq", stream.prefix))
        .await
        .unwrap();
    let _ricochet = stream
        .ricochet(
            &upstream,
            "[routes.retry]\nmax_attempts = 1\n",
            "max_deliver = 3",
        )
        .await;
    stream
        .publish("1", request_headers(&replies, "c-1"), b"{}")
        .await;
    let letter = next(&mut dlq).await;
    assert_eq!(dead_letter_says(&letter), says("max_deliver", "500", "3"));
    let reply = next(&mut sub).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("500"));
    assert_eq!(
        reply.payload.as_ref(),
        b"broken",
        "the service's last answer"
    );
    nothing_more(&mut sub, Duration::from_millis(500)).await;
    assert_eq!(upstream.calls(), 3, "one call per delivery");
    stream.delete().await;
}

#[tokio::test]
async fn an_existing_durable_with_other_settings_is_brought_to_the_routes_or_refused() {
    // What an earlier ricochet left on a 2.9 server: a durable with no filter at all, other
    // ack settings and a delivery limit. A current server updates it in place; 2.9 would
    // accept a new filter and then skip messages, so ricochet refuses it there.
    let (_, current) = server_version().await;
    let stream = TestStream::create("jsold").await;
    let js_stream = stream.js.get_stream(&stream.name).await.unwrap();
    js_stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("ricochet-test".into()),
            ack_wait: Duration::from_secs(60),
            max_deliver: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let upstream = Upstream::echo().await;
    let (replies, mut sub) = stream.replies().await;
    let admin = free_port();
    let ricochet = Ricochet::spawn(
        &config(&upstream.base_url(), admin, &stream.route("", "")),
        admin,
    );
    if current {
        // Updated in place: the server now holds the route's settings.
        ricochet.wait_ready().await;
        let info = stream.consumer("ricochet-test").await;
        assert_eq!(
            info.config.filter_subject,
            format!("{}.req.*", stream.prefix)
        );
        assert_eq!(info.config.ack_wait, Duration::from_secs(2));
        assert_eq!(info.config.max_deliver, -1);
        stream
            .publish("1", request_headers(&replies, "c-1"), b"{}")
            .await;
        assert_eq!(
            header(&next(&mut sub).await, "correlation-id").as_deref(),
            Some("c-1")
        );
    } else {
        // Refused on 2.9: the reason is logged, readiness stays 503, nothing is consumed.
        let refusal = "cannot change a consumer's filter in place";
        eventually(Duration::from_secs(10), "the refusal logged", || async {
            let logs = ricochet.logs();
            holds(logs.contains(refusal), logs)
        })
        .await;
        ricochet.wait_unready(Duration::from_secs(1)).await;
        stream
            .publish("1", request_headers(&replies, "c-1"), b"{}")
            .await;
        nothing_more(&mut sub, Duration::from_millis(500)).await;
        assert_eq!(upstream.calls(), 0);
    }
    stream.delete().await;
}

#[tokio::test]
async fn the_consumers_pending_counts_are_gauges() {
    let stream = TestStream::create("jsgauge").await;
    let (upstream, open) = Upstream::gated().await;
    let ricochet = stream
        .ricochet(
            &upstream,
            "max_in_flight = 1\ntimeout = \"20s\"\ntotal_timeout = \"20s\"\n[routes.retry]\nmax_attempts = 1",
            "ack_wait = \"30s\"",
        )
        .await;
    for i in 0..10 {
        stream.publish(&i.to_string(), HeaderMap::new(), b"x").await;
    }
    let gauges = || async {
        let metrics = ricochet.metrics().await;
        let get = |name: &str| metric(&metrics, name, &["route=\"js\""]);
        (
            get("ricochet_jetstream_pending_messages"),
            get("ricochet_jetstream_ack_pending_messages"),
        )
    };
    // One message at the service, nine in the stream for this consumer.
    eventually(
        Duration::from_secs(15),
        "9 pending, 1 unacknowledged",
        || async {
            let seen = gauges().await;
            holds(
                seen == (9.0, 1.0),
                format!("pending, ack pending: {seen:?}"),
            )
        },
    )
    .await;
    open.open();
    eventually(Duration::from_secs(15), "nothing pending", || async {
        let seen = gauges().await;
        holds(
            seen == (0.0, 0.0),
            format!("pending, ack pending: {seen:?}"),
        )
    })
    .await;
    stream.delete().await;
}

/// What ricochet relies on when it sends an ack again after a lost connection (the ack may
/// have reached the server before the connection went): the server answers a double ack of
/// a message it has already acknowledged, and the message is not delivered again. Checked on
/// every server the suite runs against.
#[tokio::test]
async fn the_server_answers_an_ack_sent_twice_and_does_not_redeliver() {
    let stream = TestStream::create("jsackagain").await;
    stream.publish("1", HeaderMap::new(), b"x").await;
    let consumer = (stream.js.get_stream(&stream.name).await.unwrap())
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("ack-again".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let fetch = || async {
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        batch.map(|m| m.unwrap()).collect::<Vec<_>>().await
    };
    let delivered = fetch().await;
    assert_eq!(delivered.len(), 1);
    let message = &delivered[0];
    message.double_ack().await.expect("first ack confirmed");
    message
        .double_ack()
        .await
        .expect("the same ack again is confirmed too");
    // Past ack_wait: nothing comes again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        fetch().await.is_empty(),
        "an acknowledged message was redelivered"
    );
    stream.delete().await;
}

/// A request whose header block the NATS client cannot parse (raw protocol bytes: a space in
/// a header name) never reaches ricochet: each delivery costs one reconnect, and nothing else
/// is lost: the requests pulled with it are pulled again one at a time and answered
/// (docs/security.md, "NATS header blocks").
#[tokio::test]
async fn a_request_the_client_cannot_parse_costs_a_reconnect_per_delivery_and_loses_nothing_else() {
    use common::raw_nats::{hpub, Raw};
    let stream = TestStream::create("jsunparsable").await;
    let upstream = Upstream::echo().await;
    let (replies, mut sub) = stream.replies().await;
    let ricochet = stream
        .ricochet(
            &upstream,
            "max_in_flight = 32",
            "ack_wait = \"1s\"\nmax_deliver = 3",
        )
        .await;
    ricochet.wait_ready().await;
    let mut raw = Raw::connect().await;
    let block = format!("NATS/1.0\r\nreply-to: {replies}\r\nX Bad: 1\r\n\r\n");
    let subject = format!("{}.req.bad", stream.prefix);
    let said = raw
        .send(&hpub(
            subject.as_bytes(),
            "_INBOX.ack",
            block.as_bytes(),
            b"bad",
        ))
        .await;
    assert!(said.contains("PONG") && !said.contains("-ERR"), "{said}");
    for n in 0..20 {
        let id = format!("good{n}");
        let headers = request_headers(&replies, &id);
        stream.publish(&id, headers, b"good").await;
    }
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 20 {
        let reply = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("20 good requests answered; got {answered:?}"))
            .unwrap();
        assert_eq!(reply.payload, "good", "only good requests are answered");
        answered.insert(header(&reply, "correlation-id").unwrap());
    }
    let protocol_errors = || async {
        let labels = ["event=\"protocol_error\""];
        let text = ricochet.metrics().await;
        metric(&text, "ricochet_nats_connection_events_total", &labels)
    };
    // ricochet never sees it, so cannot settle it: the server delivers it again every
    // ack_wait (the consumer's own max_deliver is unlimited), each time one reconnect, no
    // more (a storm of reconnects would show here).
    let before = protocol_errors().await;
    assert!(before >= 1.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = protocol_errors().await - before;
    assert!(
        (1.0..=4.0).contains(&more),
        "{more} drops in 3 s with ack_wait 1 s"
    );
    ricochet.wait_ready().await;
    assert_eq!(ricochet.admin_get("/healthz").await.unwrap().0, 200);
    let calls: Vec<_> = upstream.seen().iter().map(|s| s.body.clone()).collect();
    assert!(
        calls.iter().all(|b| b == "good"),
        "the service never saw it"
    );
    stream.delete().await;
}

/// A route whose stream does not exist: `/readyz` says which route waits for which stream
/// (as the log does), and ricochet becomes ready once the stream is there.
#[tokio::test]
async fn readiness_names_the_route_and_the_missing_stream() {
    let prefix = unique("jsmissing");
    let missing = TestStream(Stream::not_created(&prefix).await);
    let name = missing.name.clone();
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let ricochet = Ricochet::spawn(
        &config(&upstream.base_url(), admin, &missing.route("", "")),
        admin,
    );
    eventually(
        Duration::from_secs(10),
        "readyz names the route and the stream",
        || async {
            let (status, body) = ricochet
                .admin_get("/readyz")
                .await
                .map_err(|e| e.to_string())?;
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .map(|b| b["reason"].as_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            holds(
                status == 503
                    && reason.contains("route \"js\"")
                    && reason.contains(&format!("stream \"{name}\"")),
                format!("{status} {body}"),
            )
        },
    )
    .await;
    let logs = ricochet.logs();
    assert!(
        logs.contains(&name),
        "the log names the stream too:\n{logs}"
    );

    // The stream created, the route binds and the reason goes.
    let stream = Stream::create_named(&prefix).await;
    ricochet.wait_ready().await;
    let (_, body) = ricochet.admin_get("/readyz").await.unwrap();
    assert!(!body.contains(&name), "{body}");
    stream.delete().await;
}

/// A backlog is pulled in batches of the route's free slots: every message of a batch is
/// processed at once, none left for the server to redeliver after `ack_wait` (a batch's
/// last message once was, when taking the first message's slot dropped one of the batch's).
#[tokio::test]
async fn a_backlog_is_taken_in_batches_without_leaving_a_message_to_redelivery() {
    const TOTAL: usize = 300;
    let stream = TestStream::create("jsbatch").await;
    let upstream = Upstream::slow_echo(Duration::from_millis(5)).await;
    let (replies, mut sub) = stream.replies().await;
    for i in 0..TOTAL {
        let id = i.to_string();
        stream
            .publish(&id, request_headers(&replies, &id), "x")
            .await;
    }
    // An ack_wait far beyond each reply's wait: a message left to redelivery shows.
    let ricochet = stream
        .ricochet(&upstream, "max_in_flight = 8", "ack_wait = \"60s\"")
        .await;
    let mut answered: HashMap<String, usize> = HashMap::new();
    for _ in 0..TOTAL {
        let reply = next(&mut sub).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    assert_eq!(answered.len(), TOTAL);
    assert_eq!(upstream.calls(), TOTAL);
    let metrics = ricochet.metrics().await;
    assert_eq!(metric(&metrics, "ricochet_redeliveries_total", &[]), 0.0);
    assert_eq!(
        metric(&metrics, "ricochet_messages_received_total", &[]),
        TOTAL as f64
    );
    stream.delete().await;
}
