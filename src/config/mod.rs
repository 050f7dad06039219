//! Configuration: the serde types with their named defaults.
//!
//! Loading (file, environment overrides, collecting every error) lives in `load.rs`;
//! cross-field checks in `validate.rs`; the small value types (`ByteSize`, `Secret`) in
//! `units.rs`. Everything else in ricochet receives an already validated [`Config`].

mod load;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use load::{load, load_str, ConfigError, ConfigErrors, ENV_PREFIX};
pub use units::{ByteSize, Secret};

/// Exit code for an invalid configuration (EX_USAGE from sysexits.h).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
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
    pub routes: Vec<RouteConfig>,
}

/// Connection to the NATS server (core request-reply).
#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default = "defaults::nats_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// The co-located REST service.
#[derive(Debug, Clone, Deserialize)]
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
}

/// The admin HTTP server: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may run after SIGTERM before ricochet exits anyway.
    #[serde(default = "defaults::grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "ricochet=debug,async_nats=warn". `RUST_LOG` wins.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One subject pattern mapped to one HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in logs and as the `route` metric label.
    pub name: String,
    /// NATS subject pattern: literal tokens, `*`, a final `>`, and named tokens `{id}`.
    pub subject: String,
    #[serde(default = "defaults::method")]
    pub method: String,
    /// Path (and optional query) template; `{name}` is replaced by the captured token.
    pub path: String,
    /// Overrides `upstream.request_timeout` for this route.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
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
    /// Which message headers become HTTP request headers.
    #[serde(default)]
    pub request_headers: HeaderFilterConfig,
    /// Which HTTP response headers become reply headers.
    #[serde(default)]
    pub response_headers: HeaderFilterConfig,
}

/// Allow/deny list of header names (case-insensitive). An empty `allow` allows all.
#[derive(Debug, Clone, Default, Deserialize)]
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
            token: None,
            creds_file: None,
            connect_timeout: defaults::nats_connect_timeout(),
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

impl RouteConfig {
    /// The per-attempt HTTP timeout of this route.
    pub fn timeout_or(&self, upstream: &UpstreamConfig) -> Duration {
        self.timeout.unwrap_or(upstream.request_timeout)
    }
}

/// Named defaults, so the README and the code agree on one value each.
pub mod defaults {
    use super::ByteSize;
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
    pub fn grace_period() -> Duration {
        Duration::from_secs(30)
    }
    pub fn log_level() -> String {
        "info".into()
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
}
