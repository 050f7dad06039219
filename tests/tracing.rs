//! OpenTelemetry traces: an OTLP/HTTP receiver of the test's own collects what ricochet
//! exports, decoded with the protocol's own protobuf types (opentelemetry-proto). One trace
//! must cover the caller, ricochet (process, one HTTP client span per attempt, send,
//! settle), the service and the reply.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::jetstream::Stream;
use common::*;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// A span as received, with its resource's attributes.
#[derive(Debug, Clone)]
struct Received {
    span: Span,
    resource: HashMap<String, String>,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attribute(&self, key: &str) -> Option<String> {
        let found = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(match found.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn strings(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// An OTLP/HTTP traces receiver: POST /v1/traces with a protobuf
/// `ExportTraceServiceRequest`, answered 200 with an empty response.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let (sink, types) = (spans.clone(), content_types.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (sink, types) = (sink.clone(), types.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (sink, types) = (sink.clone(), types.clone());
                            async move {
                                let path = request.uri().path().to_string();
                                let content_type = (request.headers().get("content-type"))
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string();
                                let body = request.into_body().collect().await?.to_bytes();
                                if path != "/v1/traces" {
                                    return Ok::<_, hyper::Error>(
                                        hyper::Response::builder()
                                            .status(404)
                                            .body(Full::new(Bytes::new()))
                                            .unwrap(),
                                    );
                                }
                                types.lock().unwrap().push(content_type);
                                let export = ExportTraceServiceRequest::decode(body)
                                    .expect("an OTLP protobuf ExportTraceServiceRequest");
                                let mut sink = sink.lock().unwrap();
                                for resource_spans in export.resource_spans {
                                    let resource = (resource_spans.resource.as_ref())
                                        .map(|r| strings(&r.attributes))
                                        .unwrap_or_default();
                                    for scope in resource_spans.scope_spans {
                                        for span in scope.spans {
                                            sink.push(Received {
                                                span,
                                                resource: resource.clone(),
                                            });
                                        }
                                    }
                                }
                                Ok(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self {
            port,
            spans,
            content_types,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// The spans of trace `trace_id`, once at least `count` have arrived.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Received> {
        let mut found = Vec::new();
        eventually(
            Duration::from_secs(15),
            "the trace's spans exported",
            || {
                found = (self.spans.lock().unwrap().iter())
                    .filter(|s| s.trace_id() == trace_id)
                    .cloned()
                    .collect();
                let names: Vec<String> = found.iter().map(|s| s.span.name.clone()).collect();
                let result = holds(found.len() >= count, format!("{names:?}"));
                async move { result }
            },
        )
        .await;
        found
    }
}

fn one<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let matching: Vec<&Received> = spans.iter().filter(|s| s.span.name == name).collect();
    assert_eq!(
        matching.len(),
        1,
        "one span named {name:?} in {:?}",
        spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
    matching[0]
}

/// `00-<trace id>-<span id>-<flags>`, split.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The `traceparent` the service saw on its first request, in parts.
fn service_traceparent(upstream: &Upstream) -> (String, String, String) {
    let seen = upstream.seen();
    let value = seen[0]
        .headers
        .get("traceparent")
        .expect("a traceparent on the request");
    traceparent(value.to_str().unwrap())
}

fn traced_config(base_url: &str, admin: u16, collector: &Collector, routes: &str) -> String {
    let keys = "service_name = \"orders-sidecar\"\n\
                resource_attributes = { \"deployment.environment.name\" = \"test\" }";
    tracing_config(base_url, admin, &collector.endpoint(), keys, routes)
}

/// A configuration with tracing to `endpoint`, the `[tracing]` table's other `keys`, and
/// `rest` (routes, other tables) after it.
fn tracing_config(base_url: &str, admin: u16, endpoint: &str, keys: &str, rest: &str) -> String {
    let tracing =
        format!("[tracing]\nenabled = true\nendpoint = \"{endpoint}\"\n{keys}\n\n{rest}\n");
    config(base_url, admin, &tracing)
}

/// The route most tests here use: `{prefix}.echo` to POST /echo.
fn echo_route(prefix: &str) -> String {
    format!(
        "[[routes]]\nname = \"echo\"\nsubject = \"{prefix}.echo\"\nmethod = \"POST\"\npath = \"/echo\"\n"
    )
}

const EXPORT_SOON: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

async fn start(toml: &str, admin: u16) -> Ricochet {
    let ricochet = Ricochet::spawn_with_env(toml, admin, &EXPORT_SOON);
    ricochet.wait_ready().await;
    ricochet
}

/// A core NATS request with a `traceparent`: ricochet's spans join the caller's trace, the
/// service sees the trace with the HTTP client span as its parent, the reply carries the
/// trace on, and `tracestate` and `baggage` travel with it. One attempt failed with a 503
/// and retried: one HTTP client span per attempt.
#[tokio::test]
async fn a_request_with_traceparent_is_one_trace_through_ricochet_and_the_service() {
    let collector = Collector::start().await;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        Upstream::start(move |_seen| {
            let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    respond(503, "warming up")
                } else {
                    respond(200, r#"{"ok":true}"#)
                }
            }
        })
        .await
    };
    let prefix = unique("trace");
    let admin = free_port();
    let routes = format!(
        r#"
[[routes]]
name = "orders"
subject = "{prefix}.orders.{{id}}"
method = "GET"
path = "/orders/{{id}}"

[routes.retry]
max_attempts = 3
initial_interval = "10ms"
"#
    );
    let ricochet = start(
        &traced_config(&upstream.base_url(), admin, &collector, &routes),
        admin,
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").as_str(),
    );
    headers.insert("tracestate", "vendor=opaque");
    headers.insert("baggage", "tenant=acme");
    let client = nats().await;
    let reply = client
        .request_with_headers(format!("{prefix}.orders.42"), headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], br#"{"ok":true}"#);

    // The service saw the caller's trace, with a parent of ricochet's.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "one 503, then the retry");
    let mut parents = Vec::new();
    for call in &seen {
        let value = call
            .headers
            .get("traceparent")
            .expect("traceparent on the HTTP request");
        let (id, parent, flags) = traceparent(value.to_str().unwrap());
        assert_eq!(id, trace_id, "the service sees the caller's trace");
        assert_ne!(
            parent, caller_span,
            "the service's parent is ricochet's span"
        );
        assert_eq!(flags, "01", "sampled");
        assert_eq!(call.headers.get("tracestate").unwrap(), "vendor=opaque");
        assert_eq!(call.headers.get("baggage").unwrap(), "tenant=acme");
        parents.push(parent);
    }
    assert_ne!(parents[0], parents[1], "a new span per attempt");

    // The reply carries the trace on, with its trace state and baggage.
    let reply_parent = header(&reply, "traceparent").expect("traceparent on the reply");
    let (id, send_span, _) = traceparent(&reply_parent);
    assert_eq!(id, trace_id);
    assert_eq!(
        header(&reply, "tracestate").as_deref(),
        Some("vendor=opaque")
    );
    assert_eq!(header(&reply, "baggage").as_deref(), Some("tenant=acme"));

    let spans = collector.trace(trace_id, 4).await;
    let process = one(&spans, &format!("process {prefix}.orders.{{id}}"));
    assert_eq!(process.span.kind, SpanKind::Consumer as i32);
    assert_eq!(
        process.parent(),
        caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(
        process.attribute("messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        process.attribute("messaging.destination.name"),
        Some(format!("{prefix}.orders.42"))
    );
    assert_eq!(
        process.attribute("messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        process.attribute("messaging.destination.template"),
        Some(format!("{prefix}.orders.{{id}}"))
    );
    assert_eq!(
        process.attribute("ricochet.route").as_deref(),
        Some("orders")
    );
    assert_eq!(
        process
            .attribute("messaging.consumer.group.name")
            .as_deref(),
        Some("ricochet")
    );
    assert_eq!(
        process.attribute("messaging.message.body.size").as_deref(),
        Some("0")
    );
    assert_eq!(
        process.attribute("ricochet.outcome").as_deref(),
        Some("answered")
    );
    assert_eq!(
        process.resource.get("service.name").map(String::as_str),
        Some("orders-sidecar")
    );
    assert_eq!(
        process
            .resource
            .get("deployment.environment.name")
            .map(String::as_str),
        Some("test")
    );

    let attempts: Vec<&Received> = spans
        .iter()
        .filter(|s| s.span.name == "GET /orders/{id}")
        .collect();
    assert_eq!(attempts.len(), 2, "one HTTP client span per attempt");
    for attempt in &attempts {
        assert_eq!(attempt.span.kind, SpanKind::Client as i32);
        assert_eq!(attempt.parent(), process.span_id());
        assert!(
            parents.contains(&attempt.span_id()),
            "the service's parent is an attempt span"
        );
        assert_eq!(
            attempt.attribute("http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(
            attempt.attribute("url.template").as_deref(),
            Some("/orders/{id}")
        );
    }
    let statuses: Vec<Option<String>> = attempts
        .iter()
        .map(|a| a.attribute("http.response.status_code"))
        .collect();
    assert!(
        statuses.contains(&Some("503".into())) && statuses.contains(&Some("200".into())),
        "{statuses:?}"
    );
    assert!(
        attempts
            .iter()
            .any(|a| a.attribute("http.request.resend_count").as_deref() == Some("1")),
        "the retry is marked as a resend"
    );

    let send = one(&spans, "send");
    assert_eq!(send.span.kind, SpanKind::Producer as i32);
    assert_eq!(send.parent(), process.span_id());
    assert_eq!(
        send.span_id(),
        send_span,
        "the reply's parent is the send span"
    );
    assert!(
        (collector.content_types.lock().unwrap().iter()).all(|t| t == "application/x-protobuf"),
        "OTLP over HTTP/protobuf"
    );
    drop(ricochet);
}

/// A message without trace context starts a new root trace, which the service and the
/// reply see.
#[tokio::test]
async fn a_request_without_traceparent_starts_a_root_trace() {
    let collector = Collector::start().await;
    let upstream = Upstream::echo().await;
    let prefix = unique("traceroot");
    let admin = free_port();
    let routes = echo_route(&prefix);
    let ricochet = start(
        &traced_config(&upstream.base_url(), admin, &collector, &routes),
        admin,
    )
    .await;
    let reply = nats()
        .await
        .request(format!("{prefix}.echo"), "hello".into())
        .await
        .unwrap();
    let (trace_id, _, _) =
        traceparent(&header(&reply, "traceparent").expect("traceparent on the reply"));
    let (service_trace, service_parent, _) = service_traceparent(&upstream);
    assert_eq!(service_trace, trace_id);
    // A trace without trace state: no (empty) `tracestate`, and no baggage, on either.
    let seen = upstream.seen();
    assert_eq!(seen[0].headers.get("tracestate"), None);
    assert_eq!(seen[0].headers.get("baggage"), None);
    assert_eq!(header(&reply, "tracestate"), None);
    assert_eq!(header(&reply, "baggage"), None);

    let spans = collector.trace(&trace_id, 3).await;
    let process = one(&spans, &format!("process {prefix}.echo"));
    assert_eq!(process.parent(), "", "a root span");
    assert_eq!(
        process.attribute("messaging.message.body.size").as_deref(),
        Some("5")
    );
    let attempt = one(&spans, "POST /echo");
    assert_eq!(attempt.span_id(), service_parent);
    drop(ricochet);
}

/// Spans still waiting for their batch when ricochet is told to stop are exported before
/// it exits: with a schedule of ten minutes, only shutdown can send them.
#[tokio::test]
async fn spans_waiting_for_their_batch_are_exported_at_shutdown() {
    let collector = Collector::start().await;
    let upstream = Upstream::echo().await;
    let prefix = unique("traceexit");
    let admin = free_port();
    let routes = echo_route(&prefix);
    let toml = traced_config(&upstream.base_url(), admin, &collector, &routes);
    let mut ricochet =
        Ricochet::spawn_with_env(&toml, admin, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]);
    ricochet.wait_ready().await;
    let reply = nats()
        .await
        .request(format!("{prefix}.echo"), "hello".into())
        .await
        .unwrap();
    let (trace_id, _, _) = traceparent(&header(&reply, "traceparent").expect("a traceparent"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        collector.spans.lock().unwrap().is_empty(),
        "nothing exported before shutdown (the schedule is ten minutes)"
    );
    ricochet.signal("-TERM");
    let status = ricochet.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    let spans = collector.trace(&trace_id, 3).await;
    one(&spans, &format!("process {prefix}.echo"));
    one(&spans, "POST /echo");
    one(&spans, "send");
}

/// JetStream: the process span names the stream sequence and the durable consumer, and the
/// ack is a `settle` span.
#[tokio::test]
async fn a_jetstream_message_has_its_sequence_and_a_settle_span() {
    let collector = Collector::start().await;
    let upstream = Upstream::echo().await;
    let prefix = unique("tracejs");
    let client = nats().await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = Stream::create_with(js.clone(), &prefix, |config| {
        config.subjects = vec![format!("{prefix}.>")];
    })
    .await;
    let stream_name = &stream.name;
    let admin = free_port();
    let routes = format!(
        r#"
[[routes]]
name = "js"
source = "jetstream"
subject = "{prefix}.req.*"
method = "POST"
path = "/echo"
reply_subject = "{prefix}.replies"

[routes.jetstream]
stream = "{stream_name}"
durable = "traced"
"#
    );
    let ricochet = start(
        &traced_config(&upstream.base_url(), admin, &collector, &routes),
        admin,
    )
    .await;
    let mut replies = client.subscribe(format!("{prefix}.replies")).await.unwrap();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01").as_str(),
    );
    js.publish_with_headers(format!("{prefix}.req.1"), headers, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a reply")
        .unwrap();
    let (id, _, _) = traceparent(&header(&reply, "traceparent").unwrap());
    assert_eq!(id, trace_id);

    let spans = collector.trace(trace_id, 4).await;
    let process = one(&spans, &format!("process {prefix}.req.*"));
    assert_eq!(
        process
            .attribute("messaging.nats.stream.sequence")
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        process
            .attribute("messaging.consumer.group.name")
            .as_deref(),
        Some("traced")
    );
    let settle = one(&spans, "settle");
    assert_eq!(
        settle.attribute("messaging.operation.name").as_deref(),
        Some("ack")
    );
    assert_eq!(settle.parent(), process.span_id());
    drop(ricochet);
    stream.delete().await;
}

/// Kafka: the record's `traceparent` header is the parent; the process span names the
/// partition, the offset and the consumer group (its default name here), and the reply
/// record carries the trace on.
#[tokio::test]
async fn a_kafka_record_is_one_trace_through_ricochet_to_its_reply_record() {
    let collector = Collector::start().await;
    let upstream = Upstream::echo().await;
    let requests = kafka::topic("tracek", 1).await;
    let replies = kafka::topic("tracekrep", 1).await;
    let admin = free_port();
    let routes = kafka::route(
        "traced-kafka",
        &requests,
        "",
        &format!("reply_topic = \"{replies}\""),
    );
    let ricochet = start(
        &traced_config(&upstream.base_url(), admin, &collector, &routes),
        admin,
    )
    .await;
    let reader = kafka::consumer(&replies);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    kafka::produce(
        &kafka::producer(),
        &requests,
        Some("order-1"),
        &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
        b"x",
    )
    .await;
    let reply = kafka::next(&reader, Duration::from_secs(60)).await;
    let (id, parent, _) =
        traceparent(&kafka::header(&reply, "traceparent").expect("traceparent on the reply"));
    assert_eq!(
        id, trace_id,
        "the reply record continues the caller's trace"
    );
    let (service_trace, _, _) = service_traceparent(&upstream);
    assert_eq!(service_trace, trace_id);

    let spans = collector.trace(trace_id, 4).await;
    let process = one(&spans, &format!("process {requests}"));
    assert_eq!(process.parent(), caller_span);
    let attribute = |name: &str| process.attribute(name);
    assert_eq!(attribute("messaging.system").as_deref(), Some("kafka"));
    assert_eq!(
        attribute("messaging.destination.partition.id").as_deref(),
        Some("0")
    );
    assert_eq!(attribute("messaging.kafka.offset").as_deref(), Some("0"));
    assert_eq!(
        attribute("messaging.consumer.group.name").as_deref(),
        Some("ricochet-traced-kafka"),
        "the default group's name"
    );
    assert_eq!(
        one(&spans, "send").span_id(),
        parent,
        "the reply's parent is the send span"
    );
    drop(ricochet);
}

/// Tracing off (the default): no spans, and the caller's trace context reaches the service
/// unchanged, like any other header.
#[tokio::test]
async fn with_tracing_off_trace_headers_pass_through_unchanged() {
    let upstream = Upstream::echo().await;
    let prefix = unique("traceoff");
    let admin = free_port();
    let routes = echo_route(&prefix);
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", value);
    headers.insert("baggage", "tenant=acme");
    let reply = nats()
        .await
        .request_with_headers(format!("{prefix}.echo"), headers, "x".into())
        .await
        .unwrap();
    let seen = upstream.seen();
    assert_eq!(seen[0].headers.get("traceparent").unwrap(), value);
    assert_eq!(seen[0].headers.get("baggage").unwrap(), "tenant=acme");
    assert_eq!(
        header(&reply, "traceparent"),
        None,
        "ricochet adds no context of its own"
    );
    drop(ricochet);
}

/// A collector that cannot be reached costs no request: replies come as before, and the
/// lost batches are counted and logged, without the endpoint's address.
#[tokio::test]
async fn an_unreachable_collector_is_counted_and_requests_are_still_answered() {
    let upstream = Upstream::echo().await;
    let prefix = unique("tracedown");
    let admin = free_port();
    // A port nothing listens on.
    let closed = free_port();
    let endpoint = format!("http://127.0.0.1:{closed}/v1/traces");
    let toml = tracing_config(
        &upstream.base_url(),
        admin,
        &endpoint,
        "",
        &echo_route(&prefix),
    );
    let ricochet = start(&toml, admin).await;
    let client = nats().await;
    for i in 0..3 {
        let reply = client
            .request(format!("{prefix}.echo"), format!("hello {i}").into())
            .await
            .unwrap();
        assert_eq!(reply.payload, format!("hello {i}").as_bytes());
    }
    eventually(
        Duration::from_secs(10),
        "a failed export counted",
        || async {
            let text = ricochet.metrics().await;
            let failed = metric(
                &text,
                "ricochet_trace_exports_total",
                &["result=\"failed\""],
            );
            holds(failed >= 1.0, format!("failed exports: {failed}"))
        },
    )
    .await;
    let logs = ricochet.logs();
    assert!(
        logs.contains("could not be exported"),
        "the lost spans are logged:\n{logs}"
    );
    assert!(
        !logs.contains(&format!("127.0.0.1:{closed}")),
        "the endpoint is not logged:\n{logs}"
    );
}

/// A reply served from the route's reply store: its trace has a `reply_store` span saying
/// `hit` and no HTTP attempt; the first request's says `miss`.
#[tokio::test]
async fn a_reply_served_from_the_reply_store_shows_in_its_trace() {
    let collector = Collector::start().await;
    let upstream = Upstream::echo().await;
    let prefix = unique("tracestore");
    let bucket = unique("trace_store_");
    let admin = free_port();
    let routes = format!(
        r#"{}
[routes.reply_store]
bucket = "{bucket}"
on_unavailable = "call"
"#,
        echo_route(&prefix)
    );
    let ricochet = start(
        &traced_config(&upstream.base_url(), admin, &collector, &routes),
        admin,
    )
    .await;
    let client = nats().await;
    let mut traces = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Idempotency-Key", "k-1");
        let reply = client
            .request_with_headers(format!("{prefix}.echo"), headers, "hello".into())
            .await
            .unwrap();
        let (trace_id, _, _) =
            traceparent(&header(&reply, "traceparent").expect("traceparent on the reply"));
        traces.push(trace_id);
    }
    assert_eq!(upstream.calls(), 1);
    let first = collector.trace(&traces[0], 4).await;
    let lookup = one(&first, "reply_store");
    assert_eq!(
        lookup.attribute("ricochet.reply_store.result").as_deref(),
        Some("miss")
    );
    one(&first, "POST /echo");
    let second = collector.trace(&traces[1], 3).await;
    let lookup = one(&second, "reply_store");
    assert_eq!(
        lookup.attribute("ricochet.reply_store.result").as_deref(),
        Some("hit")
    );
    let process = one(&second, &format!("process {prefix}.echo"));
    assert_eq!(lookup.parent(), process.span_id());
    assert!(
        second.iter().all(|s| s.span.name != "POST /echo"),
        "no HTTP attempt for a stored reply"
    );
    drop(ricochet);
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
}

/// A collector that takes connections and never answers (a hung agent): requests are
/// answered as quickly as ever, spans beyond the queue are dropped and counted, and
/// SIGTERM still ends ricochet within its grace period, the export under way given up.
#[tokio::test]
async fn a_collector_that_never_answers_costs_no_request_and_no_shutdown() {
    // Accepts every connection, reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            holding.lock().unwrap().push(stream);
        }
    });
    let upstream = Upstream::echo().await;
    let prefix = unique("tracehung");
    let admin = free_port();
    let endpoint = format!("http://127.0.0.1:{hung}/v1/traces");
    let rest = format!("{}\n[shutdown]\ngrace_period = \"5s\"", echo_route(&prefix));
    let toml = tracing_config(
        &upstream.base_url(),
        admin,
        &endpoint,
        "timeout = \"30s\"",
        &rest,
    );
    // Batches of 3 spans (one request), at most 6 waiting.
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "6"),
    ];
    let mut ricochet = Ricochet::spawn_with_env(&toml, admin, &env);
    ricochet.wait_ready().await;
    let client = nats().await;
    let started = std::time::Instant::now();
    for i in 0..20 {
        let reply = client
            .request(format!("{prefix}.echo"), format!("hello {i}").into())
            .await
            .unwrap();
        assert_eq!(reply.payload, format!("hello {i}").as_bytes());
    }
    // One export hangs (its timeout is 30 s); 20 requests end 60 spans.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests did not wait for the collector: {:?}",
        started.elapsed()
    );
    eventually(
        Duration::from_secs(10),
        "spans dropped and counted",
        || async {
            let text = ricochet.metrics().await;
            let dropped = metric(&text, "ricochet_trace_spans_dropped_total", &[]);
            holds(dropped >= 40.0, format!("dropped: {dropped}"))
        },
    )
    .await;
    assert!(
        ricochet.logs().contains("spans are dropped"),
        "the drops are logged:\n{}",
        ricochet.logs()
    );
    let stopping = std::time::Instant::now();
    ricochet.signal("-TERM");
    let status = ricochet.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "ricochet kept to its 5 s grace period: {:?}",
        stopping.elapsed()
    );
    assert!(!held.lock().unwrap().is_empty(), "the collector was called");
}
