use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use tokio::sync::{mpsc, Semaphore};

use super::{Batch, BatchProcessor, Limits};
use crate::telemetry::metrics::TRACE_SPANS_DROPPED;
use crate::telemetry::otlp::protobuf::resource_fields;
use crate::telemetry::otlp::OtlpExporter;

fn span(n: u64, scope: &InstrumentationScope) -> SpanData {
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            false,
            Default::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Consumer,
        name: Cow::Owned(format!("span {n}")),
        start_time: start,
        end_time: start + Duration::from_millis(n),
        attributes: vec![KeyValue::new("n", n as i64)],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("ricochet").build()
}

/// The names of the spans a request carries, in order.
fn names(body: &[u8]) -> Vec<String> {
    let request = ExportTraceServiceRequest::decode(body).expect("a protobuf request");
    (request.resource_spans.iter())
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.clone())
        .collect()
}

#[test]
fn limits_are_the_sdks_and_its_environment_variables() {
    let none = Limits::from_lookup(|_| None);
    assert_eq!(
        none,
        Limits {
            delay: Duration::from_secs(5),
            max_batch: 512,
            max_queue: 2_048,
            max_batch_bytes: 4 << 20,
            max_queue_bytes: 16 << 20,
        }
    );
    let set = Limits::from_lookup(|name| match name {
        "OTEL_BSP_SCHEDULE_DELAY" => Some("100".into()),
        "OTEL_BSP_MAX_QUEUE_SIZE" => Some(" 10 ".into()),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => Some("50".into()),
        _ => None,
    });
    assert_eq!(set.delay, Duration::from_millis(100));
    assert_eq!(set.max_queue, 10);
    assert_eq!(set.max_batch, 10, "a batch is never larger than the queue");
    let garbage = Limits::from_lookup(|_| Some("soon".into()));
    assert_eq!(garbage, none, "a value that is not a number is ignored");
}

#[test]
fn a_resource_larger_than_the_room_kept_for_it_still_makes_the_same_request() {
    let scope = scope();
    let spans: Vec<SpanData> = (0..3).map(|n| span(n, &scope)).collect();
    let small = resource_fields(&Resource::builder_empty().build());
    let mut batch = Batch::default();
    for span in &spans {
        batch.push(span, &small, 0, usize::MAX);
    }
    // The resource arrives after the first spans were written (it never does in ricochet:
    // the SDK hands it over when the provider is built).
    let large = Resource::builder_empty()
        .with_service_name("x".repeat(500))
        .build();
    let body = batch.body(&resource_fields(&large));
    let ours = ExportTraceServiceRequest::decode(body).unwrap();
    let theirs = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(spans, &(&large).into()),
    };
    assert_eq!(ours, theirs);
}

/// A span larger than `max` is taken back whole: the batch makes the same request as one
/// that never saw it, and does not keep the room it took (a publisher's header of
/// megabytes would otherwise stay allocated until the batch is sent).
#[test]
fn a_span_past_the_limit_leaves_the_batch_as_it_was() {
    let scope = scope();
    let resource = resource_fields(&Resource::builder_empty().build());
    let (first, last) = (span(0, &scope), span(2, &scope));
    let mut huge = span(1, &scope);
    let id = "c".repeat(1 << 20);
    (huge.attributes).push(KeyValue::new("messaging.message.conversation_id", id));
    let mut batch = Batch::default();
    assert!(batch.push(&first, &resource, 0, 10_000).is_some());
    assert_eq!(batch.push(&huge, &resource, 0, 10_000), None);
    assert!(batch.push(&last, &resource, 0, 10_000).is_some());
    assert_eq!(batch.spans, 2);
    let kept: usize = batch.scopes.iter().map(|s| s.bytes.capacity()).sum();
    assert!(kept < 100_000, "{kept} bytes kept after a 1 MiB span");
    let mut without = Batch::default();
    for span in [&first, &last] {
        without.push(span, &resource, 0, 10_000);
    }
    assert_eq!(batch.body(&resource), without.body(&resource));
}

/// An OTLP endpoint that sends every body it receives down a channel, and answers once
/// `gate` gives it a permit.
async fn collector(gate: Arc<Semaphore>) -> (String, mpsc::UnboundedReceiver<Bytes>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let (sender, bodies) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let sender = sender.clone();
            let gate = gate.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let sender = sender.clone();
                    let gate = gate.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let _ = sender.send(body);
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (endpoint, bodies)
}

async fn next(bodies: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<String> {
    let body = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
        .await
        .expect("a request within 10 s")
        .unwrap();
    names(&body)
}

fn processor(endpoint: &str, max_batch: usize, max_queue: usize) -> Arc<BatchProcessor> {
    processor_with(endpoint, |limits| {
        limits.max_batch = max_batch;
        limits.max_queue = max_queue;
    })
}

/// A processor whose schedule (10 minutes) never sends anything during a test.
fn processor_with(endpoint: &str, limit: impl FnOnce(&mut Limits)) -> Arc<BatchProcessor> {
    let exporter = OtlpExporter::new(endpoint, Duration::from_secs(5)).unwrap();
    let mut limits = Limits::from_lookup(|_| None);
    limits.delay = Duration::from_secs(600);
    limit(&mut limits);
    Arc::new(BatchProcessor::new(exporter, limits))
}

/// Counts `ricochet_trace_spans_dropped_total` while `run` runs (on this thread).
fn dropped_while(run: impl FnOnce()) -> u64 {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, run);
    (snapshotter.snapshot().into_vec().into_iter())
        .filter(|(key, ..)| key.key().name() == TRACE_SPANS_DROPPED)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// `call` off the runtime's threads, as the SDK calls a processor's flush and shutdown.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(call).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_leaves_at_once_and_a_flush_sends_the_rest() {
    let (endpoint, mut bodies) = collector(Arc::new(Semaphore::new(1_000))).await;
    let processor = processor(&endpoint, 2, 100);
    let scope = scope();
    for n in 0..5 {
        processor.on_end(span(n, &scope));
    }
    // The first full batch wakes the export thread without waiting for the schedule (10
    // minutes here); the thread then sends everything that waits by then, so span 2 may
    // leave alone, or span 4 before the flush, as the spans and the thread race.
    assert_eq!(next(&mut bodies).await, ["span 0", "span 1"]);
    let mut sent = vec!["span 0".to_string(), "span 1".to_string()];
    while sent.len() < 4 {
        let body = next(&mut bodies).await;
        assert!(
            body.len() <= 2,
            "a batch of at most max_batch spans: {body:?}"
        );
        sent.extend(body);
    }
    let flushing = processor.clone();
    blocking(move || flushing.force_flush()).await.unwrap();
    while sent.len() < 5 {
        sent.extend(next(&mut bodies).await);
    }
    assert_eq!(sent, ["span 0", "span 1", "span 2", "span 3", "span 4"]);
    assert!(bodies.try_recv().is_err(), "nothing sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_beyond_the_queue_are_dropped_and_counted_while_an_export_is_slow() {
    let gate = Arc::new(Semaphore::new(0));
    let (endpoint, mut bodies) = collector(gate.clone()).await;
    let processor = processor(&endpoint, 3, 3);
    let scope = scope();
    for n in 0..3 {
        processor.on_end(span(n, &scope));
    }
    // The first batch is with the collector, which does not answer yet.
    assert_eq!(next(&mut bodies).await, ["span 0", "span 1", "span 2"]);
    let dropped = dropped_while(|| {
        for n in 3..7 {
            processor.on_end(span(n, &scope));
        }
    });
    assert_eq!(dropped, 1, "three wait, the fourth is dropped");
    gate.add_permits(10);
    assert_eq!(next(&mut bodies).await, ["span 3", "span 4", "span 5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_what_is_left_and_then_takes_no_more() {
    let (endpoint, mut bodies) = collector(Arc::new(Semaphore::new(1_000))).await;
    let processor = processor(&endpoint, 512, 2_048);
    let scope = scope();
    processor.on_end(span(0, &scope));
    processor.on_end(span(1, &scope));
    let stopping = processor.clone();
    blocking(move || stopping.shutdown_with_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(next(&mut bodies).await, ["span 0", "span 1"]);
    processor.on_end(span(2, &scope));
    let again = processor.clone();
    let (second, flush) = blocking(move || {
        (
            again.shutdown_with_timeout(Duration::from_secs(1)),
            again.force_flush(),
        )
    })
    .await;
    assert!(matches!(second, Err(OTelSdkError::AlreadyShutdown)));
    assert!(matches!(flush, Err(OTelSdkError::AlreadyShutdown)));
    let state = processor.shared.lock();
    assert_eq!(
        (state.waiting, state.filling.spans),
        (0, 0),
        "a span ended after shutdown is not kept"
    );
}

/// A publisher's large header (a correlation id, a reply subject) becomes a large span
/// attribute: batches leave by size, and what waits is bounded in bytes, not only in spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_spans_leave_in_smaller_batches_and_are_dropped_past_the_queues_bytes() {
    let gate = Arc::new(Semaphore::new(0));
    let (endpoint, mut bodies) = collector(gate.clone()).await;
    let processor = processor_with(&endpoint, |limits| {
        limits.max_batch_bytes = 10_000;
        limits.max_queue_bytes = 30_000;
    });
    let scope = scope();
    let large = |n: u64| {
        let mut span = span(n, &scope);
        let id = "c".repeat(4_000);
        (span.attributes).push(KeyValue::new("messaging.message.conversation_id", id));
        span
    };
    let size = Batch::default()
        .push(&large(0), &[], 0, usize::MAX)
        .unwrap();
    assert!(size > 4_000 && size < 5_000, "{size}");
    // Three spans pass 10,000 bytes: that batch leaves, and the collector holds it.
    for n in 0..3 {
        processor.on_end(large(n));
    }
    assert_eq!(next(&mut bodies).await, ["span 0", "span 1", "span 2"]);
    // Spans wait until 30,000 bytes do; the ones after that are dropped.
    let waiting = 30_000_usize.div_ceil(size) as u64;
    let dropped = dropped_while(|| {
        for n in 3..13 {
            processor.on_end(large(n));
        }
    });
    assert_eq!(dropped, 10 - waiting, "{waiting} of 10 wait");
    gate.add_permits(100);
    assert_eq!(next(&mut bodies).await, ["span 3", "span 4", "span 5"]);
    // Small spans are not held back by the large ones before them.
    let flushing = processor.clone();
    blocking(move || flushing.force_flush()).await.unwrap();
    let mut sent = Vec::new();
    while let Ok(body) = bodies.try_recv() {
        sent.extend(names(&body));
    }
    let expected: Vec<String> = (6..3 + waiting).map(|n| format!("span {n}")).collect();
    assert_eq!(sent, expected);
    processor.on_end(span(99, &scope));
    let flushing = processor.clone();
    blocking(move || flushing.force_flush()).await.unwrap();
    assert_eq!(
        next(&mut bodies).await,
        ["span 99"],
        "the queue's bytes freed"
    );
}

/// A span larger than a batch may be (a publisher's header of megabytes) is dropped and
/// counted by itself: the spans before and after it are sent, none held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_larger_than_a_batch_costs_only_itself() {
    let gate = Arc::new(Semaphore::new(100));
    let (endpoint, mut bodies) = collector(gate).await;
    let processor = processor_with(&endpoint, |limits| {
        limits.max_batch_bytes = 10_000;
        limits.max_queue_bytes = 30_000;
    });
    let scope = scope();
    let mut huge = span(1, &scope);
    let id = "c".repeat(40_000);
    (huge.attributes).push(KeyValue::new("messaging.message.conversation_id", id));
    let dropped = dropped_while(|| {
        processor.on_end(span(0, &scope));
        processor.on_end(huge);
        processor.on_end(span(2, &scope));
    });
    assert_eq!(dropped, 1, "the large span, and only it");
    let flushing = processor.clone();
    blocking(move || flushing.force_flush()).await.unwrap();
    assert_eq!(next(&mut bodies).await, ["span 0", "span 2"]);
    let state = processor.shared.lock();
    assert_eq!((state.waiting, state.waiting_bytes), (0, 0));
}
