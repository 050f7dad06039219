//! The protobuf of an OTLP `ExportTraceServiceRequest`, written straight from the SDK's
//! [`SpanData`]: the wire format's few field kinds (varints, fixed64/fixed32, length-delimited
//! fields, nested messages with their length put in front) and the fields of trace.proto,
//! common.proto and resource.proto that the SDK's spans carry.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

#[inline]
fn varint(buffer: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buffer.push(value as u8 | 0x80);
        value >>= 7;
    }
    buffer.push(value as u8);
}

pub(super) fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn key(buffer: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buffer, u64::from(field << 3 | wire));
}

#[inline]
fn bytes_field(buffer: &mut Vec<u8>, field: u32, value: &[u8]) {
    length_key(buffer, field, value.len());
    buffer.extend_from_slice(value);
}

/// The key and length of a length-delimited field of `len` bytes, which follow.
#[inline]
pub(super) fn length_key(buffer: &mut Vec<u8>, field: u32, len: usize) {
    key(buffer, field, LEN);
    varint(buffer, len as u64);
}

/// A string or bytes field; proto3 leaves an empty one out.
#[inline]
fn optional_bytes(buffer: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        bytes_field(buffer, field, value);
    }
}

/// A uint32 or enum field; proto3 leaves a zero out.
#[inline]
fn optional_varint(buffer: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(buffer, field, VARINT);
        varint(buffer, value);
    }
}

#[inline]
fn fixed64(buffer: &mut Vec<u8>, field: u32, value: u64) {
    key(buffer, field, FIXED64);
    buffer.extend_from_slice(&value.to_le_bytes());
}

#[inline]
fn fixed32(buffer: &mut Vec<u8>, field: u32, value: u32) {
    key(buffer, field, FIXED32);
    buffer.extend_from_slice(&value.to_le_bytes());
}

/// A message field: `write` writes its fields, then its length goes in front. `guess` bytes
/// are kept for the length, so that the usual size needs no move.
#[inline]
fn message(buffer: &mut Vec<u8>, field: u32, guess: usize, write: impl FnOnce(&mut Vec<u8>)) {
    key(buffer, field, LEN);
    let at = buffer.len();
    buffer.resize(at + guess, 0);
    write(buffer);
    let len = buffer.len() - at - guess;
    if guess == 1 && len < 0x80 {
        // The usual small message: its length is one byte, where it was kept.
        buffer[at] = len as u8;
        return;
    }
    let needed = varint_len(len as u64);
    if needed > guess {
        buffer.resize(buffer.len() + needed - guess, 0);
        buffer.copy_within(at + guess..at + guess + len, at + needed);
    } else if needed < guess {
        buffer.copy_within(at + guess..at + guess + len, at + needed);
        buffer.truncate(at + needed + len);
    }
    let mut value = len as u64;
    for byte in &mut buffer[at..at + needed] {
        *byte = value as u8 & 0x7f | 0x80;
        value >>= 7;
    }
    buffer[at + needed - 1] &= 0x7f;
}

fn nanos(time: SystemTime) -> u64 {
    (time.duration_since(UNIX_EPOCH)).map_or(0, |d| d.as_nanos() as u64)
}

/// `a == b`, without its sorting of the attributes when neither has any (a tracer's scope
/// usually has none).
pub(super) fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    if a.attributes().next().is_some() || b.attributes().next().is_some() {
        return a == b;
    }
    a.name() == b.name() && a.version() == b.version() && a.schema_url() == b.schema_url()
}

/// What every request carries of the resource: the fields `ResourceSpans.resource` (the
/// `Resource` message) and `ResourceSpans.schema_url`.
pub(super) fn resource_fields(resource: &Resource) -> Vec<u8> {
    let mut buffer = Vec::new();
    message(&mut buffer, 1, 2, |buffer| {
        for (name, value) in resource.iter() {
            message(buffer, 1, 1, |buffer| {
                encode_key_value(buffer, name.as_str(), value)
            });
        }
    });
    optional_bytes(
        &mut buffer,
        3,
        resource.schema_url().unwrap_or("").as_bytes(),
    );
    buffer
}

/// The fields of `ScopeSpans` other than its spans: `scope` and `schema_url`.
pub(super) fn scope_fields(scope: &InstrumentationScope) -> Vec<u8> {
    let mut buffer = Vec::new();
    message(&mut buffer, 1, 1, |buffer| encode_scope(buffer, scope));
    optional_bytes(&mut buffer, 3, scope.schema_url().unwrap_or("").as_bytes());
    buffer
}

/// One span as a `ScopeSpans.spans` field.
pub(super) fn span_field(buffer: &mut Vec<u8>, span: &SpanData) {
    message(buffer, 2, 2, |buffer| encode_span(buffer, span));
}

fn encode_scope(buffer: &mut Vec<u8>, scope: &InstrumentationScope) {
    optional_bytes(buffer, 1, scope.name().as_bytes());
    optional_bytes(buffer, 2, scope.version().unwrap_or("").as_bytes());
    for attribute in scope.attributes() {
        message(buffer, 3, 1, |buffer| encode_attribute(buffer, attribute));
    }
}

fn encode_attribute(buffer: &mut Vec<u8>, attribute: &KeyValue) {
    encode_key_value(buffer, attribute.key.as_str(), &attribute.value);
}

/// `KeyValue { key, value: AnyValue }`.
fn encode_key_value(buffer: &mut Vec<u8>, key: &str, value: &Value) {
    optional_bytes(buffer, 1, key.as_bytes());
    message(buffer, 2, 1, |buffer| encode_value(buffer, value));
}

/// The `AnyValue` oneof: written even when it holds its type's default.
fn encode_value(buffer: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => bytes_field(buffer, 1, s.as_str().as_bytes()),
        Value::Bool(b) => {
            key(buffer, 2, VARINT);
            varint(buffer, u64::from(*b));
        }
        Value::I64(i) => {
            key(buffer, 3, VARINT);
            varint(buffer, *i as u64);
        }
        Value::F64(f) => fixed64(buffer, 4, f.to_bits()),
        Value::Array(array) => message(buffer, 5, 1, |buffer| match array {
            Array::Bool(values) => values.iter().for_each(|v| element(buffer, (*v).into())),
            Array::I64(values) => values.iter().for_each(|v| element(buffer, (*v).into())),
            Array::F64(values) => values.iter().for_each(|v| element(buffer, (*v).into())),
            Array::String(values) => {
                for v in values {
                    message(buffer, 1, 1, |buffer| {
                        bytes_field(buffer, 1, v.as_str().as_bytes())
                    });
                }
            }
            // An array of a kind added after 0.31: an empty array.
            _ => {}
        }),
        // A kind of value added after 0.31: an empty AnyValue.
        _ => {}
    }
}

/// One `ArrayValue.values` element.
fn element(buffer: &mut Vec<u8>, value: Value) {
    message(buffer, 1, 1, |buffer| encode_value(buffer, &value));
}

/// `Span.flags`: the W3C trace flags, and whether the parent is remote.
fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    // SpanFlags: CONTEXT_HAS_IS_REMOTE_MASK 0x100, CONTEXT_IS_REMOTE_MASK 0x200.
    u32::from(trace_flags) | 0x100 | if parent_is_remote { 0x200 } else { 0 }
}

fn trace_state(buffer: &mut Vec<u8>, field: u32, state: &TraceState) {
    if *state != TraceState::NONE {
        optional_bytes(buffer, field, state.header().as_bytes());
    }
}

fn encode_span(buffer: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes_field(buffer, 1, &context.trace_id().to_bytes());
    bytes_field(buffer, 2, &context.span_id().to_bytes());
    trace_state(buffer, 3, context.trace_state());
    if span.parent_span_id != SpanId::INVALID {
        bytes_field(buffer, 4, &span.parent_span_id.to_bytes());
    }
    optional_bytes(buffer, 5, span.name.as_bytes());
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    optional_varint(buffer, 6, kind);
    fixed64(buffer, 7, nanos(span.start_time));
    fixed64(buffer, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        message(buffer, 9, 1, |buffer| encode_attribute(buffer, attribute));
    }
    optional_varint(buffer, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(buffer, 11, 1, |buffer| {
            fixed64(buffer, 1, nanos(event.timestamp));
            optional_bytes(buffer, 2, event.name.as_bytes());
            for attribute in &event.attributes {
                message(buffer, 3, 1, |buffer| encode_attribute(buffer, attribute));
            }
            optional_varint(buffer, 4, u64::from(event.dropped_attributes_count));
        });
    }
    optional_varint(buffer, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        message(buffer, 13, 1, |buffer| {
            let context = &link.span_context;
            bytes_field(buffer, 1, &context.trace_id().to_bytes());
            bytes_field(buffer, 2, &context.span_id().to_bytes());
            trace_state(buffer, 3, context.trace_state());
            for attribute in &link.attributes {
                message(buffer, 4, 1, |buffer| encode_attribute(buffer, attribute));
            }
            optional_varint(buffer, 5, u64::from(link.dropped_attributes_count));
            let flags = span_flags(context.is_remote(), context.trace_flags().to_u8());
            fixed32(buffer, 6, flags);
        });
    }
    optional_varint(buffer, 14, u64::from(span.links.dropped_count));
    // Status { message, code }, always present (as opentelemetry-otlp wrote it).
    message(buffer, 15, 1, |buffer| {
        let (code, description) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        optional_bytes(buffer, 2, description.as_bytes());
        optional_varint(buffer, 3, code);
    });
    let flags = span_flags(span.parent_span_is_remote, context.trace_flags().to_u8());
    fixed32(buffer, 16, flags);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::*;

    fn context(
        trace: u128,
        span: u64,
        flags: TraceFlags,
        remote: bool,
        state: &str,
    ) -> SpanContext {
        let state = state.parse::<TraceState>().unwrap();
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            remote,
            state,
        )
    }

    /// Every kind of attribute value opentelemetry 0.31 has.
    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("static", "process"),
            KeyValue::new(String::from("owned"), String::from("orders.42")),
            KeyValue::new(
                "shared",
                Value::String(StringValue::from(std::sync::Arc::<str>::from("é"))),
            ),
            KeyValue::new("empty", ""),
            KeyValue::new("true", true),
            KeyValue::new("false", false),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("negative", -3_i64),
            KeyValue::new("double", 2.5_f64),
            KeyValue::new("large", -1e300_f64),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, 1 << 40]))),
            KeyValue::new("doubles", Value::Array(Array::F64(vec![0.5, -0.0]))),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            KeyValue::new("no values", Value::Array(Array::String(Vec::new()))),
            // Longer than 127 bytes: its length takes two bytes.
            KeyValue::new("long", "x".repeat(300)),
        ]
    }

    fn span(name: &'static str, scope: &InstrumentationScope) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                TraceFlags::SAMPLED,
                false,
                "",
            ),
            parent_span_id: SpanId::from(0xb7ad_6b71_6920_3331),
            parent_span_is_remote: true,
            span_kind: SpanKind::Consumer,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(1_234),
            attributes: every_value(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// Spans with everything the SDK can give: events, links, each status, dropped counts,
    /// trace state, local and remote parents, no parent, unsampled flags, each kind.
    fn batch(scopes: &[InstrumentationScope]) -> Vec<SpanData> {
        let mut spans = Vec::new();
        for (i, scope) in scopes.iter().enumerate() {
            let mut first = span("process orders.{id}", scope);
            first.dropped_attributes_count = 3;
            let mut events = SpanEvents::default();
            events
                .events
                .push(Event::new("retry", first.start_time, every_value(), 2));
            events
                .events
                .push(Event::new("", UNIX_EPOCH, Vec::new(), 0));
            events.dropped_count = 4;
            first.events = events;
            let mut links = SpanLinks::default();
            let linked = context(7, 9, TraceFlags::default(), true, "vendor=opaque,other=x");
            links.links.push(Link::new(linked, every_value(), 5));
            links.links.push(Link::new(
                context(8, 10, TraceFlags::SAMPLED, false, ""),
                Vec::new(),
                0,
            ));
            links.dropped_count = 6;
            first.links = links;
            first.status = Status::error("timeout");
            spans.push(first);

            let mut second = span("GET /orders/{id}", scope);
            second.span_kind = SpanKind::Client;
            second.parent_span_is_remote = false;
            second.span_context = context(
                1 << 100 | i as u128,
                77,
                TraceFlags::default(),
                false,
                "k=v",
            );
            second.status = Status::Ok;
            second.attributes = Vec::new();
            spans.push(second);

            let mut root = span("send", scope);
            root.span_kind = SpanKind::Producer;
            root.parent_span_id = SpanId::INVALID;
            root.parent_span_is_remote = false;
            spans.push(root);
            for kind in [SpanKind::Internal, SpanKind::Server] {
                let mut other = span("other", scope);
                other.span_kind = kind;
                other.status = Status::error("");
                spans.push(other);
            }
        }
        spans
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("orders-sidecar")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .with_attribute(KeyValue::new("deployment.environment.name", "test"))
            .with_attribute(KeyValue::new("replicas", 3_i64))
            .with_schema_url(
                Vec::<KeyValue>::new(),
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build()
    }

    /// The request the span processor sends for `batch`.
    fn ours(resource: &Resource, batch: &[SpanData]) -> ExportTraceServiceRequest {
        let body = super::super::batch::request(&resource_fields(resource), batch);
        ExportTraceServiceRequest::decode(body).expect("a protobuf ExportTraceServiceRequest")
    }

    /// What opentelemetry-otlp 0.31 sent: opentelemetry-proto's own conversion.
    fn theirs(resource: &Resource, batch: &[SpanData]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch.to_vec(), &resource.into()),
        }
    }

    #[test]
    fn the_request_decodes_to_what_opentelemetry_proto_makes_of_the_spans() {
        let scope = InstrumentationScope::builder("ricochet").build();
        let batch = batch(std::slice::from_ref(&scope));
        let resource = resource();
        let ours = ours(&resource, &batch);
        assert_eq!(ours, theirs(&resource, &batch));
        // What the comparison rests on: the fields are there, not left at their defaults.
        let spans = &ours.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 5);
        let first = &spans[0];
        assert_eq!(first.events.len(), 2);
        assert_eq!(first.links[0].trace_state, "vendor=opaque,other=x");
        assert_eq!(first.links[0].dropped_attributes_count, 5);
        assert_eq!(
            (first.dropped_events_count, first.dropped_links_count),
            (4, 6)
        );
        assert_eq!(first.status.as_ref().unwrap().message, "timeout");
        assert_eq!(first.flags, 0x301, "sampled, with a remote parent");
        assert_eq!(first.attributes.len(), every_value().len());
        assert_eq!(spans[1].trace_state, "k=v");
        assert!(
            spans[2].parent_span_id.is_empty(),
            "a root span has no parent id"
        );
        assert_eq!(
            ours.resource_spans[0].schema_url,
            "https://opentelemetry.io/schemas/1.30.0"
        );
        assert_eq!(
            ours.resource_spans[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .len(),
            4
        );
    }

    #[test]
    fn spans_of_two_scopes_go_under_one_resource_a_scope_each() {
        let scopes = [
            InstrumentationScope::builder("ricochet").build(),
            InstrumentationScope::builder("other")
                .with_version("1.2.3")
                .with_schema_url("https://example.com/schema")
                .with_attributes([KeyValue::new("scope.attribute", 1_i64)])
                .build(),
        ];
        let batch = batch(&scopes);
        let resource = resource();
        let sorted = |mut request: ExportTraceServiceRequest| {
            let scope_spans = &mut request.resource_spans[0].scope_spans;
            scope_spans.sort_by(|a, b| {
                a.scope
                    .as_ref()
                    .unwrap()
                    .name
                    .cmp(&b.scope.as_ref().unwrap().name)
            });
            request
        };
        let ours = sorted(ours(&resource, &batch));
        assert_eq!(ours, sorted(theirs(&resource, &batch)));
        assert_eq!(ours.resource_spans.len(), 1);
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
        assert_eq!(
            ours.resource_spans[0].scope_spans[0].schema_url,
            "https://example.com/schema"
        );
    }

    #[test]
    fn a_batch_of_megabytes_still_decodes() {
        // 2,000 spans of about 1 KB: the outer lengths take three bytes or more.
        let scope = InstrumentationScope::builder("ricochet").build();
        let mut spans = Vec::new();
        for _ in 0..2_000 {
            spans.extend(batch(std::slice::from_ref(&scope)).into_iter().take(1));
        }
        let resource = Resource::builder_empty().build();
        assert_eq!(ours(&resource, &spans), theirs(&resource, &spans));
    }

    #[test]
    fn varint_lengths() {
        for (value, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(value), len, "{value}");
            let mut buffer = Vec::new();
            varint(&mut buffer, value);
            assert_eq!(buffer.len(), len, "{value}");
        }
    }
}
