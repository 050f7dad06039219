//! End to end: NATS request -> ricochet -> HTTP service -> reply, against the real
//! nats-server (NATS_URL) and a scripted upstream on port 0. Every test uses its own
//! random subjects.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::*;

fn route(name: &str, subject: &str, method: &str, path: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsubject = \"{subject}\"\nmethod = \"{method}\"\npath = \"{path}\"\n{extra}\n"
    )
}

async fn request(
    client: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    body: &'static str,
) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject, headers, Bytes::from_static(body.as_bytes())),
    )
    .await
    .expect("reply within 10 s")
    .expect("reply")
}

#[tokio::test]
async fn round_trip_carries_body_and_headers_and_is_counted() {
    let upstream = Upstream::start(|seen| async move {
        http::Response::builder()
            .header("x-order-state", "shipped")
            .header(
                "x-saw-custom",
                seen.headers
                    .get("x-custom")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
            )
            .header("connection", "keep-alive")
            .body(http_body_util::Full::new(seen.body))
            .unwrap()
    })
    .await;
    let prefix = unique("rt");
    let admin = free_port();
    let routes = route("echo", &format!("{prefix}.echo"), "POST", "/echo", "");
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let mut headers = HeaderMap::new();
    headers.insert("X-Custom", "abc");
    headers.insert("Content-Type", "application/json");
    headers.insert("Nats-Msg-Id", "broker-only");
    headers.insert("Connection", "close");
    let reply = request(&client, format!("{prefix}.echo"), headers, "{\"order\":1}").await;

    assert_eq!(reply.payload.as_ref(), b"{\"order\":1}");
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(header(&reply, "x-order-state").as_deref(), Some("shipped"));
    assert_eq!(header(&reply, "x-saw-custom").as_deref(), Some("abc"));
    assert_eq!(
        header(&reply, "connection"),
        None,
        "hop-by-hop response headers are dropped"
    );
    assert_eq!(header(&reply, "Nats-Service-Error"), None);

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, http::Method::POST);
    assert_eq!(seen[0].path_and_query, "/echo");
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert!(
        seen[0].headers.get("nats-msg-id").is_none(),
        "broker headers are not forwarded"
    );
    assert!(seen[0]
        .headers
        .get("connection")
        .is_none_or(|v| v != "close"));

    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_messages_received_total",
            &["route=\"echo\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_http_responses_total",
            &["route=\"echo\"", "class=\"2xx\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_replies_published_total",
            &["route=\"echo\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ricochet_http_request_duration_seconds_count",
            &["route=\"echo\""]
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "ricochet_in_flight_messages", &["route=\"echo\""]),
        0.0
    );
}

#[tokio::test]
async fn path_template_and_method_come_from_the_route() {
    let upstream = Upstream::echo().await;
    let prefix = unique("path");
    let admin = free_port();
    let routes = [
        route(
            "special",
            &format!("{prefix}.orders.special.get"),
            "HEAD",
            "/special",
            "",
        ),
        route(
            "get-order",
            &format!("{prefix}.orders.{{id}}.get"),
            "GET",
            "/orders/{id}?full=1",
            "",
        ),
        route("catch-all", &format!("{prefix}.>"), "DELETE", "/other", ""),
    ]
    .concat();
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let reply = request(
        &client,
        format!("{prefix}.orders.42.get"),
        HeaderMap::new(),
        "",
    )
    .await;
    assert_eq!(
        header(&reply, "x-echo-path").as_deref(),
        Some("/orders/42?full=1")
    );
    let reply = request(
        &client,
        format!("{prefix}.orders.a/b%2e.get"),
        HeaderMap::new(),
        "",
    )
    .await;
    assert_eq!(
        header(&reply, "x-echo-path").as_deref(),
        Some("/orders/a%2Fb%252e?full=1")
    );
    request(
        &client,
        format!("{prefix}.orders.special.get"),
        HeaderMap::new(),
        "",
    )
    .await;
    request(
        &client,
        format!("{prefix}.orders.1.delete"),
        HeaderMap::new(),
        "",
    )
    .await;

    let seen = upstream.seen();
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.to_string(), s.path_and_query.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".to_string(), "/orders/42?full=1".to_string()),
            ("GET".to_string(), "/orders/a%2Fb%252e?full=1".to_string()),
            ("HEAD".to_string(), "/special".to_string()),
            ("DELETE".to_string(), "/other".to_string()),
        ]
    );
}

#[tokio::test]
async fn hostile_tokens_get_400_and_no_http_call() {
    let upstream = Upstream::echo().await;
    let prefix = unique("hostile");
    let admin = free_port();
    let routes = route(
        "get-order",
        &format!("{prefix}.orders.{{id}}.get"),
        "GET",
        "/orders/{id}",
        "",
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    for token in ["a?admin=1", "a#frag"] {
        let reply = request(
            &client,
            format!("{prefix}.orders.{token}.get"),
            HeaderMap::new(),
            "",
        )
        .await;
        assert_eq!(
            header(&reply, "Ricochet-Status").as_deref(),
            Some("400"),
            "{token}"
        );
        assert_eq!(
            header(&reply, "Nats-Service-Error-Code").as_deref(),
            Some("400")
        );
        assert_eq!(
            header(&reply, "Ricochet-Error").as_deref(),
            Some("bad_request")
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["code"], 400);
        assert!(body["error"].as_str().unwrap().contains("{id}"));
    }
    assert_eq!(upstream.calls(), 0);
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_errors_total", &["kind=\"bad_request\""]),
        2.0
    );
}

#[tokio::test]
async fn service_errors_pass_through_with_nats_service_error_headers() {
    let upstream = Upstream::start(|seen| async move {
        match seen.path_and_query.as_str() {
            "/orders/missing" => respond(404, "no such order"),
            _ => respond(500, "database exploded"),
        }
    })
    .await;
    let prefix = unique("errs");
    let admin = free_port();
    let routes = route(
        "get-order",
        &format!("{prefix}.{{id}}"),
        "GET",
        "/orders/{id}",
        "",
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let reply = request(&client, format!("{prefix}.missing"), HeaderMap::new(), "").await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("404"));
    assert_eq!(
        header(&reply, "Nats-Service-Error").as_deref(),
        Some("Not Found")
    );
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("404")
    );
    assert_eq!(
        header(&reply, "Ricochet-Error"),
        None,
        "the service's own answer"
    );
    assert_eq!(reply.payload.as_ref(), b"no such order");

    let reply = request(&client, format!("{prefix}.7"), HeaderMap::new(), "").await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("500"));
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("500")
    );
    assert_eq!(reply.payload.as_ref(), b"database exploded");
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn unreachable_upstream_gives_502() {
    let closed_port = free_port();
    let prefix = unique("down");
    let admin = free_port();
    let routes = route("r", &format!("{prefix}.x"), "POST", "/x", "");
    let ricochet = Ricochet::start(
        &config(&format!("http://127.0.0.1:{closed_port}"), admin, &routes),
        admin,
    )
    .await;
    let client = nats().await;

    let reply = request(&client, format!("{prefix}.x"), HeaderMap::new(), "hi").await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("502"));
    assert_eq!(
        header(&reply, "Ricochet-Error").as_deref(),
        Some("upstream_unavailable")
    );
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("502")
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["code"], 502);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{body}"
    );
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_errors_total",
            &["kind=\"upstream_unavailable\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_within_the_timeout() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        respond(200, "too late")
    })
    .await;
    let prefix = unique("slow");
    let admin = free_port();
    let routes = route(
        "slow",
        &format!("{prefix}.x"),
        "GET",
        "/x",
        "timeout = \"300ms\"\nretry = { max_attempts = 1 }",
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let request = async_nats::Request::new().timeout(Some(Duration::from_secs(3)));
    let reply = client
        .send_request(format!("{prefix}.x"), request)
        .await
        .expect("504 before the caller's 3 s");
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("504"));
    assert_eq!(header(&reply, "Ricochet-Error").as_deref(), Some("timeout"));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn oversize_message_gives_413_and_no_http_call() {
    let upstream = Upstream::echo().await;
    let prefix = unique("big");
    let admin = free_port();
    let routes = route(
        "small",
        &format!("{prefix}.x"),
        "POST",
        "/x",
        "max_payload = 16",
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let reply = request(
        &client,
        format!("{prefix}.x"),
        HeaderMap::new(),
        "0123456789abcdefX",
    )
    .await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("413"));
    assert_eq!(
        header(&reply, "Ricochet-Error").as_deref(),
        Some("payload_too_large")
    );
    let reply = request(
        &client,
        format!("{prefix}.x"),
        HeaderMap::new(),
        "0123456789abcdef",
    )
    .await;
    assert_eq!(
        header(&reply, "Ricochet-Status").as_deref(),
        Some("200"),
        "exactly max_payload is fine"
    );
    assert_eq!(
        upstream.calls(),
        1,
        "only the message within the limit reached the service"
    );
}

#[tokio::test]
async fn many_requests_are_in_flight_at_once() {
    const WANTED: usize = 16;
    // Each call waits until WANTED calls are inside at the same time (or 5 s pass), so the
    // peak the upstream records shows whether ricochet really sends them concurrently.
    let concurrency = Concurrency::default();
    let inside = concurrency.clone();
    let upstream = Upstream::start_with(concurrency, move |_| {
        let inside = inside.clone();
        async move {
            let all_inside = wait_until(Duration::from_secs(5), || async {
                holds(inside.peak() >= WANTED, inside.peak())
            });
            // Past the timeout the assertion on the peak below says what happened.
            let _ = all_inside.await;
            respond(200, "ok")
        }
    })
    .await;
    let prefix = unique("many");
    let admin = free_port();
    let routes = route(
        "many",
        &format!("{prefix}.x"),
        "POST",
        "/x",
        "max_in_flight = 32",
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let requests =
        (0..WANTED).map(|_| request(&client, format!("{prefix}.x"), HeaderMap::new(), "x"));
    let replies = futures::future::join_all(requests).await;
    assert!(replies
        .iter()
        .all(|r| header(r, "Ricochet-Status").as_deref() == Some("200")));
    assert_eq!(
        upstream.peak(),
        WANTED,
        "the upstream saw all requests at once"
    );
}

#[tokio::test]
async fn max_in_flight_bounds_concurrency() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        respond(200, "ok")
    })
    .await;
    let prefix = unique("bound");
    let admin = free_port();
    let routes = route(
        "bound",
        &format!("{prefix}.x"),
        "POST",
        "/x",
        "max_in_flight = 3\nmax_pending = 9",
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let requests = (0..12).map(|_| request(&client, format!("{prefix}.x"), HeaderMap::new(), "x"));
    let replies = futures::future::join_all(requests).await;
    assert!(replies
        .iter()
        .all(|r| header(r, "Ricochet-Status").as_deref() == Some("200")));
    assert_eq!(upstream.calls(), 12);
    assert!(upstream.peak() <= 3, "peak {}", upstream.peak());
}

#[tokio::test]
async fn requests_beyond_max_pending_are_refused_at_once_with_503_overloaded() {
    // The service holds every call until the test opens the gate.
    let (upstream, open) = Upstream::gated().await;
    let prefix = unique("shed");
    let admin = free_port();
    let routes = route(
        "shed",
        &format!("{prefix}.x"),
        "POST",
        "/x",
        "max_in_flight = 1\nmax_pending = 2",
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    // One is called, two wait for its slot, and the other five are answered while the
    // service still holds the first: 503, overloaded, the service not called for them.
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let subject = format!("{prefix}.x");
            tokio::spawn(async move { request(&client, subject, HeaderMap::new(), "x").await })
        })
        .collect();
    // The refusals can come before the first call has reached the service: both awaited.
    eventually(
        Duration::from_secs(10),
        "five refusals, one call",
        || async {
            let metrics = ricochet.metrics().await;
            let refused = metric(&metrics, "ricochet_errors_total", &["kind=\"overloaded\""]);
            let calls = upstream.calls();
            holds(
                refused == 5.0 && calls == 1,
                format!("{refused} refused, {calls} calls"),
            )
        },
    )
    .await;
    open.open();
    let mut statuses = Vec::new();
    for request in requests {
        let reply = request.await.unwrap();
        let status = header(&reply, "Ricochet-Status").unwrap_or_default();
        let kind = header(&reply, "Ricochet-Error").unwrap_or_default();
        statuses.push(format!("{status} {kind}").trim().to_string());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [
            "200",
            "200",
            "200",
            "503 overloaded",
            "503 overloaded",
            "503 overloaded",
            "503 overloaded",
            "503 overloaded"
        ]
    );
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn message_without_reply_subject_reaches_the_service() {
    let upstream = Upstream::echo().await;
    let prefix = unique("fire");
    let admin = free_port();
    let routes = route("events", &format!("{prefix}.event"), "POST", "/events", "");
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    client
        .publish(format!("{prefix}.event"), "fire-and-forget".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    upstream.wait_for_calls(1).await;
    assert_eq!(upstream.seen()[0].body.as_ref(), b"fire-and-forget");

    eventually(
        Duration::from_secs(2),
        "the no_reply outcome counted",
        || async {
            let metrics = ricochet.metrics().await;
            let outcome = ["outcome=\"no_reply\""];
            let counted = metric(&metrics, "ricochet_messages_handled_total", &outcome);
            holds(counted == 1.0, format!("{counted}"))
        },
    )
    .await;
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_replies_published_total", &[]),
        0.0
    );
    assert!(ricochet.logs().contains("without reply subject"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    const IN_FLIGHT: usize = 8;
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        respond(200, "finished")
    })
    .await;
    let prefix = unique("term");
    let admin = free_port();
    let routes = route("slowish", &format!("{prefix}.x"), "POST", "/x", "");
    let mut ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;

    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let client = client.clone();
            let subject = format!("{prefix}.x");
            tokio::spawn(async move { client.request(subject, "x".into()).await })
        })
        .collect();
    upstream.wait_for_calls(IN_FLIGHT).await;
    ricochet.signal("-TERM");

    for request in requests {
        let reply = request
            .await
            .unwrap()
            .expect("every in-flight request gets its reply");
        assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
        assert_eq!(reply.payload.as_ref(), b"finished");
    }
    let status = ricochet.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", ricochet.logs());

    // Intake stopped: nobody answers this subject any more.
    let late = client.request(format!("{prefix}.x"), "late".into()).await;
    assert!(late.is_err(), "no responder after shutdown");
    assert_eq!(upstream.calls(), IN_FLIGHT);
}
