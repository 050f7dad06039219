//! The span processor: each span is written as protobuf the moment it ends, into the batch
//! under way, and a thread of its own posts the batches.
//!
//! The SDK's `BatchSpanProcessor` moved every `SpanData` (about 400 bytes) through a
//! channel into a `Vec`, then into another `Vec` for the exporter, which wrote it out; each
//! move is a copy of the whole span. Here a span is read once, where it ends, and only its
//! bytes are kept. The bytes of a batch start with room for what goes in front of the
//! spans (the request, the resource and the scope), so that the body is sent without being
//! copied again.
//!
//! The limits are the SDK's, from the same environment variables: a batch is sent when it
//! holds `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans (512) or `OTEL_BSP_SCHEDULE_DELAY`
//! milliseconds (5,000) after the last export; at most `OTEL_BSP_MAX_QUEUE_SIZE` spans
//! (2,048) wait, and a span ended beyond that is dropped and counted. Spans carry what
//! publishers send (subjects, correlation ids, message ids, reply subjects), so the bytes
//! are bounded too: a batch is sent once it holds 4 MiB, and spans are dropped once 16 MiB
//! wait, however few they are. A single span larger than a batch may be is dropped by
//! itself, so it costs no other span.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use tracing::warn;

use super::protobuf::{self, same_scope};
use super::OtlpExporter;
use crate::telemetry::metrics::{TRACE_EXPORTS, TRACE_SPANS_DROPPED};

/// When batches leave, and how many spans may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub delay: Duration,
    pub max_batch: usize,
    pub max_queue: usize,
    /// A batch holding this many bytes of spans is sent, however few they are.
    pub max_batch_bytes: usize,
    /// Spans are dropped once this many bytes of them wait.
    pub max_queue_bytes: usize,
}

impl Limits {
    /// The SDK's defaults, or what `OTEL_BSP_*` says (a value that is not a number is
    /// ignored, as the SDK ignored it; a batch larger than the queue is the queue).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name: &str| lookup(name).and_then(|v| v.trim().parse::<u64>().ok());
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE").map_or(2_048, |n| n as usize);
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map_or(512, |n| n as usize);
        Self {
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY").unwrap_or(5_000)),
            max_queue: max_queue.max(1),
            max_batch: max_batch.clamp(1, max_queue.max(1)),
            max_batch_bytes: 4 << 20,
            max_queue_bytes: 16 << 20,
        }
    }
}

/// The spans of one batch, as the bytes of their `ScopeSpans.spans` fields, by scope.
#[derive(Debug, Default)]
struct Batch {
    scopes: Vec<ScopeBytes>,
    spans: usize,
}

#[derive(Debug)]
struct ScopeBytes {
    scope: InstrumentationScope,
    /// The other fields of `ScopeSpans`: the scope and its schema URL.
    fields: Vec<u8>,
    /// `room` bytes kept for what goes in front, then the spans.
    bytes: Vec<u8>,
    room: usize,
}

impl Batch {
    /// Writes `span` and says how many bytes it took, or takes it back and says `None` when
    /// it took more than `max` (a span no batch within the limits could hold). `size` is the
    /// size of the last batch: bytes for as much are taken at once.
    fn push(&mut self, span: &SpanData, resource: &[u8], size: usize, max: usize) -> Option<usize> {
        let scope = &span.instrumentation_scope;
        let at = match self.scopes.iter().position(|s| same_scope(&s.scope, scope)) {
            Some(at) => at,
            None => {
                let fields = protobuf::scope_fields(scope);
                // The request's key and length, the resource, the scope's key and length
                // (a varint takes at most 10 bytes) and the scope's fields.
                let room = 1 + 10 + resource.len() + 1 + 10 + fields.len();
                let mut bytes = Vec::with_capacity(room + size + size / 4);
                bytes.resize(room, 0);
                self.scopes.push(ScopeBytes {
                    scope: scope.clone(),
                    fields,
                    bytes,
                    room,
                });
                self.scopes.len() - 1
            }
        };
        let bytes = &mut self.scopes[at].bytes;
        let before = bytes.len();
        protobuf::span_field(bytes, span);
        let written = bytes.len() - before;
        if written > max {
            // Taken back, and the room it made given back too: the batch under way would
            // otherwise keep a span's megabytes until it is sent.
            bytes.truncate(before);
            bytes.shrink_to(before + max);
            return None;
        }
        self.spans += 1;
        Some(written)
    }

    /// The spans' bytes, without the room in front.
    fn size(&self) -> usize {
        self.scopes.iter().map(|s| s.bytes.len() - s.room).sum()
    }

    /// The `ExportTraceServiceRequest`: one resource, a `ScopeSpans` per scope. With one
    /// scope (ricochet has one tracer) what goes in front is written into the room kept for
    /// it; otherwise the parts are put together in a new buffer.
    fn body(self, resource: &[u8]) -> Bytes {
        let scope_len = |s: &ScopeBytes| s.fields.len() + s.bytes.len() - s.room;
        let scopes_len: usize = (self.scopes.iter())
            .map(|s| 1 + protobuf::varint_len(scope_len(s) as u64) + scope_len(s))
            .sum();
        // The request's key and length and the resource, with room for `more` bytes.
        let front = |more: usize| {
            let mut front = Vec::with_capacity(1 + 10 + resource.len() + more);
            protobuf::length_key(&mut front, 1, resource.len() + scopes_len);
            front.extend_from_slice(resource);
            front
        };
        if let [only] = self.scopes.as_slice() {
            let mut head = front(1 + 10 + only.fields.len());
            protobuf::length_key(&mut head, 2, scope_len(only));
            head.extend_from_slice(&only.fields);
            if head.len() <= only.room {
                let start = only.room - head.len();
                let mut bytes = self.scopes.into_iter().next().expect("one scope").bytes;
                bytes[start..start + head.len()].copy_from_slice(&head);
                return Bytes::from(bytes).slice(start..);
            }
        }
        let mut body = front(scopes_len);
        for scope in &self.scopes {
            protobuf::length_key(&mut body, 2, scope_len(scope));
            body.extend_from_slice(&scope.fields);
            body.extend_from_slice(&scope.bytes[scope.room..]);
        }
        Bytes::from(body)
    }
}

/// The request the processor sends for `spans`, one batch.
#[cfg(test)]
pub(super) fn request(resource: &[u8], spans: &[SpanData]) -> Bytes {
    let mut batch = Batch::default();
    for span in spans {
        batch.push(span, resource, 0, usize::MAX);
    }
    batch.body(resource)
}

/// What the processor and its thread share.
#[derive(Debug, Default)]
struct State {
    /// Full batches, oldest first, then the one being filled.
    full: VecDeque<Batch>,
    filling: Batch,
    /// Spans in `full` and `filling`, and their bytes.
    waiting: usize,
    waiting_bytes: usize,
    /// The resource's fields of `ResourceSpans`, encoded once.
    resource: Vec<u8>,
    /// The size of the last full batch, in bytes: the next one gets as much at once.
    last_size: usize,
    flushes_asked: u64,
    flushes_done: u64,
    /// Spans were dropped since the last export (said once in the log until then).
    dropping: bool,
    shutting_down: bool,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Told whenever the state changes: a batch filled, a flush or shutdown asked for, an
    /// export done.
    changed: Condvar,
    limits: Limits,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes spans as they end and posts them in batches through an [`OtlpExporter`].
#[derive(Debug)]
pub struct BatchProcessor {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// How long a flush waits for its export.
    timeout: Duration,
}

impl BatchProcessor {
    pub fn new(exporter: OtlpExporter, limits: Limits) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                resource: protobuf::resource_fields(&Resource::builder_empty().build()),
                ..State::default()
            }),
            changed: Condvar::new(),
            limits,
        });
        let timeout = exporter.timeout;
        let running = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ricochet-spans".into())
            .spawn(move || export_until_shutdown(&running, &exporter))
            .expect("a thread for exporting spans");
        Self {
            shared,
            thread: Mutex::new(Some(thread)),
            timeout,
        }
    }

    /// Waits until `done` holds for the state, at most `within`.
    fn wait_for(&self, within: Duration, done: impl Fn(&State) -> bool) -> bool {
        let state = self.shared.lock();
        let (_state, waited) = (self.shared.changed)
            .wait_timeout_while(state, within, |state| !done(state))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !waited.timed_out()
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let limits = &self.shared.limits;
        let mut guard = self.shared.lock();
        if guard.shutting_down {
            return;
        }
        if guard.waiting >= limits.max_queue || guard.waiting_bytes >= limits.max_queue_bytes {
            let why = "the queue of spans waiting for export is full (the collector is slow or unreachable, or the spans are large)";
            return dropped(guard, why);
        }
        let state = &mut *guard;
        let max = limits.max_batch_bytes;
        let Some(bytes) = (state.filling).push(&span, &state.resource, state.last_size, max) else {
            // Such a span (a publisher's header of megabytes) costs only itself.
            return dropped(guard, "a span is larger than a batch may be");
        };
        state.waiting_bytes += bytes;
        state.waiting += 1;
        if state.filling.spans >= limits.max_batch || state.filling.size() >= limits.max_batch_bytes
        {
            state.last_size = state.filling.size();
            let full = std::mem::take(&mut state.filling);
            state.full.push_back(full);
            self.shared.changed.notify_all();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let asked = {
            let mut state = self.shared.lock();
            if state.stopped {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.flushes_asked += 1;
            state.flushes_asked
        };
        self.shared.changed.notify_all();
        // One export per full batch and one for the rest, each within `timeout`.
        let within = self.timeout * 2 + self.shared.limits.delay;
        match self.wait_for(within, |s| s.flushes_done >= asked || s.stopped) {
            true => Ok(()),
            false => Err(OTelSdkError::Timeout(within)),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        {
            let mut state = self.shared.lock();
            if state.shutting_down {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.shutting_down = true;
        }
        self.shared.changed.notify_all();
        if !self.wait_for(timeout, |s| s.stopped) {
            return Err(OTelSdkError::Timeout(timeout));
        }
        let thread = self.thread.lock().map(|mut t| t.take());
        if let Ok(Some(thread)) = thread {
            let _ = thread.join();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.shared.lock().resource = protobuf::resource_fields(resource);
    }
}

/// Counts a span dropped, and says why at warn once per export cycle (a publisher sending
/// such spans must not flood the log).
fn dropped(mut state: MutexGuard<'_, State>, why: &str) {
    let first = !std::mem::replace(&mut state.dropping, true);
    let (spans, bytes) = (state.waiting, state.waiting_bytes);
    drop(state);
    metrics::counter!(TRACE_SPANS_DROPPED).increment(1);
    if first {
        warn!(
            spans,
            bytes,
            "tracing: spans are dropped: {why}; counted in ricochet_trace_spans_dropped_total"
        );
    }
}

/// The thread: waits for a full batch, a flush, shutdown or the schedule, then sends
/// every batch there is, one request each; at shutdown, what is left, then stops.
fn export_until_shutdown(shared: &Shared, exporter: &OtlpExporter) {
    // Never 0: a thread that waits for nothing would spin.
    let delay = shared.limits.delay.max(Duration::from_millis(1));
    let mut last_export = Instant::now();
    loop {
        let state = shared.lock();
        let (mut state, _) = (shared.changed)
            .wait_timeout_while(state, delay.saturating_sub(last_export.elapsed()), |s| {
                s.full.is_empty()
                    && s.flushes_done >= s.flushes_asked
                    && !s.shutting_down
                    && last_export.elapsed() < delay
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let flushes = state.flushes_asked;
        let last = state.shutting_down;
        let mut batches: Vec<Batch> = state.full.drain(..).collect();
        if state.filling.spans > 0 {
            batches.push(std::mem::take(&mut state.filling));
        }
        state.waiting = 0;
        state.waiting_bytes = 0;
        state.dropping = false;
        let resource = state.resource.clone();
        drop(state);
        last_export = Instant::now();
        for batch in batches {
            export(exporter, batch.body(&resource));
        }
        let mut state = shared.lock();
        state.flushes_done = flushes;
        state.stopped = last;
        drop(state);
        shared.changed.notify_all();
        if last {
            return;
        }
    }
}

/// One request, counted by result.
fn export(exporter: &OtlpExporter, body: Bytes) {
    let outcome = futures::executor::block_on(exporter.post(body));
    let result = if outcome.is_ok() { "ok" } else { "failed" };
    metrics::counter!(TRACE_EXPORTS, "result" => result).increment(1);
    if let Err(failure) = outcome {
        // The SDK's own diagnostics are off: say here when spans are lost.
        warn!(error = %failure, "tracing: a batch of spans could not be exported and is dropped");
    }
}

#[cfg(test)]
mod tests;
