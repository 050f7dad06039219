//! The one delivery path, against a scripted service and a scripted broker: what is
//! published and settled, in which order, and what the metrics count, for every action of
//! the settlement policy.

use std::sync::Mutex;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::lifetime::parse_timeout;
use super::*;
use crate::message::{
    Accepted, Cause, Confirmed, DeadLetter, DeadLettered, Inbound, Redelivered, Settle,
    SettleError, Undelivered,
};
use crate::settings::load_str;

#[test]
fn caller_timeouts_parse() {
    assert_eq!(parse_timeout("1500"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_timeout(" 250ms "), Some(Duration::from_millis(250)));
    assert_eq!(parse_timeout("soon"), None);
}

/// A service answering every request with `status`, body "body" and a `correlation-id` of
/// its own (which the reply must not carry next to the request's).
async fn service(status: u16) -> u16 {
    super::scripted::service(move |_| {
        format!("HTTP/1.1 {status} X\r\ncorrelation-id: service\r\ncontent-length: 4\r\n\r\nbody")
    })
    .await
}

/// A broker that records what the pipeline asked of it, and answers as scripted.
#[derive(Default)]
struct Broker {
    calls: Mutex<Vec<String>>,
    replies: Mutex<Vec<Reply>>,
    reply_result: Option<Undelivered>,
    dead_letter_result: Option<Undelivered>,
    /// The settlement on receipt (at-most-once) fails.
    accept_fails: bool,
    /// The broker's size limit for replies.
    limit: Option<usize>,
}

impl Broker {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Settle for Broker {
    fn too_large(&self, _: &str, reply: &Reply) -> Option<(usize, usize, &'static str)> {
        let limit = self.limit?;
        (reply.body.len() > limit).then_some((reply.body.len(), limit, "the test broker's limit"))
    }

    fn destination_problem(&self, destination: &str) -> Option<&'static str> {
        destination.contains(' ').then_some("has a space")
    }

    async fn accept(&self) -> Result<Accepted, SettleError> {
        self.note("accept".into());
        match self.accept_fails {
            true => Err(SettleError::ConnectionLost),
            false => Ok(Accepted::Settled),
        }
    }

    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        self.note(format!("reply {destination} {}", reply.status.as_u16()));
        self.replies.lock().unwrap().push(reply.clone());
        self.reply_result.clone().map_or(Ok(Confirmed::Now), Err)
    }

    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<DeadLettered, Undelivered> {
        self.note(format!(
            "dead_letter {} {} {}",
            letter.reason, letter.last_status, letter.delivered
        ));
        let published = DeadLettered::Published(Confirmed::Now);
        self.dead_letter_result.clone().map_or(Ok(published), Err)
    }

    async fn ack(&self) -> Result<Confirmed, SettleError> {
        self.note("ack".into());
        Ok(Confirmed::Now)
    }

    async fn redeliver(&self, delay: Duration) -> Result<Redelivered, SettleError> {
        self.note(format!("redeliver {delay:?}"));
        // As Kafka does: the delay comes back to the source.
        Ok(Redelivered::Local(delay))
    }

    async fn terminate(&self) -> Result<Confirmed, SettleError> {
        self.note("term".into());
        Ok(Confirmed::Now)
    }
}

/// A pipeline with one JetStream-like route (3 deliveries, delays 1s, 5s) in front of a
/// service answering `status`, its metrics recorded by a recorder of its own.
async fn pipeline(status: u16, delivery: &str) -> (Pipeline, Snapshotter) {
    pipeline_at(service(status).await, delivery, "").await
}

/// As [`pipeline`], in front of the service at `port`, with `more` (tables) added to the
/// route.
async fn pipeline_at(port: u16, delivery: &str, more: &str) -> (Pipeline, Snapshotter) {
    let text = format!(
        r#"
        [upstream]
        base_url = "http://127.0.0.1:{port}"
        [[routes]]
        name = "r"
        source = "jetstream"
        subject = "orders.{{id}}"
        method = "GET"
        path = "/orders/{{id}}"
        delivery = "{delivery}"
        max_payload = "16B"
        [routes.retry]
        max_attempts = 1
        [routes.jetstream]
        stream = "S"
        max_deliver = 3
        redelivery_backoff = ["1s", "5s"]
        {more}
        "#
    );
    let config = load_str(&text, Vec::new()).unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The route's metric handles are made now, bound to this recorder.
    let pipeline = metrics::with_local_recorder(&recorder, || config.pipeline()).unwrap();
    (pipeline, snapshotter)
}

fn message(payload: &'static [u8], delivered: u32) -> Inbound {
    let mut inbound = Inbound::new(
        "orders.7".into(),
        Some("caller.inbox".into()),
        Vec::new(),
        Bytes::from_static(payload),
    );
    inbound.correlation = Some("c-7".into());
    inbound.delivered = delivered;
    inbound
}

async fn deliver(pipeline: &Pipeline, broker: &Broker, inbound: &Inbound) -> Settled {
    let route = &pipeline.routes()[0];
    let captures = route.pattern.matches(&inbound.subject);
    pipeline.deliver(route, captures, inbound, broker).await
}

/// A counter's name, labels and value.
type Count = (String, Vec<(String, String)>, u64);

/// Every counter's value since the last snapshot (a snapshot drains the counters).
struct Counts(Vec<Count>);

impl Counts {
    fn take(snapshotter: &Snapshotter) -> Self {
        let counters = snapshotter.snapshot().into_vec().into_iter();
        Self(
            counters
                .filter_map(|(key, _, _, value)| match value {
                    DebugValue::Counter(n) => {
                        let key = key.key();
                        let labels = (key.labels())
                            .map(|l| (l.key().to_string(), l.value().to_string()))
                            .collect();
                        Some((key.name().to_string(), labels, n))
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// The counter `name` with every label in `labels`, summed over the others.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        (self.0.iter())
            .filter(|(n, have, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(l, v)| have.iter().any(|(hl, hv)| hl == l && hv == v))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    fn outcome(&self, outcome: &str) -> u64 {
        self.get(MESSAGES_HANDLED, &[("outcome", outcome)])
    }
}

use crate::telemetry::metrics::{DEAD_LETTERS, HTTP_RESPONSES, MESSAGES_HANDLED, SETTLEMENTS};

#[tokio::test]
async fn an_answer_is_published_with_the_correlation_id_then_acked() {
    let (pipeline, metrics) = pipeline(200, "at_least_once").await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &message(b"", 1)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(broker.calls(), ["reply caller.inbox 200", "ack"]);
    let reply = broker.replies.lock().unwrap()[0].clone();
    let correlation: Vec<_> = (reply.headers.iter())
        .filter(|(n, _)| n.eq_ignore_ascii_case("correlation-id"))
        .map(|(_, v)| v.as_ref())
        .collect();
    assert_eq!(correlation, [b"c-7"], "the request's id, once");
    assert_eq!(reply.body.as_ref(), b"body");
    let counts = Counts::take(&metrics);
    assert_eq!(counts.outcome("replied"), 1);
    assert_eq!(counts.get(SETTLEMENTS, &[("action", "ack")]), 1);
}

#[tokio::test]
async fn a_reply_that_can_never_be_published_counts_once_as_publish_failed() {
    let (pipeline, metrics) = pipeline(200, "at_least_once").await;
    let broker = Broker {
        reply_result: Some(Undelivered::Dropped(Cause::text("no such topic"))),
        ..Broker::default()
    };
    let settled = deliver(&pipeline, &broker, &message(b"", 1)).await;
    // Finished all the same: nothing another delivery could change.
    assert_eq!(settled, Settled::Done);
    assert_eq!(broker.calls(), ["reply caller.inbox 200", "ack"]);
    let counts = Counts::take(&metrics);
    assert_eq!(counts.outcome("publish_failed"), 1);
    assert_eq!(counts.outcome("replied"), 0, "not also counted as replied");
    assert_eq!(counts.get("ricochet_replies_published_total", &[]), 0);
}

#[tokio::test]
async fn a_server_error_comes_again_with_the_nth_delay_then_is_dead_lettered() {
    let (pipeline, metrics) = pipeline(500, "at_least_once").await;
    let broker = Broker::default();
    for (delivered, delay) in [(1, "1s"), (2, "5s")] {
        let settled = deliver(&pipeline, &broker, &message(b"", delivered)).await;
        let expected = humantime::parse_duration(delay).unwrap();
        assert_eq!(settled, Settled::Redeliver(Redelivered::Local(expected)));
    }
    assert_eq!(
        broker.calls(),
        ["redeliver 1s", "redeliver 5s"],
        "no reply yet"
    );
    let settled = deliver(&pipeline, &broker, &message(b"", 3)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls()[2..],
        [
            "dead_letter max_deliver 500 3",
            "reply caller.inbox 500",
            "term"
        ]
    );
    let counts = Counts::take(&metrics);
    assert_eq!(counts.get(DEAD_LETTERS, &[]), 1);
    assert_eq!(counts.get(SETTLEMENTS, &[("action", "nak")]), 2);
    assert_eq!(counts.get(SETTLEMENTS, &[("action", "term")]), 1);
}

#[tokio::test]
async fn a_refused_message_is_dead_lettered_at_once_and_answered_without_calling() {
    let (pipeline, metrics) = pipeline(200, "at_least_once").await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &message(b"more than sixteen bytes", 1)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls(),
        [
            "dead_letter payload_too_large 413 1",
            "reply caller.inbox 413",
            "term"
        ]
    );
    assert_eq!(
        Counts::take(&metrics).get("ricochet_http_responses_total", &[]),
        0
    );
    // A destination the broker cannot take: refused as a bad request, no reply sent.
    let mut bad = message(b"", 1);
    bad.reply = Some("not a subject".into());
    deliver(&pipeline, &broker, &bad).await;
    assert_eq!(
        broker.calls()[3..],
        ["dead_letter bad_request 400 1", "term"]
    );
    assert_eq!(Counts::take(&metrics).outcome("no_reply"), 1);
}

#[tokio::test]
async fn a_failed_reply_comes_again_and_on_the_last_delivery_is_dead_lettered_unanswered() {
    let (pipeline, _) = pipeline(200, "at_least_once").await;
    let broker = Broker {
        reply_result: Some(Undelivered::Failed(Cause::text("stream full"))),
        ..Broker::default()
    };
    let settled = deliver(&pipeline, &broker, &message(b"", 1)).await;
    assert_eq!(
        settled,
        Settled::Redeliver(Redelivered::Local(Duration::from_secs(1)))
    );
    assert_eq!(broker.calls(), ["reply caller.inbox 200", "redeliver 1s"]);
    let settled = deliver(&pipeline, &broker, &message(b"", 3)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls()[2..],
        [
            "reply caller.inbox 200",
            "dead_letter publish_failed 200 3",
            "term"
        ]
    );
}

#[tokio::test]
async fn a_dead_letter_that_fails_makes_the_message_come_again_unanswered() {
    let (pipeline, _) = pipeline(200, "at_least_once").await;
    let broker = Broker {
        dead_letter_result: Some(Undelivered::Failed(Cause::text("no connection"))),
        ..Broker::default()
    };
    let settled = deliver(&pipeline, &broker, &message(b"more than sixteen bytes", 2)).await;
    assert_eq!(
        settled,
        Settled::Redeliver(Redelivered::Local(Duration::from_secs(5)))
    );
    assert_eq!(
        broker.calls(),
        ["dead_letter payload_too_large 413 2", "redeliver 5s"]
    );
}

#[tokio::test]
async fn a_dead_letter_that_can_never_be_published_is_dropped_and_the_message_finished() {
    let (pipeline, metrics) = pipeline(200, "at_least_once").await;
    let broker = Broker {
        dead_letter_result: Some(Undelivered::Dropped(Cause::text("not authorised"))),
        ..Broker::default()
    };
    let settled = deliver(&pipeline, &broker, &message(b"more than sixteen bytes", 1)).await;
    assert_eq!(settled, Settled::Done, "no redelivery can change it");
    assert_eq!(
        broker.calls(),
        [
            "dead_letter payload_too_large 413 1",
            "reply caller.inbox 413",
            "term"
        ]
    );
    assert_eq!(Counts::take(&metrics).get(DEAD_LETTERS, &[]), 0);
}

#[tokio::test]
async fn a_message_no_longer_ours_is_left_unsettled() {
    let (pipeline, _) = pipeline(200, "at_least_once").await;
    let broker = Broker {
        reply_result: Some(Undelivered::Lost),
        ..Broker::default()
    };
    let settled = deliver(&pipeline, &broker, &message(b"", 1)).await;
    assert_eq!(settled, Settled::Abandoned);
    assert_eq!(broker.calls(), ["reply caller.inbox 200"]);
}

#[tokio::test]
async fn at_most_once_answers_failures_and_never_settles_again() {
    let (pipeline, _) = pipeline(500, "at_most_once").await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &message(b"", 1)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls(),
        ["accept", "reply caller.inbox 500"],
        "settled on receipt, then no ack, nak or term"
    );
    let settled = deliver(&pipeline, &broker, &message(b"more than sixteen bytes", 1)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls()[2..],
        [
            "accept",
            "dead_letter payload_too_large 413 1",
            "reply caller.inbox 413"
        ]
    );
}

#[tokio::test]
async fn at_most_once_does_not_process_a_message_it_could_not_settle_on_receipt() {
    let (pipeline, metrics) = pipeline(200, "at_most_once").await;
    let broker = Broker {
        accept_fails: true,
        ..Broker::default()
    };
    let settled = deliver(&pipeline, &broker, &message(b"", 1)).await;
    assert_eq!(
        settled,
        Settled::Abandoned,
        "it comes again: not processed twice"
    );
    assert_eq!(broker.calls(), ["accept"], "no call, no reply");
    let counts = Counts::take(&metrics);
    assert_eq!(
        counts.get(HTTP_RESPONSES, &[]),
        0,
        "the service is not called"
    );
    assert_eq!(counts.get(SETTLEMENTS, &[]), 0);
}

#[tokio::test]
async fn a_reply_over_the_brokers_limit_becomes_a_502_saying_why() {
    let (pipeline, _) = pipeline(200, "at_least_once").await;
    let broker = Broker {
        limit: Some(3),
        ..Broker::default()
    };
    deliver(&pipeline, &broker, &message(b"", 1)).await;
    assert_eq!(broker.calls(), ["reply caller.inbox 502", "ack"]);
    let reply = broker.replies.lock().unwrap()[0].clone();
    assert_eq!(reply.header("Ricochet-Error"), Some("upstream_unavailable"));
    assert_eq!(reply.header("Ricochet-Attempts"), Some("1"));
    assert_eq!(reply.header("correlation-id"), Some("c-7"));
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("the test broker's limit (3 bytes)"), "{body}");
}

/// A JetStream-like route in front of a service answering 200, with `[routes.validate]`
/// `validate` (`SCHEMA` is a JSON Schema requiring a string `id`) and optionally a
/// `[schema_registry]`.
async fn validating_pipeline(validate: &str, registry: &str) -> (Pipeline, Snapshotter) {
    let port = service(200).await;
    let dir = std::env::temp_dir().join(format!("ricochet-pipeline-{}", nuid::next()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("order.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}"#,
    )
    .unwrap();
    let validate = validate.replace("SCHEMA", &schema.display().to_string());
    let text = format!(
        r#"
        [upstream]
        base_url = "http://127.0.0.1:{port}"
        {registry}
        [[routes]]
        name = "r"
        source = "jetstream"
        subject = "orders.{{id}}"
        method = "GET"
        path = "/orders/{{id}}"
        [routes.retry]
        max_attempts = 1
        [routes.jetstream]
        stream = "S"
        max_deliver = 3
        redelivery_backoff = ["1s", "5s"]
        [routes.validate]
        {validate}
        "#
    );
    let config = load_str(&text, Vec::new()).unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pipeline = metrics::with_local_recorder(&recorder, || config.pipeline()).unwrap();
    (pipeline, snapshotter)
}

#[tokio::test]
async fn an_invalid_request_is_answered_400_and_dead_lettered_at_once_with_its_violations() {
    let (pipeline, metrics) =
        validating_pipeline("format = \"json_schema\"\nschema = \"SCHEMA\"", "").await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &message(br#"{"id": 7}"#, 1)).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls(),
        [
            "dead_letter validation 400 1",
            "reply caller.inbox 400",
            "term"
        ]
    );
    let reply = broker.replies.lock().unwrap()[0].clone();
    assert_eq!(reply.header("Ricochet-Error"), Some("validation"));
    assert_eq!(reply.header("Ricochet-Attempts"), Some("0"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["code"], 400);
    assert_eq!(body["violations"][0]["instance_path"], "/id");
    assert_eq!(body["violations"][0]["schema_path"], "/properties/id/type");
    let counts = Counts::take(&metrics);
    let failures = "ricochet_validation_failures_total";
    assert_eq!(counts.get(failures, &[("kind", "schema")]), 1);
    assert_eq!(
        counts.get("ricochet_http_responses_total", &[]),
        0,
        "no call"
    );
    // A valid one goes through.
    let broker = Broker::default();
    deliver(&pipeline, &broker, &message(br#"{"id": "7"}"#, 1)).await;
    assert_eq!(broker.calls(), ["reply caller.inbox 200", "ack"]);
}

#[tokio::test]
async fn an_unreachable_registry_makes_the_message_come_again_not_pass() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let registry = format!("[schema_registry]\nurl = \"http://127.0.0.1:{closed}\"");
    let (pipeline, metrics) = validating_pipeline("format = \"avro\"", &registry).await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &message(&[0, 0, 0, 0, 1, 2], 1)).await;
    assert_eq!(
        settled,
        Settled::Redeliver(Redelivered::Local(Duration::from_secs(1)))
    );
    assert_eq!(broker.calls(), ["redeliver 1s"]);
    let counts = Counts::take(&metrics);
    let failures = "ricochet_validation_failures_total";
    assert_eq!(counts.get(failures, &[("kind", "registry_unavailable")]), 1);
    // The last delivery gives up as any retryable failure does, never calling the service.
    deliver(&pipeline, &broker, &message(&[0, 0, 0, 0, 1, 2], 3)).await;
    assert_eq!(broker.calls()[1], "dead_letter max_deliver 503 3");
}

/// Core NATS admission: a free slot at once, then up to `max_pending` places in the line,
/// then refusals; a place is given back once its message has a slot, and when it is
/// abandoned before.
#[tokio::test]
async fn admission_gives_slots_then_places_in_line_then_refuses() {
    let text = r#"
        [upstream]
        base_url = "http://127.0.0.1:9"
        [[routes]]
        name = "core"
        subject = "orders.get"
        path = "/orders"
        max_in_flight = 1
        max_pending = 1
        "#;
    let config = load_str(text, Vec::new()).unwrap();
    let pipeline = config.pipeline().unwrap();
    let route = pipeline.routes()[0].clone();
    let Admission::Now(first) = route.admit() else {
        panic!("a free slot is given at once")
    };
    let Admission::Queued(line) = route.admit() else {
        panic!("the second message waits in the line")
    };
    assert!(
        matches!(route.admit(), Admission::Full),
        "the line holds one"
    );

    // The place is given back once the waiting message has its slot.
    let waiting = tokio::spawn(line.slot());
    drop(first);
    let second = waiting
        .await
        .unwrap()
        .expect("the slot freed by the first message");
    let Admission::Queued(line) = route.admit() else {
        panic!("the line is free again")
    };
    assert!(matches!(route.admit(), Admission::Full));

    // An abandoned place is given back too.
    drop(line);
    assert!(matches!(route.admit(), Admission::Queued(_)));
    drop(second);
    assert!(matches!(route.admit(), Admission::Now(_)));
}

/// The lifetime stage on the whole path: expired messages settled without a call, the
/// attempt headers the service sees.
mod lifetime;
