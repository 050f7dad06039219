//! W3C trace context and baggage on what ricochet sends: `traceparent` (and `tracestate`
//! when the trace has one) from a span's context, `baggage` from the message's context.
//!
//! The same text as opentelemetry's `TraceContextPropagator` and `BaggagePropagator` write,
//! without their cost per message: the ids written as hex by table instead of `fmt`, no
//! `Context` made for the span, the reply's headers without a map. The baggage, when a
//! message carries any, is still written by `BaggagePropagator`. Reading the message's
//! context stays with the SDK's propagators.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::BaggagePropagator;

use crate::message::Reply;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The headers of trace context and baggage that ricochet writes when tracing.
const NAMES: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// Each byte's two lowercase hex digits.
const HEX: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    table
};

/// `00-{trace id}-{span id}-{flags}`, lowercase hex, only the sampled flag (as
/// `TraceContextPropagator` writes it).
fn traceparent(span: &SpanContext) -> [u8; 55] {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let trace_id = span.trace_id().to_bytes();
    let span_id = span.span_id().to_bytes();
    let flags = (span.trace_flags() & TraceFlags::SAMPLED).to_u8();
    for (digits, byte) in text[3..35].chunks_exact_mut(2).zip(trace_id) {
        digits.copy_from_slice(&HEX[usize::from(byte)]);
    }
    for (digits, byte) in text[36..52].chunks_exact_mut(2).zip(span_id) {
        digits.copy_from_slice(&HEX[usize::from(byte)]);
    }
    text[53..55].copy_from_slice(&HEX[usize::from(flags)]);
    text
}

/// The `tracestate` of `span`, when it has one.
fn tracestate(span: &SpanContext) -> Option<String> {
    if *span.trace_state() == TraceState::NONE {
        return None;
    }
    Some(span.trace_state().header()).filter(|state| !state.is_empty())
}

/// Writes the message's baggage, when it has any.
fn baggage(message: &Context, injector: &mut dyn Injector) {
    if !message.baggage().is_empty() {
        BaggagePropagator::new().inject_context(message, injector);
    }
}

/// Puts `span`'s context and the message's baggage on an HTTP request, replacing the ones
/// it had (a `tracestate` of the message's is removed when the trace has none).
pub(super) fn inject_http(span: &SpanContext, message: &Context, headers: &mut HeaderMap) {
    if span.is_valid() {
        let value = HeaderValue::from_bytes(&traceparent(span));
        headers.insert(TRACEPARENT, value.expect("hex digits and dashes"));
        match tracestate(span).map(HeaderValue::try_from) {
            Some(Ok(state)) => drop(headers.insert(TRACESTATE, state)),
            Some(Err(_)) => {}
            None => drop(headers.remove(TRACESTATE)),
        }
    }
    baggage(message, &mut HttpHeaders(headers));
}

/// Puts `span`'s context and the message's baggage on a reply, replacing any trace context
/// and baggage the service's response had.
pub(super) fn inject_reply(span: &SpanContext, message: &Context, reply: &mut Reply) {
    (reply.headers).retain(|(name, _)| !NAMES.iter().any(|n| name.eq_ignore_ascii_case(n)));
    if span.is_valid() {
        let value = Bytes::copy_from_slice(&traceparent(span));
        reply.headers.push((Cow::Borrowed("traceparent"), value));
        if let Some(state) = tracestate(span) {
            reply.headers.push((Cow::Borrowed("tracestate"), state));
        }
    }
    let mut found = ReplyBaggage(None);
    baggage(message, &mut found);
    if let Some(value) = found.0 {
        reply.headers.push((Cow::Borrowed("baggage"), value));
    }
}

/// The message's headers, read case-insensitively.
pub(super) struct MessageHeaders<'a>(pub &'a [(String, String)]);

impl Extractor for MessageHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::message::header(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}

struct HttpHeaders<'a>(&'a mut HeaderMap);

impl Injector for HttpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The `baggage` value `BaggagePropagator` writes.
struct ReplyBaggage(Option<String>);

impl Injector for ReplyBaggage {
    fn set(&mut self, key: &str, value: String) {
        if key == "baggage" {
            self.0 = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
    use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;
    use crate::message::ReplyHeaders;

    /// What the SDK's propagators wrote (before ricochet wrote these headers itself).
    fn theirs(span: &SpanContext, message: &Context) -> HashMap<String, String> {
        let propagator = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        let mut headers = HashMap::new();
        let context = message.with_remote_span_context(span.clone());
        propagator.inject_context(&context, &mut headers);
        // An empty `tracestate` is no longer sent.
        headers.retain(|name, value| !(name == "tracestate" && value.is_empty()));
        headers
    }

    fn contexts() -> Vec<(SpanContext, Context)> {
        let state = "vendor=opaque,other=x".parse::<TraceState>().unwrap();
        let baggage = Context::new().with_baggage([
            KeyValue::new("tenant", "acme"),
            KeyValue::new("user id", "a,b;c=d"),
        ]);
        let spans = [
            SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            SpanContext::new(
                TraceId::from(u128::MAX),
                SpanId::from(1),
                TraceFlags::default(),
                true,
                state,
            ),
            SpanContext::new(
                TraceId::from(0xabc),
                SpanId::from(u64::MAX),
                TraceFlags::new(0xff),
                false,
                "".parse().unwrap(),
            ),
            SpanContext::NONE,
        ];
        let mut all = Vec::new();
        for span in spans {
            all.push((span.clone(), Context::new()));
            all.push((span, baggage.clone()));
        }
        all
    }

    #[test]
    fn http_headers_are_what_the_sdk_propagators_wrote() {
        for (span, message) in contexts() {
            let mut headers = HeaderMap::new();
            // The message's own, passed through to the service: replaced.
            headers.insert("traceparent", HeaderValue::from_static("00-1-2-01"));
            headers.insert("tracestate", HeaderValue::from_static("caller=1"));
            headers.insert("x-other", HeaderValue::from_static("kept"));
            inject_http(&span, &message, &mut headers);
            let mut ours: HashMap<String, String> = (headers.iter())
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            assert_eq!(ours.remove("x-other").as_deref(), Some("kept"));
            if !span.is_valid() {
                // Nothing to replace them with: the message's stay, as before.
                assert_eq!(ours.remove("traceparent").as_deref(), Some("00-1-2-01"));
                assert_eq!(ours.remove("tracestate").as_deref(), Some("caller=1"));
            }
            assert_eq!(ours, theirs(&span, &message), "{span:?}");
        }
    }

    #[test]
    fn reply_headers_are_what_the_sdk_propagators_wrote() {
        for (span, message) in contexts() {
            let mut reply = Reply {
                status: http::StatusCode::OK,
                headers: ReplyHeaders::from_iter([
                    ("TraceParent", "00-1-2-01"),
                    ("tracestate", "service=1"),
                    ("Baggage", "service=1"),
                    ("content-type", "text/plain"),
                ]),
                body: Bytes::new(),
            };
            inject_reply(&span, &message, &mut reply);
            let names: Vec<&str> = reply.headers.iter().map(|(n, _)| n.as_ref()).collect();
            let mut ours: HashMap<String, String> = (reply.headers.iter())
                .map(|(n, v)| (n.to_string(), String::from_utf8(v.to_vec()).unwrap()))
                .collect();
            assert_eq!(ours.remove("content-type").as_deref(), Some("text/plain"));
            assert_eq!(names.len(), ours.len() + 1, "one of each: {names:?}");
            assert_eq!(ours, theirs(&span, &message), "{span:?}");
        }
    }

    #[test]
    fn traceparent_is_lowercase_hex_with_the_sampled_flag_only() {
        let span = SpanContext::new(
            TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
            SpanId::from(0xb7ad_6b71_6920_3331),
            TraceFlags::new(0x03),
            false,
            TraceState::NONE,
        );
        assert_eq!(
            &traceparent(&span),
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn a_publishers_garbage_trace_headers_read_as_no_context_and_are_replaced() {
        let propagator = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        let long = "k=".to_string() + &"v".repeat(70_000);
        let hostile = [
            ("traceparent", "00-zzzz-0000-01"),
            (
                "traceparent",
                "00-00000000000000000000000000000000-0000000000000000-01",
            ),
            (
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "\u{7f}bad key=\r\nvalue,=,,,"),
            ("tracestate", long.as_str()),
            ("baggage", "=;;%zz,\u{0}=\u{0}"),
        ];
        for (name, value) in hostile {
            let headers = vec![(name.to_string(), value.to_string())];
            let message = propagator.extract(&MessageHeaders(&headers));
            let span = message.span().span_context().clone();
            assert!(!span.is_valid(), "{name}: {value:.40}");
            // What ricochet sends on: only its own span's context, never the publisher's text.
            let ours = SpanContext::new(
                TraceId::from(7),
                SpanId::from(9),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            );
            let mut request = HeaderMap::new();
            request.insert("tracestate", HeaderValue::from_static("forwarded=1"));
            inject_http(&ours, &message, &mut request);
            assert_eq!(
                request["traceparent"],
                "00-00000000000000000000000000000007-0000000000000009-01"
            );
            assert!(request.get("tracestate").is_none(), "{name}");
            for sent in request.get_all("baggage") {
                assert!(!sent.as_bytes().contains(&0), "{name}: {sent:?}");
            }
            let mut reply = Reply::error(crate::message::ErrorKind::Timeout, "late");
            reply
                .headers
                .push((Cow::Borrowed("tracestate"), value.to_string()));
            inject_reply(&ours, &message, &mut reply);
            assert_eq!(reply.header("tracestate"), None, "{name}");
            assert!(reply.header("traceparent").is_some());
        }
    }
}
