//! Configuration, the bottom layer: the file's shared sections (`[nats]`, `[upstream]`,
//! `[tracing]`, `[admin]`, `[shutdown]`, `[log]`, `[reload]`, `[runtime]`,
//! `[schema_registry]`), the common part of a route (`RouteConfig`: everything a route has
//! whatever its source, with its retry, breaker, rate limit, header and validate tables),
//! units, secrets, TLS, [`Delivery`], named defaults, and the loading machinery (errors with
//! key paths, environment overrides, deserializing every key to report every problem,
//! errors in ricochet's words).
//!
//! It imports nothing of ricochet but `crate::route` (subject patterns, which depend on
//! nothing). A source's keys, defaults and checks live in `source/<name>/config.rs`; the
//! whole file (common part, each route's source part, checks that need the mapping or the
//! JSON Schema compiler) is put together by `crate::settings`, which everything else
//! receives already validated.
//!
//! Files: `load.rs` (reading, env overrides, collecting errors), `validate.rs` (checks of
//! the shared sections), `base_url.rs` (`upstream.base_url`: TCP or a Unix socket, with its
//! base path), `route.rs` and `validate_route.rs` (a route's common keys and
//! their checks), `lifetime.rs` (`[routes.lifetime]`), `schemas.rs` (`[routes.validate]`
//! and `[schema_registry]`), `security.rs` (TLS and credentials), `units.rs` (`ByteSize`, `Secret`), `url_auth.rs` (credentials in
//! `nats.url`), `wording.rs` (errors without secrets or serde jargon), `print.rs`
//! (redaction for `check --print`), `defaults.rs`.

mod base_url;
pub mod defaults;
mod lifetime;
mod load;
mod print;
mod route;
mod schemas;
mod security;
mod store;
mod units;
mod url_auth;
mod validate;
mod validate_route;
mod wording;

pub use base_url::{BaseUrl, BaseUrlError, SOCKET_HOST};
pub use schemas::registry as check_registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
pub use store::{across as check_reply_stores, OnUnavailable, ReplyStoreConfig};
pub use validate::top as check_top;
pub use validate_route::{across as check_across, route as check_route};

use serde::{Deserialize, Serialize};

pub use lifetime::{Expired, LifetimeConfig};
pub use load::{field_names, read_file, ConfigError, ConfigErrors, Document, ENV_PREFIX};
pub use print::redact;
pub use route::{
    BreakerConfig, ConcurrencyConfig, HeaderFilterConfig, MaxInFlight, RateLimitConfig,
    RateLimitMode, RetryCondition, RetryConfig, RetryOn, RouteConfig,
};
pub use schemas::{
    BodyFormat, Decode, Encode, ResponseValidateConfig, SchemaRegistryConfig, ValidateConfig,
};
pub use security::{
    check_file, check_tls_files, read_secret_file, NatsTlsConfig, SecretFileError, TlsFilesConfig,
};
pub use units::{duration_list, redact_url, serialize_duration_list, ByteSize, Secret};
pub use url_auth::{has_userinfo, split_credentials, UrlAuth};
pub use validate::nats_token;

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
    /// The common part of each route, read route by route (see `settings`): the source
    /// part of each is beside it, in `settings::Settings::sources`.
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
    /// Scheme, host, port and optional base path, or a Unix socket and optional base path
    /// (`unix:///run/service.sock:/api`, see [`BaseUrl`]); messages can never change these.
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
