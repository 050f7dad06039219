//! `/metrics` read the way Prometheus reads it: parsed by prometheus_client's own parser
//! (`common/prom_parse.py`), with counts and histogram totals checked against the traffic
//! sent, for the metrics that explain throughput: throttling by `max_in_flight` and the
//! rate limit.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::Value;

/// The samples of `/metrics`, parsed.
async fn scrape(ricochet: &Ricochet) -> Vec<Value> {
    let text = ricochet.metrics().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/prom_parse.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "prometheus_client rejects /metrics (installed? `pip install prometheus_client`):\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The value of sample `name` whose labels include every `(key, value)` of `labels`.
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

#[tokio::test]
async fn counts_and_histograms_match_the_traffic_and_name_the_throttling() {
    let prefix = unique("metrics");
    // The service holds every call until the test opens the gate.
    let (upstream, open) = Upstream::gated().await;
    let admin = free_port();
    let routes = format!(
        r#"
[[routes]]
name = "narrow"
subject = "{prefix}.narrow"
path = "/narrow"
max_in_flight = 2
max_pending = 8
timeout = "30s"
total_timeout = "40s"

[routes.retry]
max_attempts = 1

[[routes]]
name = "limited"
subject = "{prefix}.limited"
path = "/limited"

[routes.rate_limit]
messages_per_second = 2
burst_messages = 5
mode = "wait"
"#
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    // Ten requests at once on a route that takes two at a time: two are called, the other
    // eight wait for a slot (max_pending = 8: none is refused).
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            let subject = format!("{prefix}.narrow");
            tokio::spawn(async move {
                let request = async_nats::Request::new()
                    .payload(Bytes::from_static(b"x"))
                    .timeout(Some(Duration::from_secs(30)));
                client
                    .send_request(subject, request)
                    .await
                    .expect("a reply")
            })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "the intake waiting for a slot",
        || async {
            let samples = scrape(&ricochet).await;
            let get = |name: &str| value(&samples, name, &[("route", "narrow")]);
            let seen = (
                get("ricochet_throttled_messages_total"),
                get("ricochet_messages_received_total"),
                get("ricochet_in_flight_messages"),
            );
            holds(
                seen == (Some(8.0), Some(10.0), Some(2.0)),
                format!("throttled, received, in flight: {seen:?}"),
            )
        },
    )
    .await;
    assert_eq!(upstream.calls(), 2, "two in flight, the rest waiting");
    open.open();
    for request in requests {
        request.await.unwrap();
    }

    // Eight at once through a rate limit of 2/s with a burst of five: three wait (0.5, 1 and
    // 1.5 s: arrivals would have to spread over half a second to change that).
    let limited: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let subject = format!("{prefix}.limited");
            tokio::spawn(async move { client.request(subject, "x".into()).await.expect("a reply") })
        })
        .collect();
    for request in limited {
        request.await.unwrap();
    }

    let samples = scrape(&ricochet).await;
    let narrow = [("route", "narrow")];
    let at = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels).unwrap_or(-1.0);
    assert_eq!(
        at(
            "ricochet_messages_received_total",
            &[("route", "narrow"), ("source", "nats")]
        ),
        10.0
    );
    assert_eq!(
        at(
            "ricochet_messages_handled_total",
            &[("route", "narrow"), ("outcome", "replied")]
        ),
        10.0
    );
    assert_eq!(
        at(
            "ricochet_http_responses_total",
            &[("route", "narrow"), ("class", "2xx")]
        ),
        10.0
    );
    assert_eq!(at("ricochet_replies_published_total", &narrow), 10.0);
    // One wait per message taken while the route was full: the eight after the first two.
    assert_eq!(at("ricochet_throttled_messages_total", &narrow), 8.0);
    assert_eq!(at("ricochet_in_flight_messages", &narrow), 0.0);
    assert_eq!(
        at(
            "ricochet_rate_limited_total",
            &[("route", "limited"), ("result", "waited")]
        ),
        3.0
    );
    assert_eq!(
        at(
            "ricochet_rate_limited_total",
            &[("route", "limited"), ("result", "rejected")]
        ),
        0.0
    );
    assert_eq!(
        at("ricochet_throttled_messages_total", &[("route", "limited")]),
        0.0
    );

    // Histograms: the count is the traffic, buckets are cumulative and end at the count.
    for (name, count) in [
        ("ricochet_message_duration_seconds", 10.0),
        ("ricochet_http_request_duration_seconds", 10.0),
    ] {
        assert_eq!(at(&format!("{name}_count"), &narrow), count, "{name}");
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s["name"] == format!("{name}_bucket") && s["labels"]["route"] == "narrow")
            .map(|s| {
                let le = s["labels"]["le"].as_str().unwrap();
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (bound, s["value"].as_f64().unwrap())
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: {buckets:?}"
        );
        assert_eq!(
            buckets.last().map(|b| (b.0, b.1)),
            Some((f64::INFINITY, count)),
            "{name}"
        );
        assert!(at(&format!("{name}_sum"), &narrow) > 0.0, "{name}");
    }
}
