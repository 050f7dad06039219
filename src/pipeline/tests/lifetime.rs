//! The lifetime stage on the delivery path: a request nobody waits for is settled without
//! calling the service, as the route says; every attempt tells the service its budget.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::*;
use crate::telemetry::metrics::{ERRORS, HTTP_RESPONSES, MESSAGES_EXPIRED};

/// A service answering 200 that keeps the head of every request it gets.
async fn recording() -> (u16, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let port = crate::pipeline::scripted::service(move |head| {
        seen.lock().unwrap().push(head.to_ascii_lowercase());
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
    })
    .await;
    (port, heads)
}

/// A message the broker took `ago` before now.
fn sent(ago: Duration) -> Inbound {
    let mut inbound = message(b"", 1);
    inbound.sent_at = Some(SystemTime::now() - ago);
    inbound
}

fn with_header(mut inbound: Inbound, name: &str, value: &str) -> Inbound {
    inbound.headers.push((name.into(), value.into()));
    inbound
}

const MAX_AGE: &str = "[routes.lifetime]\nmax_age = \"10s\"";

#[tokio::test]
async fn an_old_message_is_acked_unanswered_and_counted_and_the_service_is_not_called() {
    let (port, heads) = recording().await;
    let (pipeline, metrics) = pipeline_at(port, "at_least_once", MAX_AGE).await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &sent(Duration::from_secs(60))).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(broker.calls(), ["ack"], "no reply: nobody waits for it");
    assert!(heads.lock().unwrap().is_empty(), "the service was called");
    let counts = Counts::take(&metrics);
    assert_eq!(counts.get(MESSAGES_EXPIRED, &[("route", "r")]), 1);
    assert_eq!(counts.get(HTTP_RESPONSES, &[]), 0);
    assert_eq!(
        counts.get(ERRORS, &[("kind", "expired")]),
        0,
        "no error reply"
    );
    // A young one is called and answered.
    deliver(&pipeline, &broker, &sent(Duration::from_secs(1))).await;
    assert_eq!(broker.calls()[1..], ["reply caller.inbox 200", "ack"]);
    assert_eq!(heads.lock().unwrap().len(), 1);
    assert_eq!(Counts::take(&metrics).get(MESSAGES_EXPIRED, &[]), 0);
}

#[tokio::test]
async fn an_expired_message_is_dead_lettered_and_answered_504_when_the_route_asks() {
    let (port, heads) = recording().await;
    let table = format!("{MAX_AGE}\nexpired = \"dead_letter\"\nreply_expired = true");
    let (pipeline, metrics) = pipeline_at(port, "at_least_once", &table).await;
    let broker = Broker::default();
    let settled = deliver(&pipeline, &broker, &sent(Duration::from_secs(60))).await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(
        broker.calls(),
        [
            "dead_letter expired 504 1",
            "reply caller.inbox 504",
            "term"
        ]
    );
    let reply = broker.replies.lock().unwrap()[0].clone();
    assert_eq!(reply.headers.get("Ricochet-Error"), Some(&b"expired"[..]));
    assert_eq!(reply.headers.get("Ricochet-Attempts"), Some(&b"0"[..]));
    assert_eq!(reply.headers.get("correlation-id"), Some(&b"c-7"[..]));
    assert!(heads.lock().unwrap().is_empty());
    let counts = Counts::take(&metrics);
    assert_eq!(counts.get(MESSAGES_EXPIRED, &[]), 1);
    assert_eq!(counts.get(ERRORS, &[("kind", "expired")]), 1);
    assert_eq!(counts.get(DEAD_LETTERS, &[]), 1);
}

#[tokio::test]
async fn the_callers_timeout_counts_from_the_broker_timestamp() {
    let (port, heads) = recording().await;
    let (pipeline, metrics) = pipeline_at(port, "at_least_once", "").await;
    let broker = Broker::default();
    // Taken now, but stored 5 s ago: the caller's 2 s are over.
    let old = with_header(sent(Duration::from_secs(5)), "Ricochet-Timeout", "2s");
    deliver(&pipeline, &broker, &old).await;
    let young = with_header(sent(Duration::from_secs(1)), "Ricochet-Timeout", "2s");
    deliver(&pipeline, &broker, &young).await;
    assert_eq!(broker.calls(), ["ack", "reply caller.inbox 200", "ack"]);
    assert_eq!(heads.lock().unwrap().len(), 1);
    assert_eq!(Counts::take(&metrics).get(MESSAGES_EXPIRED, &[]), 1);
}

#[tokio::test]
async fn less_than_min_budget_left_is_expired() {
    let (port, heads) = recording().await;
    let table = "[routes.lifetime]\nmin_budget = \"500ms\"";
    let (pipeline, metrics) = pipeline_at(port, "at_least_once", table).await;
    let broker = Broker::default();
    let tight = with_header(message(b"", 1), "Ricochet-Timeout", "400ms");
    deliver(&pipeline, &broker, &tight).await;
    assert_eq!(broker.calls(), ["ack"]);
    assert!(heads.lock().unwrap().is_empty());
    assert_eq!(Counts::take(&metrics).get(MESSAGES_EXPIRED, &[]), 1);
}

/// Milliseconds since the Unix epoch, `offset` from now.
fn epoch_ms(offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    (now.as_millis() as i64 + offset).to_string()
}

#[tokio::test]
async fn hostile_deadline_headers_are_refused_or_bounded_never_a_panic() {
    let (port, heads) = recording().await;
    let (pipeline, metrics) = pipeline_at(port, "at_least_once", "").await;
    let broker = Broker::default();
    let cases = [
        // Not a time: refused as a bad request, dead-lettered.
        ("soon", "dead_letter bad_request 400 1"),
        ("-5", "dead_letter bad_request 400 1"),
        ("1.5", "dead_letter bad_request 400 1"),
        (
            "99999999999999999999999999",
            "dead_letter bad_request 400 1",
        ),
        ("", "dead_letter bad_request 400 1"),
        // In the past: expired, acked.
        ("0", "ack"),
        ("1", "ack"),
    ];
    for (value, first) in cases {
        let before = broker.calls().len();
        let inbound = with_header(message(b"", 1), "Ricochet-Deadline", value);
        deliver(&pipeline, &broker, &inbound).await;
        assert_eq!(broker.calls()[before], first, "{value:?}");
    }
    let past = with_header(message(b"", 1), "Ricochet-Deadline", &epoch_ms(-1000));
    deliver(&pipeline, &broker, &past).await;
    assert_eq!(broker.calls().last().unwrap(), "ack");
    assert!(heads.lock().unwrap().is_empty(), "none of those was sent");
    assert_eq!(Counts::take(&metrics).get(MESSAGES_EXPIRED, &[]), 3);
    // In the far future (u64::MAX ms, and a year from now): the route's own timeout holds.
    for value in [u64::MAX.to_string(), epoch_ms(365 * 24 * 3600 * 1000)] {
        let before = broker.calls().len();
        let far = with_header(message(b"", 1), "Ricochet-Deadline", &value);
        deliver(&pipeline, &broker, &far).await;
        assert_eq!(
            broker.calls()[before..],
            ["reply caller.inbox 200", "ack"],
            "{value}"
        );
    }
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 2);
    for head in heads.iter() {
        // The route's own: one attempt of upstream.request_timeout (5 s).
        let budget = header_of(head, "ricochet-budget-ms")
            .parse::<u64>()
            .unwrap();
        assert!((2_500..=5_000).contains(&budget), "{budget}");
    }
}

/// A header's value in a lower-cased request head.
fn header_of<'a>(head: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    (head.lines())
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

#[tokio::test]
async fn each_attempt_tells_the_service_its_budget_attempt_and_delivery_count() {
    let (port, heads) = recording().await;
    let (pipeline, _) = pipeline_at(port, "at_least_once", "").await;
    let broker = Broker::default();
    // The caller's own Ricochet-* headers never reach the service: ricochet's do.
    let mut inbound = with_header(message(b"", 4), "Ricochet-Timeout", "1500ms");
    inbound
        .headers
        .push(("Ricochet-Attempt".into(), "99".into()));
    deliver(&pipeline, &broker, &inbound).await;
    let heads = heads.lock().unwrap();
    let head = &heads[0];
    assert_eq!(header_of(head, "ricochet-attempt"), "1");
    assert_eq!(header_of(head, "ricochet-delivery-count"), "4");
    let budget = header_of(head, "ricochet-budget-ms")
        .parse::<u64>()
        .unwrap();
    // At most the caller's 1.5 s; less by the time the call took to leave (generous).
    assert!((500..=1500).contains(&budget), "{budget}");
    assert_eq!(head.matches("ricochet-attempt:").count(), 1);
}

#[tokio::test]
async fn attempt_headers_can_be_turned_off() {
    let (port, heads) = recording().await;
    let table = "[routes.lifetime]\nattempt_headers = false";
    let (pipeline, _) = pipeline_at(port, "at_least_once", table).await;
    deliver(&pipeline, &Broker::default(), &message(b"", 2)).await;
    let heads = heads.lock().unwrap();
    assert!(!heads[0].contains("ricochet-"), "{}", heads[0]);
}
