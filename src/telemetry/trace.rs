//! OpenTelemetry traces: the trace stage of the pipeline, the same for every source.
//!
//! Per message, when `[tracing] enabled`:
//!
//! ```text
//! process {subject template}  CONSUMER  parent: the message's traceparent, else a new trace
//! ├── {METHOD} {path template} CLIENT   one per HTTP attempt; its context goes on the request
//! ├── send                     PRODUCER the reply; its context goes on the reply's headers
//! └── settle                   CLIENT   ack, nak, term (or commit)
//! ```
//!
//! W3C `traceparent`/`tracestate` and `baggage` are read from the message headers. Off
//! (the default), ricochet makes no spans and those headers pass through to the service
//! like any other header: no cost beyond that. Each span is written as OTLP protobuf when
//! it ends, and the spans are posted in batches over OTLP/HTTP from a thread of their own
//! (telemetry/otlp/), through a hyper client that runs on ricochet's runtime.
//!
//! Longer than 400 lines: the provider, the export, the propagation and every span of a
//! message share the messaging conventions' attribute names, kept together.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use http::HeaderMap;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;
use tracing::warn;

use crate::config::TracingConfig;
use crate::message::Reply;
use crate::message::{Inbound, Position};
use crate::telemetry::otlp::{BatchProcessor, Limits, OtlpExporter};
use crate::telemetry::propagation::{self, MessageHeaders};

/// The tracer of a running ricochet, or nothing when tracing is off.
pub struct Tracing {
    enabled: Option<Enabled>,
}

struct Enabled {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Reads the message's trace context and baggage.
    propagator: TextMapCompositePropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("enabled", &self.enabled.is_some())
            .finish()
    }
}

impl Tracing {
    /// Tracing off: no spans, nothing exported.
    pub fn off() -> Self {
        Self { enabled: None }
    }

    /// From the configuration; starts the exporter when enabled. Must run on ricochet's
    /// runtime (the exporter's HTTP client spawns its requests there).
    pub fn new(config: &TracingConfig) -> anyhow::Result<Self> {
        if !config.enabled {
            return Ok(Self::off());
        }
        let exporter = OtlpExporter::new(&config.endpoint, config.timeout)?;
        let attributes = (config.resource_attributes.iter())
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()));
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes(attributes)
            .with_attribute(KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION").to_string(),
            ))
            .build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchProcessor::new(exporter, Limits::from_env()))
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ricochet");
        let propagator = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        Ok(Self {
            enabled: Some(Enabled {
                provider,
                tracer,
                propagator,
            }),
        })
    }

    /// Exports what is left; called once at shutdown. Blocks while the exporter flushes.
    pub fn shutdown(&self) {
        if let Some(enabled) = &self.enabled {
            if let Err(e) = enabled.provider.shutdown() {
                warn!(error = %e, "tracing: the last spans may not have been exported");
            }
        }
    }

    /// The `process` span of one message, a child of the trace context it carries.
    pub fn start(&self, route: &RouteSpans, inbound: &Inbound) -> MessageTrace<'_> {
        let Some(enabled) = &self.enabled else {
            return MessageTrace { active: None };
        };
        // A message without headers carries no context: nothing to read (nothing in
        // ricochet attaches a context, so the current one is always empty).
        let parent = match inbound.headers.is_empty() {
            true => Context::new(),
            false => (enabled.propagator).extract(&MessageHeaders(&inbound.headers)),
        };
        // Room for every attribute this span may get, `finish`'s included: no growing.
        let optional = [
            route.consumer_group.is_some(),
            inbound.correlation.is_some(),
            inbound.idempotency_key.is_some(),
            inbound.delivered > 1,
        ];
        let position = match inbound.position {
            Position::None => 0,
            Position::Stream { .. } => 1,
            Position::Partition { .. } => 2,
        };
        let capacity = 7 + optional.iter().filter(|o| **o).count() + position + FINISH_ATTRIBUTES;
        let mut attributes = Vec::with_capacity(capacity);
        attributes.extend([
            KeyValue::new("messaging.system", route.system),
            KeyValue::new("messaging.destination.name", inbound.subject.clone()),
            KeyValue::new("messaging.destination.template", route.template.clone()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.message.body.size", inbound.payload.len() as i64),
            KeyValue::new("ricochet.route", route.name.clone()),
        ]);
        if let Some(group) = &route.consumer_group {
            attributes.push(KeyValue::new(
                "messaging.consumer.group.name",
                group.clone(),
            ));
        }
        if let Some(id) = &inbound.correlation {
            attributes.push(KeyValue::new(
                "messaging.message.conversation_id",
                id.clone(),
            ));
        }
        if let Some(key) = &inbound.idempotency_key {
            attributes.push(KeyValue::new("messaging.message.id", key.clone()));
        }
        if inbound.delivered > 1 {
            attributes.push(KeyValue::new(
                "messaging.message.delivery_count",
                i64::from(inbound.delivered),
            ));
        }
        match inbound.position {
            Position::None => {}
            Position::Stream { sequence } => attributes.push(KeyValue::new(
                "messaging.nats.stream.sequence",
                sequence as i64,
            )),
            Position::Partition { partition, offset } => {
                attributes.push(KeyValue::new(
                    "messaging.destination.partition.id",
                    partition.to_string(),
                ));
                attributes.push(KeyValue::new("messaging.kafka.offset", offset));
            }
        }
        let span = enabled
            .tracer
            .span_builder(Cow::Borrowed(route.span_name))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&enabled.tracer, &parent);
        let context = parent.with_remote_span_context(span.span_context().clone());
        MessageTrace {
            active: Some(Active {
                enabled,
                span,
                context,
            }),
        }
    }
}

/// Attributes `finish` may add to the `process` span: `ricochet.outcome`, `error.type`.
const FINISH_ATTRIBUTES: usize = 2;

/// Attributes set on a child span after it starts, at most: a status and `error.type`.
const LATER_ATTRIBUTES: usize = 2;

/// What a route's spans say of it, worked out once: the span names, and the attribute
/// values every message of the route shares (`Arc`-backed: a message copies no string).
#[derive(Debug, Clone)]
pub struct RouteSpans {
    name: StringValue,
    span_name: &'static str,
    template: StringValue,
    system: &'static str,
    consumer_group: Option<StringValue>,
    path_template: StringValue,
    /// The route's method, as an attribute value and in its attempts' span name.
    method: Option<http::Method>,
    method_value: StringValue,
    attempt_name: &'static str,
}

/// What a route's source says of itself in spans (`messaging.system`, the consumer group).
#[derive(Debug, Clone)]
pub struct SpanSource {
    pub system: &'static str,
    pub consumer_group: Option<String>,
}

impl RouteSpans {
    pub fn new(route: &crate::config::RouteConfig, source: SpanSource) -> Self {
        let shared = |text: &str| StringValue::from(Arc::<str>::from(text));
        let method = http::Method::from_bytes(route.method.as_bytes()).ok();
        let method_text = method
            .as_ref()
            .map_or(route.method.as_str(), |m| m.as_str());
        Self {
            name: shared(&route.name),
            span_name: span_name(format!("process {}", route.subject)),
            template: shared(&route.subject),
            system: source.system,
            consumer_group: source.consumer_group.as_deref().map(shared),
            path_template: shared(&route.path),
            method_value: shared(method_text),
            attempt_name: span_name(format!("{method_text} {}", route.path)),
            method,
        }
    }
}

/// `name` for the life of the process. The SDK takes span names as `Cow<'static, str>`,
/// so a route's names would otherwise be copied for every span; each distinct name is
/// kept once instead (routes come and go with reloads, their names are few).
fn span_name(name: String) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = names.get(name.as_str()) {
        return kept;
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.insert(kept);
    kept
}

/// One message's trace: its `process` span and the context its child spans and
/// outgoing headers carry. Empty when tracing is off.
pub struct MessageTrace<'a> {
    active: Option<Active<'a>>,
}

struct Active<'a> {
    enabled: &'a Enabled,
    span: Span,
    /// The message's context (baggage included) with the `process` span as the parent.
    context: Context,
}

impl MessageTrace<'_> {
    /// A child span of the `process` span.
    fn child(
        &self,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Child<'_> {
        let Some(active) = &self.active else {
            return Child { span: None };
        };
        let tracer = &active.enabled.tracer;
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &active.context);
        Child {
            span: Some((span, active)),
        }
    }

    /// The HTTP client span of attempt `attempt` (1 for the first).
    pub fn attempt(&self, route: &RouteSpans, method: &http::Method, attempt: u32) -> Child<'_> {
        if self.active.is_none() {
            return Child { span: None };
        }
        let (value, name) = match route.method.as_ref() == Some(method) {
            true => (
                route.method_value.clone(),
                Cow::Borrowed(route.attempt_name),
            ),
            // Not the route's method (the mapping keeps it; this is not expected).
            false => {
                let name = format!("{method} {}", route.path_template);
                (StringValue::from(method.to_string()), Cow::Owned(name))
            }
        };
        let mut attributes = Vec::with_capacity(3 + LATER_ATTRIBUTES);
        attributes.push(KeyValue::new("http.request.method", value));
        attributes.push(KeyValue::new("url.template", route.path_template.clone()));
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        self.child(name, SpanKind::Client, attributes)
    }

    /// The `send` span of the reply to `destination`.
    pub fn send(&self, destination: &str) -> Child<'_> {
        if self.active.is_none() {
            return Child { span: None };
        }
        let mut attributes = Vec::with_capacity(2 + LATER_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", destination.to_string()),
        ]);
        self.child(Cow::Borrowed("send"), SpanKind::Producer, attributes)
    }

    /// The `settle` span of an ack, nak or term.
    pub fn settle(&self, operation: &'static str) -> Child<'_> {
        if self.active.is_none() {
            return Child { span: None };
        }
        let mut attributes = Vec::with_capacity(2 + LATER_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("messaging.operation.type", "settle"),
            KeyValue::new("messaging.operation.name", operation),
        ]);
        self.child(Cow::Borrowed("settle"), SpanKind::Client, attributes)
    }

    /// The `reply_store` span: the lookup (and any wait) in the route's reply store.
    pub fn reply_store(&self) -> Child<'_> {
        if self.active.is_none() {
            return Child { span: None };
        }
        let attributes = Vec::with_capacity(LATER_ATTRIBUTES);
        self.child(Cow::Borrowed("reply_store"), SpanKind::Client, attributes)
    }

    /// Ends the `process` span with how the message ended and, if it failed, why.
    pub fn finish(self, outcome: &'static str, error: Option<&'static str>) {
        let Some(mut active) = self.active else {
            return;
        };
        active
            .span
            .set_attribute(KeyValue::new("ricochet.outcome", outcome));
        if let Some(error) = error {
            active
                .span
                .set_attribute(KeyValue::new("error.type", error));
            active.span.set_status(Status::error(error));
        }
        active.span.end();
    }
}

/// A child span; ends when dropped (or through [`Child::end`]).
pub struct Child<'a> {
    span: Option<(Span, &'a Active<'a>)>,
}

impl Child<'_> {
    /// Puts this span's context (and the message's baggage) on an HTTP request.
    pub fn inject_http(&self, headers: &mut HeaderMap) {
        if let Some((span, active)) = &self.span {
            propagation::inject_http(span.span_context(), &active.context, headers);
        }
    }

    /// Puts this span's context on a reply, replacing any the service's response carried.
    pub fn inject_reply(&self, reply: &mut Reply) {
        if let Some((span, active)) = &self.span {
            propagation::inject_reply(span.span_context(), &active.context, reply);
        }
    }

    /// The HTTP status of an attempt's response.
    pub fn status(&mut self, status: u16) {
        if let Some((span, _)) = &mut self.span {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(status.to_string()));
            }
        }
    }

    /// What the reply store lookup found (`hit`, `miss`, ...): `ricochet.reply_store.result`.
    pub fn store_result(&mut self, result: &'static str) {
        if let Some((span, _)) = &mut self.span {
            span.set_attribute(KeyValue::new("ricochet.reply_store.result", result));
        }
    }

    /// Marks the span failed with `error` (an error kind such as `timeout`).
    pub fn failed(&mut self, error: &'static str) {
        if let Some((span, _)) = &mut self.span {
            span.set_attribute(KeyValue::new("error.type", error));
            span.set_status(Status::error(error));
        }
    }

    pub fn end(self) {}
}

impl Drop for Child<'_> {
    fn drop(&mut self) {
        if let Some((span, _)) = &mut self.span {
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_name_is_kept_once() {
        let first = span_name(String::from("process orders.{id}.get"));
        let again = span_name(String::from("process orders.{id}.get"));
        assert_eq!(first, "process orders.{id}.get");
        assert!(std::ptr::eq(first, again), "the same name, kept once");
        assert_eq!(
            span_name(String::from("GET /orders/{id}")),
            "GET /orders/{id}"
        );
    }
}
