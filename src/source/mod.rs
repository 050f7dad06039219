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
//! implementation for its config type) and one line in `sources!` below, which generates
//! [`SourceConfig`] and every dispatch over it (`memory/`, a toy compiled only in tests,
//! shows it).

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod jetstream;
pub mod kafka;
#[cfg(test)]
pub mod memory;
pub mod nats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
/// type (its route keys and table, read with `deny_unknown_fields`), dispatched by
/// [`SourceConfig`], which `sources!` generates.
pub trait Source: serde::Serialize + serde::de::DeserializeOwned {
    /// The `source` config value and metric label.
    const KIND: &'static str;
    /// Whether the broker keeps a message until it is settled (redelivery, dead letters).
    const DURABLE: bool;
    /// Whether its routes use the NATS connection ricochet keeps across routes and
    /// configuration reloads.
    const USES_NATS: bool = false;
    /// When the source has a `[routes.<KIND>]` table, which is then required: what to say
    /// when it is missing.
    const TABLE_HINT: Option<&'static str> = None;

    /// Its checks of itself and against the route's common settings (keys relative to the
    /// route), beyond what its types say.
    fn check(&self, _route: &RouteConfig, _push: &mut dyn FnMut(&str, String)) {}

    /// The route's HTTP deadline against the broker's own deadline for a message in hand.
    fn check_deadline(&self, _deadline: Duration, _push: &mut dyn FnMut(&str, String)) {}

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

/// The one list of source kinds: the `SourceConfig` enum and every dispatch over it are
/// generated from it. Adding a source is its folder and one line here.
macro_rules! sources {
    ($($(#[doc = $doc:literal])* $(#[cfg($cfg:meta)])? $variant:ident($source:ty),)+) => {
        /// The source part of a route: one variant per source, so settings of one source
        /// cannot appear on a route of another.
        #[derive(Debug, Clone)]
        pub enum SourceConfig {
            $($(#[doc = $doc])* $(#[cfg($cfg)])? $variant($source),)+
        }

        impl SourceConfig {
            /// Every source's `source` value, the default (no `source` key) first.
            pub fn kinds() -> &'static [&'static str] {
                static KINDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
                KINDS.get_or_init(|| {
                    // Pushed one by one: a variant may exist only in tests.
                    #[allow(clippy::vec_init_then_push)]
                    let kinds = {
                        let mut kinds = Vec::new();
                        $($(#[cfg($cfg)])? kinds.push(<$source as Source>::KIND);)+
                        kinds
                    };
                    kinds
                })
            }

            /// The `source` value and metric label of this route's source.
            pub fn kind(&self) -> &'static str {
                match self { $($(#[cfg($cfg)])? Self::$variant(_) => <$source as Source>::KIND,)+ }
            }

            /// Whether the broker keeps a message until it is settled.
            pub fn durable(&self) -> bool {
                match self { $($(#[cfg($cfg)])? Self::$variant(_) => <$source as Source>::DURABLE,)+ }
            }

            /// Whether the route needs the NATS connection ricochet shares across routes.
            pub fn uses_nats(&self) -> bool {
                match self { $($(#[cfg($cfg)])? Self::$variant(_) => <$source as Source>::USES_NATS,)+ }
            }

            /// What the pipeline needs to know of the route's source.
            pub fn facts(&self, route: &RouteConfig, default_queue_group: &str) -> SourceFacts {
                match self { $($(#[cfg($cfg)])? Self::$variant(source) => facts(source, route, default_queue_group),)+ }
            }

            /// The route's intake (see [`Source::intake`]).
            pub fn intake(&self, context: Context) -> Option<Intake> {
                match self { $($(#[cfg($cfg)])? Self::$variant(source) => source.intake(context),)+ }
            }

            /// The source's checks of itself and against the route's common settings; keys
            /// relative to the route.
            pub fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
                match self { $($(#[cfg($cfg)])? Self::$variant(source) => Source::check(source, route, push),)+ }
            }

            /// The route's HTTP deadline (all attempts) against the broker's own deadline
            /// for a message in hand: the broker must not redeliver a message ricochet
            /// still works on.
            pub fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
                match self {
                    $($(#[cfg($cfg)])? Self::$variant(source) => Source::check_deadline(source, deadline, push),)+
                }
            }

            /// The source part as a TOML value (its fields, defaults written out).
            fn to_value(&self) -> Result<toml::Value, toml::ser::Error> {
                match self { $($(#[cfg($cfg)])? Self::$variant(source) => toml::Value::try_from(source),)+ }
            }

            /// The route keys of the source `kind`, as its type's fields name them.
            pub fn keys_of(kind: &str) -> &'static [&'static str] {
                $($(#[cfg($cfg)])? if kind == <$source as Source>::KIND {
                    return crate::config::field_names::<$source>();
                })+
                &[]
            }

            /// What to say when the source `kind`'s own `[routes.<kind>]` table is missing,
            /// if it needs one (serde's "missing field" would not say what it needs).
            fn table_hint_of(kind: &str) -> Option<&'static str> {
                $($(#[cfg($cfg)])? if kind == <$source as Source>::KIND {
                    return <$source as Source>::TABLE_HINT;
                })+
                None
            }

            /// The source part of a route of `kind`, read as that source's type.
            fn parse(
                kind: &str,
                document: &crate::config::Document,
                part: toml::Value,
                prefix: &str,
            ) -> (Option<Self>, Vec<crate::config::ConfigError>) {
                $($(#[cfg($cfg)])? if kind == <$source as Source>::KIND {
                    let (parsed, errors) = document.deserialize::<$source>(part, prefix);
                    return (parsed.map(Self::$variant), errors);
                })+
                (None, Vec::new())
            }
        }
    };
}

sources! {
    /// Core NATS request-reply: queue subscriptions, replies to the request's inbox.
    Nats(nats::NatsSource),
    /// A durable JetStream pull consumer.
    Jetstream(jetstream::JetStreamSource),
    /// A Kafka consumer group.
    Kafka(kafka::KafkaSource),
    /// A RabbitMQ (AMQP 0-9-1) queue, RPC style: replies to each request's `reply_to`.
    Amqp(amqp::AmqpSource),
    /// In tests: a toy source that shows (and holds) what adding a source takes.
    #[cfg(test)]
    Memory(memory::MemorySource),
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
