//! ricochet: a sidecar that lets event-native services call REST services.
//!
//! It consumes request messages from NATS, JetStream, Kafka and AMQP (RabbitMQ), calls the HTTP service that
//! runs next to it and publishes the HTTP response as the reply. Every message takes the
//! same path:
//!
//! ```text
//! source -> route -> validate -> lifetime -> map to HTTP -> invoke -> map to reply -> policy -> publish -> settle
//! ```
//!
//! - [`source`] takes broker messages (one folder per broker) and turns them into
//!   [`source::Inbound`]; its [`source::Settle`] handle publishes and settles;
//! - [`route`] matches subjects against patterns with named captures;
//! - [`pipeline`] takes one message through all of it, the same for every source: the
//!   validate stage, the call, the settlement policy, publish and settle;
//! - [`validate`] holds what the validate stage applies: JSON Schema, Avro in the Confluent
//!   wire format and the schema registry it needs;
//! - [`mapping`] is the pure message <-> HTTP mapping (the message contract);
//! - [`invoke`] owns the HTTP client and classifies every result once;
//! - [`reply`] publishes replies and dead letters to NATS, Kafka and RabbitMQ;
//! - [`telemetry`] holds metric names, logging and the admin server;
//! - [`config`] is the bottom layer of the configuration: shared sections, a route's common
//!   part, units, secrets, the loading machinery;
//! - [`settings`] is the whole file: [`config`] plus each route's source part (from
//!   `source/<name>/config.rs`), loaded and checked together;
//! - [`generation`] is one configuration at work: its pipeline and the intakes feeding it;
//! - [`reload`] replaces the running generation with one from the re-read configuration.

pub mod config;
pub mod generation;
pub mod invoke;
pub mod mapping;
pub mod message;
pub mod pipeline;
pub mod reload;

pub mod route;
pub mod settings;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod validate;

use std::future::Future;
use std::sync::Arc;

use tracing::{info, warn};

use crate::generation::{Generation, KeptSubscriptions, Nats};
use crate::reload::Triggers;
use crate::settings::Settings;
use crate::telemetry::metrics::{ReloadResult, RELOADS};
use crate::telemetry::HealthSlot;

/// Runs the bridge until `shutdown` resolves, then stops intake, lets in-flight messages
/// finish within `shutdown.grace_period`, flushes their replies and returns. With
/// `reloads`, each of its triggers (SIGHUP, a watched file's change) reads the
/// configuration again and applies it (see [`reload`]).
pub async fn run(
    settings: Settings,
    reloads: Option<Triggers>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    telemetry::liveness::watch_panics();
    let metrics = telemetry::metrics::install()?;
    for result in ReloadResult::ALL {
        metrics::counter!(RELOADS, "result" => result.as_str()).increment(0);
    }
    let health = Arc::new(HealthSlot::default());
    let listen = settings.config.admin.listen;
    let admin = telemetry::admin::serve(listen, metrics, health.clone())
        .await
        .map_err(|e| anyhow::anyhow!("admin server cannot listen on {listen}: {e}"))?;
    info!(%admin, "admin server listening (/healthz, /readyz, /metrics)");

    // A configuration with Kafka or AMQP routes only needs no NATS server at all.
    let mut nats = match generation::needs_nats(&settings) {
        true => {
            health.starting(telemetry::admin::NOT_CONNECTED);
            Some(Nats::new(
                source::nats::connect(&settings.config.nats).await?,
            ))
        }
        false => None,
    };
    let mut running = Generation::new(settings, nats.clone())?;
    health.set(running.health.clone());
    running
        .start_core(&mut KeptSubscriptions::default())
        .await?;
    running.start_durable().await?;

    tokio::pin!(shutdown);
    match reloads {
        Some(mut triggers) => loop {
            tokio::select! {
                _ = shutdown.as_mut() => break,
                trigger = triggers.next() => {
                    running = reload::reload(running, trigger, &mut triggers, &mut nats, &health).await;
                }
            }
        },
        None => shutdown.as_mut().await,
    }

    let grace = running.settings.config.shutdown.grace_period;
    let budget = ShutdownBudget::new(grace);
    info!(
        ?grace,
        "shutting down: draining subscriptions and finishing in-flight messages"
    );
    running.health.set_shutting_down();
    let (_, pipeline) = running.stop(budget.work).await;
    if let Some(nats) = &nats {
        flush_replies(&nats.client, budget.deadline).await;
    }
    generation::flush_traces(pipeline, budget.deadline).await;
    info!(took = ?budget.started.elapsed(), "stopped");
    Ok(())
}

/// How `shutdown.grace_period` is spent: the messages in flight get all of it but a
/// reserve (a fifth, at most 5 s) in which the last replies are flushed and the last spans
/// exported, so the process is gone within the grace period in all (a Kubernetes pod's
/// `terminationGracePeriodSeconds` is the hard limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownBudget {
    pub started: tokio::time::Instant,
    /// For the messages in flight.
    pub work: std::time::Duration,
    /// When everything, the flushes included, is over.
    pub deadline: tokio::time::Instant,
}

impl ShutdownBudget {
    pub const MAX_RESERVE: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn new(grace: std::time::Duration) -> Self {
        let started = tokio::time::Instant::now();
        let reserve = (grace / 5).min(Self::MAX_RESERVE);
        Self {
            started,
            work: grace - reserve,
            deadline: started + grace,
        }
    }
}

/// Flushes the replies the NATS client still holds, until `deadline`. A connection that is
/// down cannot take them (a flush would wait for a reconnection), so there is nothing to
/// wait for then: each reply's publisher already awaited its own flush.
async fn flush_replies(client: &async_nats::Client, deadline: tokio::time::Instant) {
    if client.connection_state() != async_nats::connection::State::Connected {
        warn!("the connection to NATS is down: the last replies are not flushed");
        return;
    }
    if tokio::time::timeout_at(deadline, client.flush())
        .await
        .is_err()
    {
        warn!("could not flush the last replies to NATS within the grace period");
    }
}

#[cfg(test)]
mod tests {
    use super::ShutdownBudget;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn shutdown_fits_in_the_grace_period_with_a_reserve_for_the_flushes() {
        let default = ShutdownBudget::new(crate::config::defaults::grace_period());
        // Inside Kubernetes' default terminationGracePeriodSeconds (30 s), with margin.
        assert!(default.deadline - default.started <= Duration::from_secs(25));
        assert_eq!(default.work, Duration::from_secs(20));
        let short = ShutdownBudget::new(Duration::from_secs(10));
        assert_eq!(short.work, Duration::from_secs(8));
        assert_eq!(short.deadline - short.started, Duration::from_secs(10));
        let zero = ShutdownBudget::new(Duration::ZERO);
        assert_eq!((zero.work, zero.deadline), (Duration::ZERO, zero.started));
    }
}
