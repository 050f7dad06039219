//! `[routes.lifetime]`: how long a request is wanted, counted from its broker's timestamp,
//! what becomes of one nobody waits for any more, and whether each HTTP attempt tells the
//! service its budget and its attempt. The stage that applies it is `pipeline::lifetime`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;

/// A route's request lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifetimeConfig {
    /// A request older than this (by its broker's timestamp, else its receipt) is not sent
    /// to the service. Absent: no age limit (the caller's own deadline still applies).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// A request with less time than this left before its deadline is treated as expired:
    /// ricochet never starts a call that cannot finish in time.
    #[serde(default = "defaults::min_budget", with = "humantime_serde")]
    pub min_budget: Duration,
    /// What becomes of an expired request: acknowledged (`ack`), or dead-lettered with
    /// reason `expired` (`dead_letter`).
    #[serde(default)]
    pub expired: Expired,
    /// Answer an expired request with a 504 `expired` error reply (default: no reply,
    /// nobody waits for it).
    #[serde(default)]
    pub reply_expired: bool,
    /// Each HTTP attempt carries `Ricochet-Budget-Ms`, `Ricochet-Attempt` and
    /// `Ricochet-Delivery-Count`.
    #[serde(default = "defaults::enabled")]
    pub attempt_headers: bool,
}

/// What becomes of a request past its lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expired {
    /// Settled as done (acked, committed) without a dead letter.
    #[default]
    Ack,
    /// Dead-lettered with reason `expired`, then settled as given up.
    DeadLetter,
}

impl Default for LifetimeConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            min_budget: defaults::min_budget(),
            expired: Expired::default(),
            reply_expired: false,
            attempt_headers: defaults::enabled(),
        }
    }
}

/// Checks serde cannot express, each with its key under `lifetime.`.
pub fn check(lifetime: &LifetimeConfig, push: &mut impl FnMut(&str, String)) {
    if let Some(max_age) = lifetime.max_age {
        if max_age.is_zero() {
            push("lifetime.max_age", "must be greater than zero".into());
        } else if max_age <= lifetime.min_budget {
            push(
                "lifetime.max_age",
                format!(
                    "must be longer than lifetime.min_budget ({}): no request could be sent",
                    humantime::format_duration(lifetime.min_budget)
                ),
            );
        }
    }
}
