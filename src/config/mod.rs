//! Configuration: the serde types with their named defaults.
//!
//! Loading (file, environment overrides, collecting every error) lives in `load.rs`;
//! cross-field checks in `validate.rs`; the small value types (`ByteSize`, `Secret`) in
//! `units.rs`; credentials in `nats.url` in `url_auth.rs`; errors in ricochet's words (no
//! value of a secret, no serde jargon) in `wording.rs`. Everything else in ricochet receives
//! an already validated [`Config`].

mod load;
mod print;
mod schemas;
mod security;
mod units;
mod url_auth;
mod validate;
mod wording;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::json::JsonSchema;

pub use load::{load, load_str, ConfigError, ConfigErrors, ENV_PREFIX};
pub use print::printable;
pub use security::{
    read_secret_file, NatsTlsConfig, SaslMechanism, SecretFileError, SecurityProtocol,
    TlsFilesConfig,
};
pub use units::{redact_url, ByteSize, Secret};
pub use url_auth::{has_userinfo, split_credentials, UrlAuth};
pub use validate::valid_topic;

/// Exit code for an invalid configuration (EX_USAGE from sysexits.h).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// OpenTelemetry traces, exported as OTLP; off unless enabled.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Where Avro schemas come from; required when a route validates or encodes Avro.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// Reading the configuration again while running (SIGHUP, or watching the file).
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Read route by route (see `load.rs`), then typed.
    #[serde(skip_deserializing)]
    pub routes: Vec<RouteConfig>,
}

/// `[reload]`: SIGHUP always reloads the configuration file; `watch` also reloads it when
/// the file changes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the file's modification time or size changes (checked every
    /// `watch_interval`; follows symlinks, so a Kubernetes ConfigMap update counts).
    #[serde(default)]
    pub watch: bool,
    #[serde(default = "defaults::watch_interval", with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            watch_interval: defaults::watch_interval(),
        }
    }
}

/// The async runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; see [`Config::runtime_threads`] for the default.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// How the async runtime runs, decided by [`Config::runtime_threads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeThreads {
    /// Everything on one thread: no cross-thread wake-ups or work stealing per message.
    Single,
    /// Worker threads; `None` is one per CPU core.
    Multi(Option<usize>),
}

impl Config {
    /// One thread unless configured otherwise, whatever the sources: a sidecar shares its
    /// pod's CPU with the service, and one thread moves a message with the fewest wake-ups
    /// (the benchmark measures it). librdkafka's blocking calls never run on it: each Kafka
    /// consumer polls on a thread of its own, and commits and transactions run on the
    /// blocking pool.
    pub fn runtime_threads(&self) -> RuntimeThreads {
        match self.runtime.worker_threads {
            None | Some(1) => RuntimeThreads::Single,
            threads => RuntimeThreads::Multi(threads),
        }
    }
}

/// Connection to the NATS server (core request-reply).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server URL, or several separated by commas.
    #[serde(default = "defaults::nats_url")]
    pub url: String,
    /// Connection name shown by `nats server report connections`.
    #[serde(default = "defaults::nats_name")]
    pub name: String,
    /// Queue group every route subscribes with, so replicas share the load.
    #[serde(default = "defaults::queue_group")]
    pub queue_group: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
    /// The password in a file (trailing newline ignored), instead of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An NKey user seed (`SU...`); the server knows its public key.
    #[serde(default)]
    pub nkey_seed: Option<Secret>,
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A credentials file (user JWT and NKey seed), as `nsc` writes it.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: NatsTlsConfig,
    #[serde(default = "defaults::nats_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Answer the NATS micro services API (`$SRV.PING|INFO|STATS`) as this service.
    #[serde(default)]
    pub service: Option<ServiceConfig>,
}

/// How ricochet presents the REST service it fronts on the NATS micro services API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Shared by every replica (letters, digits, `-`, `_`); each replica has its own id.
    pub name: String,
    /// Semantic version of the service.
    #[serde(default = "defaults::service_version")]
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The co-located REST service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Scheme, host, port and optional base path; messages can never change these.
    pub base_url: String,
    /// Timeout of one HTTP call, from sending the request to the end of the response body.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Larger response bodies are refused (502) instead of buffered.
    #[serde(default = "defaults::max_response_size")]
    pub max_response_size: ByteSize,
    /// Idle keep-alive connections kept in the pool.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// CA and client certificate for an `https` base URL.
    #[serde(default)]
    pub tls: TlsFilesConfig,
}

/// OpenTelemetry tracing: spans per message exported over OTLP (HTTP/protobuf).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Off by default: then ricochet makes no spans and passes `traceparent`, `tracestate`
    /// and `baggage` through to the service unchanged.
    #[serde(default)]
    pub enabled: bool,
    /// The collector's OTLP/HTTP traces endpoint (plain `http://`: a collector or agent
    /// beside ricochet).
    #[serde(default = "defaults::otlp_endpoint")]
    pub endpoint: String,
    /// The share of new traces recorded (0.0 to 1.0); a message that carries a trace
    /// context follows its parent's sampling decision.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Further resource attributes, e.g. `{ "deployment.environment.name" = "prod" }`.
    #[serde(default)]
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// How long one export may take.
    #[serde(default = "defaults::otlp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: defaults::otlp_endpoint(),
            sample_ratio: defaults::sample_ratio(),
            service_name: defaults::service_name(),
            resource_attributes: Default::default(),
            timeout: defaults::otlp_timeout(),
        }
    }
}

/// The admin HTTP server: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long ricochet may take after SIGTERM in all: in-flight requests get all of it but
    /// a reserve (a fifth, at most 5 s) for flushing the last replies and spans.
    #[serde(default = "defaults::grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "ricochet=debug,async_nats=warn". `RUST_LOG` wins.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A route as written in the file: what serde reads and `validate::route` checks. Every
/// source's keys are there, so that a key on the wrong kind of route is reported with its
/// key path; [`RouteConfig::from_file`] then gives the typed form the rest of ricochet uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Used in logs and as the `route` metric label.
    pub name: String,
    /// NATS subject pattern: literal tokens, `*`, a final `>`, and named tokens `{id}`.
    pub subject: String,
    #[serde(default = "defaults::method")]
    pub method: String,
    /// Path (and optional query) template; `{name}` is replaced by the captured token.
    pub path: String,
    /// Timeout of each HTTP attempt; overrides `upstream.request_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The message's deadline: all attempts and backoff together. A caller may shorten it
    /// with the `Ricochet-Timeout` request header. Default: enough for every attempt.
    #[serde(default, with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    /// Statuses besides 2xx that count as success (for the breaker, retries and metrics).
    #[serde(default)]
    pub success_statuses: Vec<u16>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// Absent: no rate limit (only `max_in_flight`).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Where the requests come from: core NATS subscriptions or a JetStream consumer.
    #[serde(default)]
    pub source: SourceKind,
    /// Delivery guarantee of a durable source (JetStream): default `at_least_once`.
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// Durable sources: request header naming the reply destination.
    #[serde(default = "defaults::reply_to_header")]
    pub reply_to_header: String,
    /// Durable sources: reply destination when the request names none.
    #[serde(default)]
    pub reply_subject: Option<String>,
    /// Request header echoed on the reply, to match replies to requests.
    #[serde(default = "defaults::correlation_header")]
    pub correlation_header: String,
    /// Durable sources: where messages go that can never be delivered.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Required when `source = "jetstream"`.
    #[serde(default)]
    pub jetstream: Option<JetStreamConfig>,
    /// Required when `source = "kafka"`.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Required when `source = "amqp"`.
    #[serde(default)]
    pub amqp: Option<AmqpConfig>,
    /// Messages of this route processed at the same time.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Larger messages get a 413 error reply and never reach the service.
    #[serde(default = "defaults::max_payload")]
    pub max_payload: ByteSize,
    /// Content-Type sent when the message has none.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Overrides `nats.queue_group` for this route.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Core NATS: messages that may wait for a `max_in_flight` slot; more are answered 503
    /// `overloaded` at once. Default: `max_in_flight`.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Which message headers become HTTP request headers.
    #[serde(default)]
    pub request_headers: HeaderFilterConfig,
    /// Which HTTP response headers become reply headers.
    #[serde(default)]
    pub response_headers: HeaderFilterConfig,
    /// What a request must be before the service is called, and what its answer must be.
    #[serde(default)]
    pub validate: Option<ValidateConfig>,
}

/// One subject pattern mapped to one HTTP endpoint, validated. Field meanings as in
/// [`RouteFile`]. It serializes as the [`RouteFile`] it came from (see [`RouteConfig::to_file`]),
/// so that `ricochet check --print` reads back as the same route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub subject: String,
    pub method: String,
    pub path: String,
    pub timeout: Option<Duration>,
    pub total_timeout: Option<Duration>,
    pub success_statuses: Vec<u16>,
    pub retry: RetryConfig,
    pub circuit_breaker: BreakerConfig,
    pub rate_limit: Option<RateLimitConfig>,
    pub reply_to_header: String,
    pub correlation_header: String,
    pub max_in_flight: usize,
    pub max_payload: ByteSize,
    pub content_type: Option<String>,
    pub request_headers: HeaderFilterConfig,
    pub response_headers: HeaderFilterConfig,
    pub validate: Option<ValidateConfig>,
    /// The JSON Schemas `validate` names, compiled once when the configuration loads.
    pub schemas: CompiledSchemas,
    /// Where the requests come from, with that source's settings.
    pub source: SourceConfig,
}

impl Serialize for RouteConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_file().serialize(serializer)
    }
}

/// A route's JSON Schemas, compiled.
#[derive(Debug, Clone, Default)]
pub struct CompiledSchemas {
    /// `validate.schema`.
    pub request: Option<JsonSchema>,
    /// `validate.response.schema`.
    pub response: Option<JsonSchema>,
}

impl CompiledSchemas {
    /// Whether both hold the same schema documents (a file's content may change while its
    /// path stays).
    pub fn same_documents(&self, other: &Self) -> bool {
        let document = |schema: &Option<JsonSchema>| schema.as_ref().map(|s| s.document().clone());
        document(&self.request) == document(&other.request)
            && document(&self.response) == document(&other.response)
    }
}

/// The Confluent-compatible schema registry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// `http://host:port[/base/path]`.
    pub url: String,
    /// Timeout of one registry request (connect, send, whole answer).
    #[serde(default = "defaults::registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long the latest version of a subject (for encoding replies) is used before it is
    /// asked for again. Schemas by id are cached for good: an id never changes its schema.
    #[serde(
        default = "defaults::registry_latest_refresh",
        with = "humantime_serde"
    )]
    pub latest_refresh: Duration,
}

/// `[routes.validate]`: what a request must be. Checked before the service is called; a
/// request that fails gets a 400 error reply listing the violations and, on a durable
/// source, is dead-lettered at once with reason `validation`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The body's format; absent: only the header and content-type rules apply.
    #[serde(default)]
    pub format: Option<BodyFormat>,
    /// `format = "json_schema"`: the JSON Schema file (draft 2020-12 or 7).
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// `format = "avro"`: only schema ids that are versions of this registry subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// `format = "avro"`: `"json"` hands the service the record as JSON.
    #[serde(default)]
    pub decode: Option<Decode>,
    /// Media types a request may have (`Content-Type`, or the route's `content_type`);
    /// empty: any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Most headers a request may carry.
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Most bytes all header names and values of a request may take together.
    #[serde(default)]
    pub max_header_bytes: Option<ByteSize>,
    /// What the service's 2xx answers must be, and whether they are encoded as Avro.
    #[serde(default)]
    pub response: Option<ResponseValidateConfig>,
}

/// `[routes.validate.response]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseValidateConfig {
    /// `json_schema` (with `schema`) or `avro` (the body in the wire format, with a version
    /// of `subject`).
    #[serde(default)]
    pub format: Option<BodyFormat>,
    #[serde(default)]
    pub schema: Option<PathBuf>,
    #[serde(default)]
    pub subject: Option<String>,
    /// `"avro"`: the service answers JSON; the reply is that JSON encoded with `subject`'s
    /// schema (`version`, else the latest) in the wire format.
    #[serde(default)]
    pub encode: Option<Encode>,
    #[serde(default)]
    pub version: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    JsonSchema,
    Avro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encode {
    Avro,
}

/// The source-specific part of a route: one variant per source, so settings of one source
/// cannot appear on a route of another.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Core NATS request-reply: queue subscriptions, replies to the request's inbox.
    Nats(NatsSource),
    /// A durable JetStream pull consumer.
    Jetstream(JetStreamSource),
    /// A Kafka consumer group.
    Kafka(KafkaSource),
    /// A RabbitMQ (AMQP 0-9-1) queue, RPC style: replies to each request's `reply_to`.
    Amqp(AmqpSource),
}

/// A core NATS route's source: the route keys only core NATS routes have.
#[derive(Debug, Clone, Serialize)]
pub struct NatsSource {
    /// Overrides `nats.queue_group`.
    pub queue_group: Option<String>,
    /// Messages that may wait for a slot when the route is full; more are shed.
    pub max_pending: usize,
}

/// A JetStream route's source: its `[routes.jetstream]` table and the route keys only
/// JetStream routes have.
#[derive(Debug, Clone, Serialize)]
pub struct JetStreamSource {
    pub settings: JetStreamConfig,
    pub delivery: Delivery,
    pub reply_subject: Option<String>,
    pub dead_letter: Option<String>,
}

/// A Kafka route's source: its `[routes.kafka]` table and its delivery guarantee.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaSource {
    pub settings: KafkaConfig,
    pub delivery: Delivery,
}

/// An AMQP route's source: its `[routes.amqp]` table and its delivery guarantee.
#[derive(Debug, Clone, Serialize)]
pub struct AmqpSource {
    pub settings: AmqpConfig,
    pub delivery: Delivery,
}

impl SourceConfig {
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Nats(_) => SourceKind::Nats,
            SourceConfig::Jetstream(_) => SourceKind::Jetstream,
            SourceConfig::Kafka(_) => SourceKind::Kafka,
            SourceConfig::Amqp(_) => SourceKind::Amqp,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Core NATS request-reply (queue subscriptions).
    #[default]
    Nats,
    /// A durable JetStream pull consumer.
    Jetstream,
    /// A Kafka consumer group.
    Kafka,
    /// A RabbitMQ queue (AMQP 0-9-1).
    Amqp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Acknowledge on receipt: a crash loses the message, nothing is ever repeated.
    AtMostOnce,
    /// Acknowledge after the reply is confirmed: a crash repeats the message.
    #[default]
    AtLeastOnce,
    /// Kafka only: the reply and the consumer's offsets in one transaction.
    ExactlyOnce,
}

/// The name a route's consumer goes by when the config names none: its Kafka group, its
/// JetStream durable consumer and its AMQP consumer tag.
pub fn default_consumer_name(route: &str) -> String {
    format!("ricochet-{route}")
}

impl KafkaConfig {
    /// The consumer group: `group_id`, else [`default_consumer_name`].
    pub fn group(&self, route: &str) -> String {
        (self.group_id.clone()).unwrap_or_else(|| default_consumer_name(route))
    }
}

impl JetStreamConfig {
    /// The durable consumer: `durable`, else [`default_consumer_name`].
    pub fn durable_name(&self, route: &str) -> String {
        (self.durable.clone()).unwrap_or_else(|| default_consumer_name(route))
    }
}

/// A route's Kafka consumer group and reply producer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Default: `ricochet-<route name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Topics to consume. Default: the route's `subject` as a topic name, or as a pattern
    /// when it has wildcards.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression of topic names, instead of `topics`.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    #[serde(default)]
    pub ordering: Ordering,
    /// Reply topic when the request has no `reply-to` header.
    #[serde(default)]
    pub reply_topic: Option<String>,
    /// Topic for records that can never be delivered.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Compression of replies and dead letters.
    #[serde(default)]
    pub compression: Compression,
    /// Delay before the nth local retry of a record after a retryable failure (the last
    /// entry repeats). The record is retried, never skipped...
    #[serde(
        default = "defaults::redelivery_backoff",
        deserialize_with = "units::duration_list",
        serialize_with = "units::serialize_duration_list"
    )]
    pub retry_backoff: Vec<Duration>,
    /// ...unless this is set: dead-letter after this many processing rounds.
    #[serde(default)]
    pub dead_letter_after: Option<u32>,
    /// Exactly-once: the producer's transactional id, unique per replica and stable across
    /// its restarts (a restart fences the transaction it left open). Default:
    /// `ricochet-<group id>-<hostname>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    #[serde(default)]
    /// TLS and SASL to the brokers: `plaintext` (default), `ssl`, `sasl_plaintext`, `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// PEM CA file for `ssl`/`sasl_ssl`; default: the system's roots.
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `ssl_key_file`.
    #[serde(default)]
    pub ssl_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key_file: Option<PathBuf>,
    /// Verify the broker's host name against its certificate (`https`); on by default.
    #[serde(default = "defaults::enabled")]
    pub ssl_hostname_verification: bool,
    /// Default `PLAIN` when the protocol is `sasl_*`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// The password in a file (trailing newline ignored), read when the client is made.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Extra librdkafka properties of the consumer, e.g. `"fetch.wait.max.ms" = "10"`.
    #[serde(default)]
    pub consumer: std::collections::BTreeMap<String, String>,
    /// Extra librdkafka properties of the reply producer.
    #[serde(default)]
    pub producer: std::collections::BTreeMap<String, String>,
}

/// Which records of a route may be processed at the same time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// One record at a time per partition.
    Partition,
    /// Records with the same key in order; different keys in parallel.
    #[default]
    Key,
    /// All in parallel, up to `max_in_flight`.
    Unordered,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A route's RabbitMQ queue, and where its replies, redeliveries and dead letters go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://host:port/vhost` or `amqps://...`; credentials may be in it, or below.
    pub url: String,
    /// User name; overrides one in `url`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password; overrides one in `url`. Or from a file: `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The queue to consume. Default: the route's `subject` (which must then be literal).
    /// Declared durable when missing; an existing queue is used as it is.
    #[serde(default)]
    pub queue: Option<String>,
    /// Type of the queue when ricochet declares it.
    #[serde(default)]
    pub queue_type: QueueType,
    /// An exchange to bind the queue to (it must exist). Without it, requests are published
    /// to the queue through the default exchange.
    #[serde(default)]
    pub exchange: Option<String>,
    /// Binding keys on `exchange`. Default: the route's subject in AMQP topic syntax
    /// (`{id}` and `*` as `*`, a final `>` as `#`).
    #[serde(default)]
    pub routing_keys: Vec<String>,
    /// Default: `ricochet-<route name>`.
    #[serde(default)]
    pub consumer_tag: Option<String>,
    /// Deliveries before a message that keeps failing is dead-lettered.
    #[serde(default = "defaults::max_deliver")]
    pub max_deliver: u32,
    /// Delay of the nth redelivery after a retryable failure (the last entry repeats); each
    /// distinct delay is a retry queue with that TTL.
    #[serde(
        default = "defaults::redelivery_backoff",
        deserialize_with = "units::duration_list",
        serialize_with = "units::serialize_duration_list"
    )]
    pub redelivery_backoff: Vec<Duration>,
    /// Exchange for messages that can never be delivered, published with ricochet's
    /// dead-letter headers. Without it they are rejected (`requeue = false`), which the
    /// queue's own dead-letter exchange, if it has one, receives.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Default: the message's own routing key.
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// CA and client certificate for an `amqps://` URL.
    #[serde(default)]
    pub tls: TlsFilesConfig,
}

/// `x-queue-type` of a queue ricochet declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    /// Replicated; counts deliveries itself (`x-delivery-count`).
    Quorum,
}

/// A route's JetStream consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The stream holding the requests; it must exist.
    pub stream: String,
    /// Durable consumer name: created if missing, updated/bound if it exists.
    /// Default: `ricochet-<route name>`.
    #[serde(default)]
    pub durable: Option<String>,
    /// Default: the route's subject, with named tokens as `*`.
    #[serde(default)]
    pub filter_subjects: Vec<String>,
    /// How long the server waits for an ack before redelivering.
    #[serde(default = "defaults::ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    #[serde(default = "defaults::max_deliver")]
    pub max_deliver: u32,
    /// Delay of the nth redelivery after a retryable failure (the last entry repeats).
    #[serde(
        default = "defaults::redelivery_backoff",
        deserialize_with = "units::duration_list",
        serialize_with = "units::serialize_duration_list"
    )]
    pub redelivery_backoff: Vec<Duration>,
    /// Messages delivered but not yet acknowledged, across all replicas.
    #[serde(default = "defaults::max_ack_pending")]
    pub max_ack_pending: u32,
    /// Tell the server a slow call is still running (every `ack_wait` / 2) so it does not
    /// redeliver the message meanwhile.
    #[serde(default = "defaults::enabled")]
    pub in_progress: bool,
}

/// Retries with exponential backoff, per route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total, the first one included; 1 disables retries.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::initial_interval", with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(default = "defaults::max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    #[serde(default = "defaults::multiplier")]
    pub multiplier: f64,
    /// Each delay is randomised by +/- this fraction (0 = exact delays).
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// Statuses and conditions (`connect-failure`, `reset`, `timeout`) worth retrying.
    /// Unset: the source's default ([`RouteConfig::retry_on`]).
    #[serde(default)]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Retry POST, PATCH and other non-idempotent methods even without `Idempotency-Key`.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Retries may add at most this fraction of the route's requests over `budget_window`...
    #[serde(default = "defaults::budget_ratio")]
    pub budget_ratio: f64,
    #[serde(default = "defaults::budget_window", with = "humantime_serde")]
    pub budget_window: Duration,
    /// ...but this many retries per second are always allowed, so that low traffic retries.
    #[serde(default = "defaults::budget_min_per_second")]
    pub budget_min_per_second: u32,
}

/// A status code, or a failure that produced no status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    Status(u16),
    Condition(RetryCondition),
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(code) => serializer.serialize_u16(*code),
            RetryOn::Condition(RetryCondition::ConnectFailure) => {
                serializer.serialize_str("connect-failure")
            }
            RetryOn::Condition(RetryCondition::Reset) => serializer.serialize_str("reset"),
            RetryOn::Condition(RetryCondition::Timeout) => serializer.serialize_str("timeout"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        const EXPECTED: &str =
            "a status code like 503, or \"connect-failure\", \"reset\" or \"timeout\"";
        match toml::Value::deserialize(deserializer)? {
            toml::Value::Integer(code) => u16::try_from(code)
                .map(RetryOn::Status)
                .map_err(|_| D::Error::invalid_value(Unexpected::Signed(code), &EXPECTED)),
            toml::Value::String(text) => match text.as_str() {
                "connect-failure" => Ok(RetryOn::Condition(RetryCondition::ConnectFailure)),
                "reset" => Ok(RetryOn::Condition(RetryCondition::Reset)),
                "timeout" => Ok(RetryOn::Condition(RetryCondition::Timeout)),
                other => Err(D::Error::invalid_value(Unexpected::Str(other), &EXPECTED)),
            },
            _ => Err(D::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    /// The connection could not be opened: the request never reached the service.
    ConnectFailure,
    /// The connection broke during the exchange.
    Reset,
    /// The attempt ran out of time.
    Timeout,
}

/// Circuit breaker, per route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Opens after this many failed attempts in a row...
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// ...or when this fraction of the last `window_calls` attempts failed, once at least
    /// `minimum_calls` were made.
    #[serde(default = "defaults::failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "defaults::window_calls")]
    pub window_calls: u32,
    #[serde(default = "defaults::minimum_calls")]
    pub minimum_calls: u32,
    /// Open this long after the first trip; doubled on each further trip up to the max.
    #[serde(default = "defaults::break_duration", with = "humantime_serde")]
    pub break_duration: Duration,
    #[serde(default = "defaults::max_break_duration", with = "humantime_serde")]
    pub max_break_duration: Duration,
    /// Probe requests let through while half-open; this many successes close the breaker.
    #[serde(default = "defaults::half_open_probes")]
    pub half_open_probes: u32,
}

/// Token-bucket rate limits, per route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub messages_per_second: Option<u32>,
    /// Messages allowed at once above the rate; default: one second's worth.
    #[serde(default)]
    pub burst_messages: Option<u32>,
    #[serde(default)]
    pub bytes_per_second: Option<ByteSize>,
    /// Default: one second's worth, and never less than `max_payload`.
    #[serde(default)]
    pub burst_bytes: Option<ByteSize>,
    #[serde(default)]
    pub mode: RateLimitMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitMode {
    /// Hold the message until the limit allows it, within its deadline.
    #[default]
    Wait,
    /// Answer 429 at once.
    Reject,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            initial_interval: defaults::initial_interval(),
            max_interval: defaults::max_interval(),
            multiplier: defaults::multiplier(),
            jitter: defaults::jitter(),
            retry_on: None,
            retry_non_idempotent: false,
            budget_ratio: defaults::budget_ratio(),
            budget_window: defaults::budget_window(),
            budget_min_per_second: defaults::budget_min_per_second(),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: defaults::enabled(),
            consecutive_failures: defaults::consecutive_failures(),
            failure_rate: defaults::failure_rate(),
            window_calls: defaults::window_calls(),
            minimum_calls: defaults::minimum_calls(),
            break_duration: defaults::break_duration(),
            max_break_duration: defaults::max_break_duration(),
            half_open_probes: defaults::half_open_probes(),
        }
    }
}

/// Allow/deny list of header names (case-insensitive). An empty `allow` allows all.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilterConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: defaults::nats_url(),
            name: defaults::nats_name(),
            queue_group: defaults::queue_group(),
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: NatsTlsConfig::default(),
            connect_timeout: defaults::nats_connect_timeout(),
            service: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: defaults::grace_period(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: defaults::log_level(),
            format: LogFormat::Text,
        }
    }
}

impl SourceKind {
    /// The `source` metric label and config value.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Nats => "nats",
            SourceKind::Jetstream => "jetstream",
            SourceKind::Kafka => "kafka",
            SourceKind::Amqp => "amqp",
        }
    }

    /// Whether routes of this source need the NATS connection.
    pub fn uses_nats(self) -> bool {
        matches!(self, SourceKind::Nats | SourceKind::Jetstream)
    }

    /// Durable sources keep a message until it is settled, so they can redeliver it later.
    pub fn is_durable(self) -> bool {
        self != SourceKind::Nats
    }
}

impl RouteConfig {
    /// The typed route of a file route that passed `validate::route`; `None` when a source
    /// table it needs is missing (already reported by validation).
    pub fn from_file(file: RouteFile) -> Option<Self> {
        let source = match file.source {
            SourceKind::Nats => SourceConfig::Nats(NatsSource {
                queue_group: file.queue_group,
                max_pending: file.max_pending.unwrap_or(file.max_in_flight),
            }),
            SourceKind::Jetstream => SourceConfig::Jetstream(JetStreamSource {
                settings: file.jetstream?,
                delivery: file.delivery.unwrap_or_default(),
                reply_subject: file.reply_subject,
                dead_letter: file.dead_letter,
            }),
            SourceKind::Kafka => SourceConfig::Kafka(KafkaSource {
                settings: file.kafka?,
                delivery: file.delivery.unwrap_or_default(),
            }),
            SourceKind::Amqp => SourceConfig::Amqp(AmqpSource {
                settings: file.amqp?,
                delivery: file.delivery.unwrap_or_default(),
            }),
        };
        Some(Self {
            name: file.name,
            subject: file.subject,
            method: file.method,
            path: file.path,
            timeout: file.timeout,
            total_timeout: file.total_timeout,
            success_statuses: file.success_statuses,
            retry: file.retry,
            circuit_breaker: file.circuit_breaker,
            rate_limit: file.rate_limit,
            reply_to_header: file.reply_to_header,
            correlation_header: file.correlation_header,
            max_in_flight: file.max_in_flight,
            max_payload: file.max_payload,
            content_type: file.content_type,
            request_headers: file.request_headers,
            response_headers: file.response_headers,
            validate: file.validate,
            schemas: CompiledSchemas::default(),
            source,
        })
    }

    /// The route as a file would say it, with every default written out: the inverse of
    /// [`Self::from_file`], so printing and loading again gives the same route.
    pub fn to_file(&self) -> RouteFile {
        let mut file = RouteFile {
            name: self.name.clone(),
            subject: self.subject.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            timeout: self.timeout,
            total_timeout: self.total_timeout,
            success_statuses: self.success_statuses.clone(),
            retry: self.retry.clone(),
            circuit_breaker: self.circuit_breaker.clone(),
            rate_limit: self.rate_limit.clone(),
            source: self.source.kind(),
            delivery: None,
            reply_to_header: self.reply_to_header.clone(),
            reply_subject: None,
            correlation_header: self.correlation_header.clone(),
            dead_letter: None,
            jetstream: None,
            kafka: None,
            amqp: None,
            max_in_flight: self.max_in_flight,
            max_payload: self.max_payload,
            content_type: self.content_type.clone(),
            queue_group: None,
            max_pending: None,
            request_headers: self.request_headers.clone(),
            response_headers: self.response_headers.clone(),
            validate: self.validate.clone(),
        };
        match &self.source {
            SourceConfig::Nats(NatsSource {
                queue_group,
                max_pending,
            }) => {
                file.queue_group = queue_group.clone();
                file.max_pending = Some(*max_pending);
            }
            SourceConfig::Jetstream(js) => {
                file.jetstream = Some(js.settings.clone());
                file.delivery = Some(js.delivery);
                file.reply_subject = js.reply_subject.clone();
                file.dead_letter = js.dead_letter.clone();
            }
            SourceConfig::Kafka(kafka) => {
                file.kafka = Some(kafka.settings.clone());
                file.delivery = Some(kafka.delivery);
            }
            SourceConfig::Amqp(amqp) => {
                file.amqp = Some(amqp.settings.clone());
                file.delivery = Some(amqp.delivery);
            }
        }
        file
    }

    /// What this route retries: `retry.retry_on`, else the default of its source.
    pub fn retry_on(&self) -> Vec<RetryOn> {
        (self.retry.retry_on.clone())
            .unwrap_or_else(|| defaults::retry_on(self.source.kind().is_durable()))
    }

    /// The per-attempt HTTP timeout of this route.
    pub fn timeout_or(&self, upstream: &UpstreamConfig) -> Duration {
        self.timeout.unwrap_or(upstream.request_timeout)
    }

    /// The message deadline: `total_timeout`, else every attempt at its full timeout plus
    /// the longest backoff between them.
    pub fn total_timeout_or(&self, upstream: &UpstreamConfig) -> Duration {
        self.total_timeout.unwrap_or_else(|| {
            let attempts = self.retry.max_attempts.max(1);
            self.timeout_or(upstream) * attempts + self.retry.max_interval * (attempts - 1)
        })
    }
}

/// Named defaults, so the documentation and the code agree on one value each.
pub mod defaults {
    use super::{ByteSize, RetryCondition, RetryOn};
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn nats_url() -> String {
        "nats://127.0.0.1:4222".into()
    }
    pub fn nats_name() -> String {
        "ricochet".into()
    }
    pub fn queue_group() -> String {
        "ricochet".into()
    }
    pub fn nats_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn service_version() -> String {
        "0.0.0".into()
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn max_response_size() -> ByteSize {
        ByteSize(8 * 1024 * 1024)
    }
    pub fn pool_max_idle() -> usize {
        256
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9464))
    }
    /// Inside Kubernetes' default `terminationGracePeriodSeconds` (30 s) with margin.
    pub fn grace_period() -> Duration {
        Duration::from_secs(25)
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn otlp_endpoint() -> String {
        "http://127.0.0.1:4318/v1/traces".into()
    }
    pub fn sample_ratio() -> f64 {
        1.0
    }
    pub fn service_name() -> String {
        "ricochet".into()
    }
    pub fn otlp_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn watch_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn method() -> String {
        "POST".into()
    }
    pub fn max_in_flight() -> usize {
        64
    }
    pub fn max_payload() -> ByteSize {
        ByteSize(1024 * 1024)
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn initial_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub fn max_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn multiplier() -> f64 {
        2.0
    }
    pub fn jitter() -> f64 {
        0.2
    }
    /// Core NATS: a caller waits, so only what is likely to pass on a quick second try.
    /// Durable sources: also every other 5xx but 501 (Not Implemented) and 505 (HTTP
    /// Version Not Supported), which no later attempt changes. A 500 is often a passing
    /// fault (a restart, a lost database connection); a durable source can afford to try
    /// again later instead of turning it into a final answer, as Dapr, Knative and Envoy's
    /// `5xx` policy do.
    pub fn retry_on(durable: bool) -> Vec<RetryOn> {
        let statuses: Vec<u16> = if durable {
            [408, 429]
                .into_iter()
                .chain((500..=599).filter(|s| !matches!(s, 501 | 505)))
                .collect()
        } else {
            vec![408, 429, 502, 503, 504]
        };
        let mut list: Vec<RetryOn> = statuses.into_iter().map(RetryOn::Status).collect();
        list.extend(
            [
                RetryCondition::ConnectFailure,
                RetryCondition::Reset,
                RetryCondition::Timeout,
            ]
            .map(RetryOn::Condition),
        );
        list
    }
    pub fn budget_ratio() -> f64 {
        0.2
    }
    pub fn budget_window() -> Duration {
        Duration::from_secs(10)
    }
    pub fn budget_min_per_second() -> u32 {
        10
    }
    pub fn enabled() -> bool {
        true
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn failure_rate() -> f64 {
        0.5
    }
    pub fn window_calls() -> u32 {
        100
    }
    pub fn minimum_calls() -> u32 {
        20
    }
    pub fn break_duration() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_break_duration() -> Duration {
        Duration::from_secs(60)
    }
    pub fn half_open_probes() -> u32 {
        1
    }
    pub fn reply_to_header() -> String {
        "reply-to".into()
    }
    pub fn correlation_header() -> String {
        "correlation-id".into()
    }
    pub fn ack_wait() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_deliver() -> u32 {
        5
    }
    pub fn redelivery_backoff() -> Vec<Duration> {
        [1, 5, 30].map(Duration::from_secs).to_vec()
    }
    pub fn max_ack_pending() -> u32 {
        1000
    }
    pub fn registry_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn registry_latest_refresh() -> Duration {
        Duration::from_secs(60)
    }
}
