//! AMQP (RabbitMQ) end to end: ricochet consumes a queue of the local RabbitMQ, and an
//! independent client (`common/amqp_client.py`, Python's pika) sends RPC requests with
//! `reply_to` and `correlation_id` and reads replies and dead letters. Every test uses
//! queues and exchanges of its own (random names) and deletes them at the end.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::amqp::{self, client};
use common::*;
use serde_json::{json, Value};

/// A test's names: the request queue and its retry queue (100 ms, the route default here).
struct Names {
    queue: String,
}

impl Names {
    fn new(tag: &str) -> Self {
        Self {
            queue: unique(&format!("ricochet.test.{tag}.")),
        }
    }

    fn retry(&self, ms: u64) -> String {
        format!("{}.ricochet-retry.{ms}ms", self.queue)
    }

    async fn depth(&self, queue: &str) -> Option<u64> {
        let answer = client(json!({"op": "depth", "queues": [queue]})).await;
        answer[queue]["messages"].as_u64()
    }

    async fn delete(&self, more_queues: &[&str], exchanges: &[&str]) {
        let retry = self.retry(100);
        let mut queues = vec![self.queue.as_str(), retry.as_str()];
        queues.extend_from_slice(more_queues);
        let queues: Vec<&str> = queues;
        client(json!({"op": "delete", "queues": queues, "exchanges": exchanges})).await;
    }
}

fn rpc(routing_key: &str, count: usize, extra: Value) -> Value {
    let mut command =
        json!({"op": "rpc", "routing_key": routing_key, "count": count, "timeout": 30});
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        command[key] = value;
    }
    command
}

fn header<'a>(reply: &'a Value, name: &str) -> Option<&'a str> {
    reply["headers"][name].as_str()
}

async fn start(upstream: &Upstream, routes: &str) -> Ricochet {
    let admin = free_port();
    Ricochet::start(&config(&upstream.base_url(), admin, routes), admin).await
}

#[tokio::test]
async fn an_rpc_request_is_answered_on_its_reply_to_with_its_correlation_id() {
    let names = Names::new("rpc");
    let upstream = Upstream::echo().await;
    let routes = amqp::route("rpc", &names.queue, &names.queue, "", "");
    let ricochet = start(&upstream, &routes).await;

    let answer = client(rpc(
        &names.queue,
        3,
        json!({"headers": {"x-tenant": "acme"}, "content_type": "text/plain", "body": "hello", "prefix": "c"}),
    ))
    .await;
    assert_eq!(answer["answered"], 3, "{answer}");
    assert_eq!(answer["duplicates"], 0);
    let reply = &answer["replies"][0];
    assert!(reply["correlation_id"].as_str().unwrap().starts_with("c-"));
    assert_eq!(reply["body"], "hello");
    assert_eq!(header(reply, "Ricochet-Status"), Some("200"));
    assert_eq!(header(reply, "x-echo-path"), Some("/work"));
    assert_eq!(reply["content_type"], "text/plain");
    assert_eq!(
        reply["delivery_mode"], 2,
        "a reply to a queue is persistent"
    );

    assert_eq!(upstream.calls(), 3);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert_eq!(seen.headers["content-type"], "text/plain");
    let key = seen.headers["idempotency-key"].to_str().unwrap();
    assert!(
        key.starts_with("m-c-"),
        "the message id is the idempotency key: {key}"
    );
    // The request queue is left empty: every request acked after its reply.
    assert_eq!(names.depth(&names.queue).await, Some(0));
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_messages_received_total",
            &["source=\"amqp\""]
        ),
        3.0
    );
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"ack\""]),
        3.0
    );
    names.delete(&[], &[]).await;
}

/// `rabbitmqctl list_consumers` of `queue`: (consumer tag, prefetch count, ack required).
fn consumers_of(queue: &str) -> Vec<(String, u64, bool)> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "queue_name",
            "consumer_tag",
            "prefetch_count",
            "ack_required",
            "--formatter",
            "json",
            "-q",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing: Value = serde_json::from_slice(&output.stdout).expect("JSON from rabbitmqctl");
    (listing.as_array().unwrap().iter())
        .filter(|c| c["queue_name"] == queue)
        .map(|c| {
            let tag = c["consumer_tag"].as_str().unwrap_or_default().to_string();
            (
                tag,
                c["prefetch_count"].as_u64().unwrap_or(0),
                c["ack_required"] == true,
            )
        })
        .collect()
}

#[tokio::test]
async fn an_existing_queue_is_used_as_it_is_with_the_routes_prefetch_and_tag() {
    let names = Names::new("existing");
    // Declared by someone else, with arguments ricochet does not ask for.
    client(json!({"op": "declare", "queues": [names.queue], "arguments": {"x-max-length": 1000}}))
        .await;
    let upstream = Upstream::echo().await;
    let routes = amqp::route(
        "existing",
        &names.queue,
        &names.queue,
        "max_in_flight = 7",
        "consumer_tag = \"sidecar-1\"",
    );
    let _ricochet = start(&upstream, &routes).await;
    let answer = client(rpc(&names.queue, 2, json!({}))).await;
    assert_eq!(answer["answered"], 2, "{answer}");
    let consumers = consumers_of(&names.queue);
    assert_eq!(
        consumers,
        vec![("sidecar-1".to_string(), 7, true)],
        "one consumer, prefetch = max_in_flight, explicit acks"
    );
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn a_quorum_queue_is_declared_as_asked_and_served() {
    let names = Names::new("quorum");
    let upstream = Upstream::echo().await;
    let routes = amqp::route(
        "quorum",
        &names.queue,
        &names.queue,
        "",
        "queue_type = \"quorum\"",
    );
    let _ricochet = start(&upstream, &routes).await;
    let answer = client(rpc(&names.queue, 3, json!({}))).await;
    assert_eq!(answer["answered"], 3, "{answer}");
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "type", "durable", "-q"])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(names.queue.as_str()));
    let fields: Vec<&str> = line
        .expect("the queue is listed")
        .split_whitespace()
        .collect();
    assert_eq!(fields[1..], ["quorum", "true"], "{listing}");
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn direct_reply_to_is_answered() {
    let names = Names::new("direct");
    let upstream = Upstream::echo().await;
    let routes = amqp::route("direct", &names.queue, &names.queue, "", "");
    let _ricochet = start(&upstream, &routes).await;

    let answer = client(rpc(&names.queue, 5, json!({"direct": true, "body": "x"}))).await;
    assert_eq!(answer["answered"], 5, "{answer}");
    assert_eq!(answer["duplicates"], 0);
    assert_eq!(
        header(&answer["replies"][0], "Ricochet-Status"),
        Some("200")
    );
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn a_reply_to_a_queue_that_does_not_exist_is_counted_and_the_request_finished() {
    let names = Names::new("noqueue");
    let upstream = Upstream::echo().await;
    let routes = amqp::route("noqueue", &names.queue, &names.queue, "", "");
    let ricochet = start(&upstream, &routes).await;
    let missing = unique("ricochet.test.nobody.");
    let answer = client(rpc(
        &names.queue,
        1,
        json!({"reply_to": missing, "timeout": 1}),
    ))
    .await;
    assert_eq!(answer["answered"], 0);
    eventually(
        Duration::from_secs(5),
        "the failed publish counted",
        || async {
            let metrics = ricochet.metrics().await;
            let failed = metric(
                &metrics,
                "ricochet_messages_handled_total",
                &["outcome=\"publish_failed\""],
            );
            holds(failed == 1.0, format!("publish_failed {failed}"))
        },
    )
    .await;
    assert_eq!(upstream.calls(), 1, "called once, never redelivered");
    assert_eq!(
        names.depth(&names.queue).await,
        Some(0),
        "the request is finished"
    );
    assert!(ricochet.logs().contains("no queue named"));
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn a_topic_exchange_binding_routes_by_the_subject_pattern_and_its_captures() {
    let names = Names::new("topic");
    let exchange = unique("ricochet.test.ex.");
    client(json!({"op": "declare", "exchanges": [[exchange, "topic"]]})).await;
    let upstream = Upstream::echo().await;
    let routes = amqp::route(
        "orders",
        "orders.{id}.get",
        &names.queue,
        "",
        &format!("exchange = \"{exchange}\""),
    )
    .replace(
        "method = \"POST\"\npath = \"/work\"",
        "method = \"GET\"\npath = \"/orders/{id}\"",
    );
    let _ricochet = start(&upstream, &routes).await;

    let answer = client(rpc("orders.42.get", 1, json!({"exchange": exchange}))).await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(
        header(&answer["replies"][0], "x-echo-path"),
        Some("/orders/42")
    );
    // A routing key the binding does not match never reaches the queue.
    let stray = client(rpc(
        "orders.42.delete",
        1,
        json!({"exchange": exchange, "timeout": 1}),
    ))
    .await;
    assert_eq!(stray["answered"], 0);
    assert_eq!(upstream.calls(), 1);
    names.delete(&[], &[&exchange]).await;
}

#[tokio::test]
async fn an_oversized_request_is_refused_and_dead_lettered_with_the_reason_headers() {
    let names = Names::new("poison");
    let (dlx, dlq) = (unique("ricochet.test.dlx."), unique("ricochet.test.dlq."));
    client(json!({"op": "declare", "exchanges": [[dlx, "fanout"]], "queues": [dlq], "bindings": [[dlq, dlx, ""]]})).await;
    let upstream = Upstream::echo().await;
    let routes = amqp::route(
        "poison",
        &names.queue,
        &names.queue,
        "max_payload = 10",
        &format!("dead_letter_exchange = \"{dlx}\""),
    );
    let ricochet = start(&upstream, &routes).await;

    let body = "x".repeat(100);
    let answer = client(rpc(
        &names.queue,
        1,
        json!({"body": body, "headers": {"x-tenant": "acme"}}),
    ))
    .await;
    assert_eq!(answer["answered"], 1, "{answer}");
    let reply = &answer["replies"][0];
    assert_eq!(header(reply, "Ricochet-Status"), Some("413"));
    assert_eq!(header(reply, "Nats-Service-Error-Code"), Some("413"));

    let letters = client(json!({"op": "get", "queue": dlq, "count": 1})).await;
    let letter = &letters["messages"][0];
    assert_eq!(letter["body"], body.as_str(), "the request, unchanged");
    assert_eq!(
        header(letter, "Ricochet-Dead-Letter-Reason"),
        Some("payload_too_large")
    );
    assert_eq!(header(letter, "Ricochet-Last-Status"), Some("413"));
    assert_eq!(header(letter, "Ricochet-Route"), Some("poison"));
    assert_eq!(
        header(letter, "Ricochet-Original-Queue"),
        Some(names.queue.as_str())
    );
    assert_eq!(header(letter, "x-tenant"), Some("acme"));
    assert!(
        letter["correlation_id"].as_str().is_some(),
        "properties kept"
    );
    assert_eq!(upstream.calls(), 0, "the service never sees it");
    assert_eq!(names.depth(&names.queue).await, Some(0), "not requeued");
    let metrics = ricochet.metrics().await;
    assert_eq!(metric(&metrics, "ricochet_dead_letters_total", &[]), 1.0);
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"term\""]),
        1.0
    );
    names.delete(&[&dlq], &[&dlx]).await;
}

#[tokio::test]
async fn an_invalid_request_gets_the_400_with_its_violations_and_is_dead_lettered() {
    let names = Names::new("invalid");
    let (dlx, dlq) = (unique("ricochet.test.dlx."), unique("ricochet.test.dlq."));
    client(json!({"op": "declare", "exchanges": [[dlx, "fanout"]], "queues": [dlq], "bindings": [[dlq, dlx, ""]]})).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "minimum": 1}}}"#).unwrap();
    let upstream = Upstream::echo().await;
    let routes = amqp::route(
        "invalid",
        &names.queue,
        &names.queue,
        "",
        &format!("dead_letter_exchange = \"{dlx}\"\n[routes.validate]\nformat = \"json_schema\"\nschema = \"{}\"", schema.display()),
    );
    let _ricochet = start(&upstream, &routes).await;

    let valid = client(rpc(
        &names.queue,
        1,
        json!({"body": r#"{"qty": 2}"#, "content_type": "application/json"}),
    ))
    .await;
    assert_eq!(
        header(&valid["replies"][0], "Ricochet-Status"),
        Some("200"),
        "{valid}"
    );
    let invalid = client(rpc(
        &names.queue,
        1,
        json!({"body": r#"{"qty": 0}"#, "content_type": "application/json"}),
    ))
    .await;
    let reply = &invalid["replies"][0];
    assert_eq!(header(reply, "Ricochet-Status"), Some("400"), "{invalid}");
    assert_eq!(header(reply, "Ricochet-Error"), Some("validation"));
    let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["violations"][0]["instance_path"], "/qty", "{body}");
    assert_eq!(
        upstream.calls(),
        1,
        "only the valid request reaches the service"
    );
    let letters = client(json!({"op": "get", "queue": dlq, "count": 1})).await;
    let letter = &letters["messages"][0];
    assert_eq!(
        header(letter, "Ricochet-Dead-Letter-Reason"),
        Some("validation"),
        "{letters}"
    );
    assert!(header(letter, "Ricochet-Dead-Letter-Detail").is_some_and(|d| d.contains("/qty")));
    assert_eq!(names.depth(&names.queue).await, Some(0));
    names.delete(&[&dlq], &[&dlx]).await;
}

#[tokio::test]
async fn retryable_failures_are_redelivered_after_the_delay_then_answered_once() {
    let names = Names::new("retry");
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = Upstream::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 | 1 => respond(503, "down"),
                _ => respond(200, "ok"),
            }
        }
    })
    .await;
    let routes = amqp::route(
        "retry",
        &names.queue,
        &names.queue,
        "[routes.retry]\nmax_attempts = 1",
        "",
    );
    let ricochet = start(&upstream, &routes).await;

    let started = std::time::Instant::now();
    let answer = client(rpc(&names.queue, 1, json!({"linger": 0.5}))).await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(answer["duplicates"], 0, "failed deliveries get no reply");
    assert_eq!(
        header(&answer["replies"][0], "Ricochet-Status"),
        Some("200")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "two 100 ms delays"
    );
    assert_eq!(upstream.calls(), 3);
    // The retry copies kept the request's routing key and counted its deliveries.
    let seen = upstream.seen();
    assert!(
        seen.iter()
            .all(|s| s.headers.get("ricochet-deliveries").is_none()),
        "ricochet's own headers stay out of HTTP"
    );
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"nak\""]),
        2.0
    );
    assert_eq!(
        metric(&metrics, "ricochet_settlements_total", &["action=\"ack\""]),
        1.0
    );
    assert_eq!(
        metric(&metrics, "ricochet_redeliveries_total", &[]),
        2.0,
        "deliveries 2 and 3"
    );
    assert_eq!(names.depth(&names.retry(100)).await, Some(0));
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn a_request_failing_every_delivery_is_dead_lettered_after_max_deliver() {
    let names = Names::new("exhaust");
    let (dlx, dlq) = (unique("ricochet.test.dlx."), unique("ricochet.test.dlq."));
    client(json!({"op": "declare", "exchanges": [[dlx, "fanout"]], "queues": [dlq], "bindings": [[dlq, dlx, ""]]})).await;
    let upstream = Upstream::start(|_| async { respond(500, "broken") }).await;
    let routes = amqp::route(
        "exhaust",
        &names.queue,
        &names.queue,
        "[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nenabled = false",
        &format!("dead_letter_exchange = \"{dlx}\"\nmax_deliver = 3"),
    );
    let _ricochet = start(&upstream, &routes).await;

    let answer = client(rpc(&names.queue, 1, json!({}))).await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(
        header(&answer["replies"][0], "Ricochet-Status"),
        Some("500"),
        "the caller gets the last answer"
    );
    let letters = client(json!({"op": "get", "queue": dlq, "count": 1})).await;
    let letter = &letters["messages"][0];
    assert_eq!(
        header(letter, "Ricochet-Dead-Letter-Reason"),
        Some("max_deliver")
    );
    assert_eq!(header(letter, "Ricochet-Delivery-Count"), Some("3"));
    assert_eq!(header(letter, "Ricochet-Last-Status"), Some("500"));
    assert_eq!(
        header(letter, "Ricochet-Original-Routing-Key"),
        Some(names.queue.as_str())
    );
    assert_eq!(
        header(letter, "Ricochet-Deliveries"),
        None,
        "retry bookkeeping is not copied"
    );
    assert_eq!(upstream.calls(), 3);
    names.delete(&[&dlq], &[&dlx]).await;
}

#[tokio::test]
async fn at_most_once_acks_on_receipt_and_never_redelivers() {
    let names = Names::new("amo");
    let upstream = Upstream::start(|_| async { respond(503, "down") }).await;
    let routes = amqp::route(
        "amo",
        &names.queue,
        &names.queue,
        "delivery = \"at_most_once\"\n[routes.retry]\nmax_attempts = 1",
        "",
    );
    let _ricochet = start(&upstream, &routes).await;
    let answer = client(rpc(&names.queue, 1, json!({"linger": 0.5}))).await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(
        header(&answer["replies"][0], "Ricochet-Status"),
        Some("503")
    );
    assert_eq!(upstream.calls(), 1);
    assert_eq!(names.depth(&names.queue).await, Some(0));
    assert_eq!(names.depth(&names.retry(100)).await, Some(0));
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn an_open_breaker_stops_consumption_until_the_service_recovers() {
    let names = Names::new("breaker");
    let (upstream, healthy) = Upstream::down_until_healthy().await;
    let routes = amqp::route(
        "breaker",
        &names.queue,
        &names.queue,
        "max_in_flight = 1\n[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nconsecutive_failures = 3\nbreak_duration = \"2s\"",
        "max_deliver = 50",
    );
    let ricochet = start(&upstream, &routes).await;
    let requests = tokio::spawn(client(rpc(&names.queue, 20, json!({"timeout": 40}))));

    eventually(Duration::from_secs(10), "the breaker open", || async {
        let state = metric(&ricochet.metrics().await, "ricochet_circuit_state", &[]);
        holds(state == 1.0, format!("state {state}"))
    })
    .await;
    let calls = upstream.calls();
    assert_eq!(calls, 3, "three failures open it");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(upstream.calls(), calls, "no calls while open");
    let waiting = names.depth(&names.queue).await.unwrap();
    assert!(waiting >= 15, "the requests wait in the queue: {waiting}");

    healthy.store(true, Ordering::SeqCst);
    let answer = requests.await.unwrap();
    assert_eq!(answer["answered"], 20, "{answer}");
    assert_eq!(answer["duplicates"], 0, "{answer}");
    assert!(
        answer["replies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| header(r, "Ricochet-Status") == Some("200")),
        "no error replies for redelivered requests: {answer}"
    );
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn sigterm_finishes_and_acknowledges_in_flight_requests() {
    let names = Names::new("term");
    let upstream = Upstream::slow_echo(Duration::from_millis(500)).await;
    let routes = amqp::route("term", &names.queue, &names.queue, "max_in_flight = 4", "");
    let mut ricochet = start(&upstream, &routes).await;
    let requests = tokio::spawn(client(rpc(&names.queue, 10, json!({"timeout": 5}))));
    upstream.wait_for_calls(4).await;
    ricochet.signal("-TERM");
    let status = ricochet.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit 0: {status:?}");
    let answer = requests.await.unwrap();
    let answered = answer["answered"].as_u64().unwrap();
    assert!(
        answered >= 4,
        "the requests in flight are answered: {answer}"
    );
    assert_eq!(answer["duplicates"], 0);
    // The rest wait in the queue for the next consumer: nothing lost, nothing acked unanswered.
    let left = names.depth(&names.queue).await.unwrap();
    assert_eq!(answered + left, 10, "answered {answered}, left {left}");
    assert!(ricochet.logs().contains("AMQP intake stopped"));
    names.delete(&[], &[]).await;
}

/// 2,000 requests through a slow-ish service; `fault` runs once 300 have been called.
async fn under_fault(tag: &str, fault: impl AsyncFnOnce(&mut Ricochet, &str)) -> Value {
    const TOTAL: usize = 2000;
    let names = Names::new(tag);
    let upstream = Upstream::slow_echo(Duration::from_millis(2)).await;
    let route = format!("fault-{tag}");
    let routes = amqp::route(
        &route,
        &names.queue,
        &names.queue,
        "max_in_flight = 32",
        "max_deliver = 100",
    );
    let mut ricochet = start(&upstream, &routes).await;
    let requests = tokio::spawn(client(rpc(
        &names.queue,
        TOTAL,
        json!({"timeout": 60, "rate": 1000}),
    )));
    upstream
        .wait_for_calls_within(300, Duration::from_secs(30))
        .await;
    let at_fault = upstream.calls();
    fault(&mut ricochet, &route).await;
    assert!(
        at_fault < TOTAL / 2,
        "most requests come after the fault: {at_fault} called before"
    );
    let answer = requests.await.unwrap();
    println!(
        "{tag}: {} requests, {at_fault} called at the fault, {} answered, {} duplicates, {} s, {} upstream calls",
        answer["sent"], answer["answered"], answer["duplicates"], answer["seconds"], upstream.calls()
    );
    assert_eq!(
        answer["answered"], TOTAL,
        "every request answered: {answer}"
    );
    assert!(answer["unknown"].as_array().unwrap().is_empty());
    let duplicates = answer["duplicates"].as_u64().unwrap();
    assert!(
        duplicates <= 32,
        "only the prefetch window in flight at the fault is repeated: {duplicates}"
    );
    assert_eq!(names.depth(&names.queue).await, Some(0));
    names.delete(&[], &[]).await;
    answer
}

#[tokio::test]
async fn a_crash_mid_run_loses_no_request() {
    under_fault("crash", async |ricochet, _| {
        let (toml, admin) = (
            std::fs::read_to_string(ricochet.config_path()).unwrap(),
            ricochet.admin_port,
        );
        ricochet.signal("-KILL");
        ricochet.wait_exit(Duration::from_secs(10)).await;
        *ricochet = Ricochet::start(&toml, admin).await;
    })
    .await;
}

#[tokio::test]
async fn a_broker_connection_cut_mid_run_loses_no_request() {
    under_fault("cut", async |ricochet, route| {
        let pid = amqp::connection_of(route).expect("ricochet's connection is listed");
        let closed = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "test: connection cut", "-q"])
            .status()
            .unwrap();
        assert!(closed.success());
        eventually(Duration::from_secs(10), "a new connection", || async {
            holds(
                amqp::connection_of(route).is_some_and(|p| p != pid),
                "the old one",
            )
        })
        .await;
        assert!(ricochet.logs().contains("AMQP connection lost"));
        ricochet.wait_ready().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_mid_run_loses_and_repeats_no_request() {
    let answer = under_fault("reload", async |ricochet, _| {
        // The route changes (a smaller prefetch window): its consumer is replaced.
        let toml = std::fs::read_to_string(ricochet.config_path()).unwrap();
        let changed = toml.replace("max_in_flight = 32", "max_in_flight = 16");
        assert_ne!(toml, changed);
        ricochet.reload(&changed, "applied").await;
        assert!(ricochet.logs().contains("AMQP intake stopped"));
    })
    .await;
    assert_eq!(
        answer["duplicates"], 0,
        "a reload repeats nothing: {answer}"
    );
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .arg("-q")
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test]
async fn credentials_come_from_a_password_file_and_never_reach_the_logs() {
    let names = Names::new("creds");
    let user = unique("ricochet-test-");
    let password = unique("pw-");
    rabbitmqctl(&["add_user", &user, &password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let upstream = Upstream::echo().await;
    let url = "amqp://127.0.0.1:5672/%2f";
    let routes = amqp::route(
        "creds",
        &names.queue,
        &names.queue,
        "",
        &format!("user = \"{user}\"\npassword_file = \"{}\"", file.display()),
    )
    .replace(
        &format!("url = \"{}\"", amqp::url()),
        &format!("url = \"{url}\""),
    );
    let ricochet = start(&upstream, &routes).await;
    let answer = client(rpc(&names.queue, 2, json!({}))).await;
    assert_eq!(answer["answered"], 2, "{answer}");
    assert!(
        !ricochet.logs().contains(&password),
        "the password is in no log line"
    );
    drop(ricochet);
    rabbitmqctl(&["delete_user", &user]);
    names.delete(&[], &[]).await;
}

#[tokio::test]
async fn a_wrong_password_keeps_ricochet_unready_with_a_clear_error_and_no_secret() {
    let names = Names::new("badpw");
    let secret = unique("wrong-");
    let url = format!("amqp://guest:{secret}@127.0.0.1:5672/%2f");
    let routes = amqp::route("badpw", &names.queue, &names.queue, "", "").replace(
        &format!("url = \"{}\"", amqp::url()),
        &format!("url = \"{url}\""),
    );
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let ricochet = Ricochet::spawn(&config(&upstream.base_url(), admin, &routes), admin);
    eventually(Duration::from_secs(10), "the refusal logged", || async {
        let logs = ricochet.logs();
        holds(logs.contains("cannot set up the AMQP consumer"), logs)
    })
    .await;
    let why = ricochet.wait_unready(Duration::from_secs(5)).await;
    let logs = ricochet.logs();
    println!(
        "unready: {why}; log: {}",
        logs.lines()
            .find(|l| l.contains("cannot set up"))
            .unwrap_or("")
    );
    assert!(
        logs.contains("***@127.0.0.1:5672"),
        "the URL is logged redacted"
    );
    assert!(
        !logs.contains(&secret) && !why.contains(&secret),
        "the password is in no log line"
    );
    // `/readyz` names the route and the queue it waits for, as the log does.
    let readyz: Value = serde_json::from_str(&why).unwrap();
    let reason = readyz["reason"].as_str().unwrap();
    assert!(
        reason.contains("route \"badpw\": cannot set up the AMQP consumer")
            && reason.contains(&format!("queue {:?}", names.queue)),
        "{reason}"
    );
}

/// A table's entries as `(name, type, raw bytes)` (see `amqp_client.py`), sorted, without
/// ricochet's own.
fn entries(table: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = (table.as_array().unwrap().iter())
        .map(|e| (e[0].to_string(), e[1].to_string(), e[3].to_string()))
        .filter(|(name, _, _)| !name.starts_with("\"Ricochet-"))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_dead_letter_after_retries_keeps_the_request_header_table_and_its_first_exchange() {
    let names = Names::new("keep");
    let exchange = unique("ricochet.test.ex.");
    let (dlx, dlq) = (unique("ricochet.test.dlx."), unique("ricochet.test.dlq."));
    client(json!({"op": "declare", "exchanges": [[exchange, "topic"], [dlx, "fanout"]], "queues": [dlq], "bindings": [[dlq, dlx, ""]]})).await;
    let upstream = Upstream::start(|_| async { respond(500, "broken") }).await;
    let subject = format!("{}.{{id}}", names.queue);
    let routes = amqp::route(
        "keep",
        &subject,
        &names.queue,
        "[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nenabled = false\n[routes.request_headers]\ndeny = [\"x-bin\", \"x-tab\", \"x-arr\"]",
        &format!("exchange = \"{exchange}\"\ndead_letter_exchange = \"{dlx}\"\nmax_deliver = 3"),
    );
    let _ricochet = start(&upstream, &routes).await;

    // The issue's example and more: a field of every kind that has no text form, or a
    // text form that is not its type.
    let table = json!([
        ["X-Num", "I", 7],
        ["X-Small", "u", 7],
        ["X-Bin", "x", {"hex": "0102"}],
        ["X-Tab", "F", [["k", "S", "v"], ["n", "l", -1]]],
        ["X-Arr", "A", [["t", true], ["d", 0.5]]],
        ["X-Dec", "D", [2, 150]],
        ["X-Void", "V", null],
        ["X-Text", "S", "plain"],
        ["Content-Type", "S", "text/x-header"]
    ]);
    let routing_key = format!("{}.7", names.queue);
    let answer = client(rpc(
        &routing_key,
        1,
        json!({"exchange": exchange, "table": table}),
    ))
    .await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(
        header(&answer["replies"][0], "Ricochet-Status"),
        Some("500")
    );
    let letters = client(json!({"op": "get", "queue": dlq, "count": 1})).await;
    let letter = &letters["messages"][0];
    assert_eq!(
        header(letter, "Ricochet-Dead-Letter-Reason"),
        Some("max_deliver"),
        "{letters}"
    );
    // Every name, type and value as the caller sent them, through two retry copies.
    assert_eq!(entries(&letter["table"]), entries(&answer["sent_table"]));
    assert_eq!(
        header(letter, "Ricochet-Original-Exchange"),
        Some(exchange.as_str()),
        "the exchange it was first published to, not the retry queue's"
    );
    assert_eq!(
        header(letter, "Ricochet-Original-Routing-Key"),
        Some(routing_key.as_str())
    );
    assert_eq!(header(letter, "Ricochet-Delivery-Count"), Some("3"));
    for bookkeeping in [
        "Ricochet-Deliveries",
        "Ricochet-Routing-Key",
        "Ricochet-Exchange",
    ] {
        assert_eq!(header(letter, bookkeeping), None, "{bookkeeping}");
    }
    // Each delivery reached the service with the same text headers.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.headers["x-num"], "7");
        assert_eq!(s.headers["x-small"], "7");
        assert_eq!(s.headers["x-dec"], "1.50");
        assert_eq!(s.headers["x-void"], "");
        assert!(s.headers.get("x-bin").is_none() && s.headers.get("x-tab").is_none());
    }
    names.delete(&[&dlq], &[&exchange, &dlx]).await;
}
