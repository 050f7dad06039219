//! Sources: the first and last step of the flow. A source takes messages from its broker
//! (with its flow control, through the pipeline's admission), turns each into an
//! [`Inbound`](crate::message::Inbound), hands it to
//! [`Pipeline::deliver`](crate::pipeline::Pipeline::deliver) with a
//! [`Settle`](crate::message::Settle) handle, and carries out what the pipeline decided:
//! publish the reply or the dead letter to its broker, then ack, redeliver or terminate.
//!
//! Everything that is the same for every broker lives below: admission, validation, the
//! HTTP call, the settlement policy (`pipeline::policy`), the dead-letter header set, the
//! oversize rule, metrics and spans. A source only knows its broker: how to connect and
//! take messages, how to publish and settle, and what its idempotency key, correlation id
//! and dead-letter origin are.
//!
//! Adding a source: a folder here (its config, intake, publishing, and a [`Source`]
//! implementation for its config type) and one variant in [`SourceConfig`]; this file holds
//! the one `match` over source kinds.

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod jetstream;
pub mod kafka;
pub mod nats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::config::{SourceConfig, SourceKind};
use crate::config::RouteConfig;
use crate::pipeline::{Pipeline, Policy, Route, SourceFacts};
use crate::telemetry::trace::SpanSource;
use crate::telemetry::Health;

/// What a route's intake runs with: its route, the pipeline, the connections that outlive
/// a generation, and the generation's health, task tracker and stop token.
pub struct Context {
    pub route: Arc<Route>,
    pub pipeline: Arc<Pipeline>,
    /// The NATS connection, when a route uses NATS.
    pub nats: Option<nats::Nats>,
    pub health: Arc<Health>,
    /// Every message's task runs on it: stopping a generation waits for them.
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
}

/// A route's intake, running until its context's `stop`.
pub type Intake = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a kind of source is, for the rest of ricochet: implemented by each source's config
/// type, dispatched by [`SourceConfig`]'s one `match`.
pub trait Source {
    /// The `source` metric label and config value.
    const KIND: &'static str;
    /// Whether the broker keeps a message until it is settled (redelivery, dead letters).
    const DURABLE: bool;

    /// What becomes of a processed message: the source's redelivery settings.
    fn policy(&self) -> Policy;

    /// What the route's spans say of its messaging system and consumer.
    fn spans(&self, route: &RouteConfig, default_queue_group: &str) -> SpanSource;

    /// Messages that may wait inside ricochet for a slot of a full route (core NATS's
    /// `max_pending`); durable sources leave them in the broker.
    fn max_pending(&self, _route: &RouteConfig) -> usize {
        0
    }

    /// The route's intake, to run until `context.stop`; `None` when this kind of source is
    /// started with its siblings (core NATS subscribes every core route together).
    fn intake(&self, context: Context) -> Option<Intake>;
}

/// Dispatches one [`Source`] call to the route's source.
macro_rules! each_source {
    ($config:expr, $source:ident => $call:expr) => {
        match $config {
            SourceConfig::Nats($source) => $call,
            SourceConfig::Jetstream($source) => $call,
            SourceConfig::Kafka($source) => $call,
            SourceConfig::Amqp($source) => $call,
        }
    };
}

fn facts<S: Source>(source: &S, route: &RouteConfig, default_queue_group: &str) -> SourceFacts {
    SourceFacts {
        kind: S::KIND,
        durable: S::DURABLE,
        policy: source.policy(),
        max_pending: source.max_pending(route),
        spans: source.spans(route, default_queue_group),
    }
}

impl SourceConfig {
    /// What the pipeline needs to know of the route's source.
    pub fn facts(&self, route: &RouteConfig, default_queue_group: &str) -> SourceFacts {
        each_source!(self, source => facts(source, route, default_queue_group))
    }

    /// The route's intake (see [`Source::intake`]).
    pub fn intake(&self, context: Context) -> Option<Intake> {
        each_source!(self, source => source.intake(context))
    }
}
