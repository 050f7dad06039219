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

#[cfg(test)]
mod tests {
    use crate::settings::load_str;

    fn route(name: &str, store: &str) -> String {
        format!(
            r#"
            [[routes]]
            name = "{name}"
            subject = "{name}.{{id}}"
            path = "/x/{{id}}"
            [routes.reply_store]
            {store}
            "#
        )
    }

    fn errors(routes: &[String]) -> Vec<(String, String)> {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n{}",
            routes.concat()
        );
        match load_str(&text, Vec::new()) {
            Ok(_) => Vec::new(),
            Err(e) => (e.0.into_iter()).map(|e| (e.key, e.message)).collect(),
        }
    }

    fn keys(routes: &[String]) -> Vec<String> {
        errors(routes).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn a_store_takes_defaults_but_its_unavailable_choice_is_required() {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n{}",
            route("a", "on_unavailable = \"call\"")
        );
        let settings = load_str(&text, Vec::new()).unwrap();
        let store = settings.config.routes[0].reply_store.clone().unwrap();
        assert_eq!(store.bucket, "ricochet_replies");
        assert_eq!(store.ttl, std::time::Duration::from_secs(86_400));
        assert_eq!(store.timeout, std::time::Duration::from_secs(1));
        assert_eq!(store.on_unavailable, super::OnUnavailable::Call);
        let missing = errors(&[route("a", "ttl = \"1h\"")]);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].0, "routes[0].reply_store.on_unavailable");
    }

    #[test]
    fn every_bad_key_is_reported_with_its_path() {
        let bad =
            "bucket = \"a.b\"\nttl = \"500ms\"\ntimeout = \"0s\"\non_unavailable = \"redeliver\"";
        assert_eq!(
            keys(&[route("a", bad)]),
            [
                "routes[0].reply_store.bucket",
                "routes[0].reply_store.ttl",
                "routes[0].reply_store.timeout"
            ]
        );
        let unknown = errors(&[route("a", "on_unavailable = \"retry\"")]);
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        let extra = keys(&[route("a", "on_unavailable = \"call\"\nreplicas = 3")]);
        assert_eq!(extra.len(), 1, "{extra:?}");
    }

    #[test]
    fn routes_sharing_a_bucket_set_the_same_ttl() {
        let store = |ttl: &str| format!("ttl = \"{ttl}\"\non_unavailable = \"call\"");
        assert_eq!(
            keys(&[route("a", &store("1h")), route("b", &store("1h"))]),
            Vec::<String>::new()
        );
        let shared = errors(&[route("a", &store("1h")), route("b", &store("2h"))]);
        assert_eq!(shared.len(), 1, "{shared:?}");
        assert_eq!(shared[0].0, "routes[1].reply_store.ttl");
        assert!(shared[0].1.contains("routes[0]"), "{shared:?}");
        let apart = format!("bucket = \"other\"\n{}", store("2h"));
        assert_eq!(
            keys(&[route("a", &store("1h")), route("b", &apart)]),
            Vec::<String>::new()
        );
    }
}
