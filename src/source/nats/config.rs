//! The configuration of a core NATS route: the route keys only core NATS routes have
//! (`queue_group`, `max_pending`, and `delivery`, which can only say `at_most_once`), their
//! defaults and their checks. A core route has no table of its own: the connection is the
//! shared `[nats]` section (`config::NatsConfig`).
//!
//! Read by `settings` when a route says `source = "nats"` or names no source; used by the
//! subscriptions, the pipeline's pending queue and the micro services API.

use serde::{Deserialize, Serialize};

use crate::config::{nats_token, Delivery, RouteConfig};

/// A core NATS route's source: queue subscriptions, replies to the request's inbox.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    /// Always `at_most_once`: core NATS keeps nothing to redeliver. Accepted (and printed)
    /// so that a file may say so.
    #[serde(default = "at_most_once")]
    pub delivery: Delivery,
    /// Overrides `nats.queue_group`.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Messages that may wait for a slot when the route is full; more are shed. Default:
    /// the route's `max_in_flight` (see [`NatsSource::max_pending`]).
    #[serde(default)]
    pub max_pending: Option<usize>,
}

fn at_most_once() -> Delivery {
    Delivery::AtMostOnce
}

impl Default for NatsSource {
    fn default() -> Self {
        Self {
            delivery: at_most_once(),
            queue_group: None,
            max_pending: None,
        }
    }
}

impl NatsSource {
    /// `max_pending`, else the route's `max_in_flight` (its `concurrency.max` when adaptive).
    pub fn max_pending(&self, route: &RouteConfig) -> usize {
        self.max_pending.unwrap_or(route.max_in_flight_bound())
    }

    /// The checks serde cannot express; keys relative to the route.
    pub fn check(&self, _route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        match self.delivery {
            Delivery::AtMostOnce => {}
            Delivery::AtLeastOnce => push(
                "delivery",
                "core NATS is at-most-once; use source = \"jetstream\" for at-least-once".into(),
            ),
            Delivery::ExactlyOnce => {
                push("delivery", "exactly_once is only for Kafka routes".into())
            }
        }
        if let Some(group) = &self.queue_group {
            if let Err(message) = nats_token(group) {
                push("queue_group", message);
            }
        }
    }
}
