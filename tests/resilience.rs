//! Resilience end to end: a scripted flaky upstream behind ricochet, against the real
//! nats-server, asserting exact call counts at the upstream.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::*;

/// A route on `{prefix}.x` with fast, exact backoff and a breaker that stays out of the way
/// unless `extra` configures it.
fn route(prefix: &str, method: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "flaky"
subject = "{prefix}.x"
method = "{method}"
path = "/x"
{extra}
"#
    )
}

const FAST_RETRIES: &str = "[routes.retry]\nmax_attempts = 5\ninitial_interval = \"10ms\"\nmax_interval = \"50ms\"\njitter = 0.0\n[routes.circuit_breaker]\nconsecutive_failures = 100\n";

/// Counts calls; `script(n)` (n = 0, 1, ...) answers call n.
async fn scripted(
    script: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let script = Arc::new(script);
    let upstream = Upstream::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let reply = script(n);
        async move { reply }
    })
    .await;
    (upstream, calls)
}

/// ricochet with the route `flaky` on a fresh subject in front of `upstream`: the subject to
/// send to, the running ricochet, and a NATS client.
async fn start(
    upstream: &Upstream,
    tag: &str,
    method: &str,
    extra: &str,
) -> (String, Ricochet, async_nats::Client) {
    let prefix = unique(tag);
    let admin = free_port();
    let toml = config(&upstream.base_url(), admin, &route(&prefix, method, extra));
    (
        format!("{prefix}.x"),
        Ricochet::start(&toml, admin).await,
        nats().await,
    )
}

async fn send(
    client: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject, headers, "x".into()),
    )
    .await
    .expect("reply within 10 s")
    .expect("reply")
}

fn status(reply: &async_nats::Message) -> String {
    header(reply, "Ricochet-Status").unwrap_or_default()
}

#[tokio::test]
async fn three_failures_then_success_makes_four_calls() {
    let (upstream, calls) = scripted(|n| {
        if n < 3 {
            respond(503, "busy")
        } else {
            respond(200, "done")
        }
    })
    .await;
    let (subject, ricochet, client) = start(&upstream, "retry4", "GET", FAST_RETRIES).await;

    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(status(&reply), "200");
    assert_eq!(reply.payload.as_ref(), b"done");
    assert_eq!(header(&reply, "Ricochet-Attempts").as_deref(), Some("4"));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_retries_total", &["route=\"flaky\""]),
        3.0
    );
}

#[tokio::test]
async fn always_failing_stops_at_max_attempts_with_the_last_status() {
    let (upstream, calls) = scripted(|n| {
        if n < 4 {
            respond(503, "busy")
        } else {
            respond(502, "last")
        }
    })
    .await;
    let (subject, ricochet, client) = start(&upstream, "retry5", "GET", FAST_RETRIES).await;

    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(status(&reply), "502", "the last status");
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("502")
    );
    assert_eq!(header(&reply, "Ricochet-Attempts").as_deref(), Some("5"));
    assert_eq!(reply.payload.as_ref(), b"last");
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_retries_skipped_total",
            &["reason=\"attempts\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_permanent_answer_is_not_retried() {
    let (upstream, calls) = scripted(|_| respond(400, "bad input")).await;
    let (subject, _ricochet, client) = start(&upstream, "perm", "GET", FAST_RETRIES).await;

    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(status(&reply), "400");
    assert_eq!(reply.payload.as_ref(), b"bad input");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key() {
    let (upstream, calls) = scripted(|_| respond(503, "busy")).await;
    let (subject, _ricochet, client) = start(&upstream, "post", "POST", FAST_RETRIES).await;

    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(status(&reply), "503");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "POST without a key: one call"
    );

    let mut headers = HeaderMap::new();
    headers.insert("Idempotency-Key", "order-17");
    let reply = send(&client, subject.clone(), headers).await;
    assert_eq!(status(&reply), "503");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "with a key: all five attempts"
    );
    assert_eq!(upstream.seen()[5].headers["idempotency-key"], "order-17");
}

#[tokio::test]
async fn hanging_upstream_times_out_each_attempt_and_answers_504_in_time() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        respond(200, "never")
    })
    .await;
    let extra = "timeout = \"200ms\"\ntotal_timeout = \"1s\"\n[routes.retry]\nmax_attempts = 3\ninitial_interval = \"10ms\"\njitter = 0.0\n";
    let (subject, _ricochet, client) = start(&upstream, "hang", "GET", extra).await;

    let started = Instant::now();
    let request = async_nats::Request::new().timeout(Some(Duration::from_secs(3)));
    let reply = client
        .send_request(subject.clone(), request)
        .await
        .expect("504 before the caller gives up");
    assert_eq!(status(&reply), "504");
    assert_eq!(header(&reply, "Ricochet-Error").as_deref(), Some("timeout"));
    assert_eq!(upstream.calls(), 3, "every attempt timed out");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A caller's shorter deadline (Ricochet-Timeout) cuts the retries short.
    let mut headers = HeaderMap::new();
    headers.insert("Ricochet-Timeout", "300ms");
    let reply = send(&client, subject.clone(), headers).await;
    assert_eq!(status(&reply), "504");
    assert!(
        upstream.calls() <= 5,
        "at most two attempts fit in 300 ms: {}",
        upstream.calls()
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let record = times.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = Upstream::start(move |_| {
        record.lock().unwrap().push(Instant::now());
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                http::Response::builder()
                    .status(503)
                    .header("retry-after", "1")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        b"later",
                    )))
                    .unwrap()
            } else {
                respond(200, "now")
            }
        }
    })
    .await;
    let (subject, _ricochet, client) = start(&upstream, "after", "GET", FAST_RETRIES).await;

    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(status(&reply), "200");
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_secs(1),
        "waited {:?}",
        times[1] - times[0]
    );
}

#[tokio::test]
async fn breaker_opens_sheds_load_and_closes_after_recovery() {
    let (upstream, healthy) = Upstream::down_until_healthy().await;
    let extra = "[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nconsecutive_failures = 3\nbreak_duration = \"500ms\"\n";
    let (subject, ricochet, client) = start(&upstream, "breaker", "GET", extra).await;

    for _ in 0..3 {
        let reply = send(&client, subject.clone(), HeaderMap::new()).await;
        assert_eq!(reply.payload.as_ref(), b"down", "the service's own 503");
    }
    for _ in 0..10 {
        let reply = send(&client, subject.clone(), HeaderMap::new()).await;
        assert_eq!(status(&reply), "503");
        assert_eq!(
            header(&reply, "Nats-Service-Error").as_deref(),
            Some("circuit open")
        );
        assert_eq!(
            header(&reply, "Ricochet-Error").as_deref(),
            Some("circuit_open")
        );
        assert!(header(&reply, "Retry-After").is_some());
    }
    assert_eq!(upstream.calls(), 3, "no calls while open");
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_circuit_state", &["route=\"flaky\""]),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_errors_total",
            &["kind=\"circuit_open\""]
        ),
        10.0
    );

    healthy.store(true, Ordering::SeqCst);
    eventually(
        Duration::from_secs(3),
        "replies flowing again after the break",
        || async {
            let reply = send(&client, subject.clone(), HeaderMap::new()).await;
            holds(status(&reply) == "200", status(&reply))
        },
    )
    .await;
    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(status(&reply), "200");
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_circuit_state", &["route=\"flaky\""]),
        0.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_circuit_transitions_total",
            &["route=\"flaky\"", "to=\"closed\""]
        ),
        1.0
    );
    assert!(ricochet.logs().contains("circuit breaker opened"));
}

#[tokio::test]
async fn rate_limit_reject_mode_answers_429_beyond_the_rate() {
    let (upstream, calls) = scripted(|_| respond(200, "ok")).await;
    let extra = "[routes.rate_limit]\nmessages_per_second = 5\nmode = \"reject\"\n";
    let (subject, _ricochet, client) = start(&upstream, "reject", "GET", extra).await;

    let requests = (0..20).map(|_| send(&client, subject.clone(), HeaderMap::new()));
    let replies = futures::future::join_all(requests).await;
    let ok = replies.iter().filter(|r| status(r) == "200").count();
    let limited: Vec<_> = replies.iter().filter(|r| status(r) == "429").collect();
    assert!(
        (5..=7).contains(&ok),
        "burst of 5 (+1 per 200 ms elapsed), got {ok}"
    );
    assert_eq!(ok + limited.len(), 20);
    assert!(limited
        .iter()
        .all(|r| header(r, "Ricochet-Error").as_deref() == Some("rate_limited")));
    assert_eq!(calls.load(Ordering::SeqCst), ok);
}

#[tokio::test]
async fn rate_limit_wait_mode_delivers_everything_at_the_rate() {
    const RATE: usize = 20;
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let record = times.clone();
    let upstream = Upstream::start(move |_| {
        record.lock().unwrap().push(Instant::now());
        async { respond(200, "ok") }
    })
    .await;
    let extra = format!(
        "[routes.rate_limit]\nmessages_per_second = {RATE}\nburst_messages = 1\nmode = \"wait\"\n"
    );
    let (subject, _ricochet, client) = start(&upstream, "wait", "GET", &extra).await;

    let requests = (0..30).map(|_| send(&client, subject.clone(), HeaderMap::new()));
    let replies = futures::future::join_all(requests).await;
    assert!(
        replies.iter().all(|r| status(r) == "200"),
        "wait mode answers every request"
    );
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 30);
    let busiest_second = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t - *start < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest_second <= RATE + 1,
        "{busiest_second} calls within one second"
    );
}

#[tokio::test]
async fn readiness_fails_while_every_circuit_is_open_and_says_why_in_json() {
    let (upstream, healthy) = Upstream::down_until_healthy().await;
    let breaker = "[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nconsecutive_failures = 2\nbreak_duration = \"1500ms\"\n";
    let (subject, ricochet, client) = start(&upstream, "ready", "GET", breaker).await;
    let (status, body) = ricochet.admin_get("/readyz").await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(report["ready"], true);
    assert_eq!(report["routes"][0]["route"], "flaky");
    assert_eq!(report["routes"][0]["source"], "nats");
    assert_eq!(report["routes"][0]["circuit"], "closed");

    for _ in 0..2 {
        send(&client, subject.clone(), HeaderMap::new()).await;
    }
    let why = ricochet.wait_unready(Duration::from_secs(2)).await;
    let report: serde_json::Value = serde_json::from_str(&why).unwrap();
    assert_eq!(report["ready"], false);
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{report}"
    );
    assert_eq!(report["routes"][0]["circuit"], "open");

    // Ready again once the break is over, so the probe can come.
    healthy.store(true, Ordering::SeqCst);
    ricochet.wait_ready().await;
    let reply = send(&client, subject.clone(), HeaderMap::new()).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
}
