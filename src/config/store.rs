//! A route's `[routes.reply_store]` table: the shared reply store on NATS JetStream
//! key-value (`store/`), its defaults and checks.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{defaults, ConfigError, RouteConfig};

/// The route's reply store: before the service is called for a message with an idempotency
/// key, the key is looked up; a stored reply is published again without calling it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyStoreConfig {
    /// The key-value bucket; ricochet creates it (history 1, `max_age` = `ttl`, file
    /// storage, one replica) when it does not exist, and uses it as it is when it does.
    #[serde(default = "defaults::reply_store_bucket")]
    pub bucket: String,
    /// How long a stored reply is served again: the bucket's `max_age` when ricochet
    /// creates it. Routes sharing a bucket set the same.
    #[serde(default = "defaults::reply_store_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Each request to the store (a lookup, a put) gives up after this long; the store is
    /// then unavailable for that message.
    #[serde(default = "defaults::reply_store_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What a message gets when the store cannot be asked: required, it is the route's
    /// choice between calling the service anyway and waiting for the store.
    pub on_unavailable: OnUnavailable,
}

/// What a message gets when its route's store cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Call the service anyway (it may be called again for this request); counted in
    /// `ricochet_reply_store_unprotected_total{reason="unavailable"}`.
    Call,
    /// Do not call the service: a durable source redelivers the message later; a core NATS
    /// caller gets a 503 `store_unavailable` reply.
    Redeliver,
}

impl OnUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Call => "call",
            OnUnavailable::Redeliver => "redeliver",
        }
    }
}

impl ReplyStoreConfig {
    /// Checks of the table on its own; keys relative to the route.
    pub fn check(&self, push: &mut impl FnMut(&str, String)) {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
        if self.bucket.is_empty() || !self.bucket.chars().all(valid) {
            push(
                "reply_store.bucket",
                format!(
                    "{:?} must be non-empty and use only letters, digits, '-' and '_'",
                    self.bucket
                ),
            );
        }
        if self.ttl < Duration::from_secs(1) {
            push("reply_store.ttl", "must be at least 1s".into());
        }
        if self.timeout.is_zero() {
            push("reply_store.timeout", "must be greater than zero".into());
        }
    }
}

/// Routes sharing a bucket must agree on its `ttl` (the bucket has one `max_age`).
pub fn across(routes: &[(usize, &RouteConfig)]) -> Vec<ConfigError> {
    let mut first: HashMap<&str, (usize, Duration)> = HashMap::new();
    let mut errors = Vec::new();
    for (index, route) in routes {
        let Some(store) = &route.reply_store else {
            continue;
        };
        let (earlier, ttl) = *first
            .entry(store.bucket.as_str())
            .or_insert((*index, store.ttl));
        if ttl != store.ttl {
            errors.push(ConfigError::new(
                format!("routes[{index}].reply_store.ttl"),
                format!(
                    "bucket {:?} is shared with routes[{earlier}], whose ttl is {}: routes \
                     sharing a bucket set the same ttl (the bucket's max_age)",
                    store.bucket,
                    humantime::format_duration(ttl)
                ),
            ));
        }
    }
    errors
}
