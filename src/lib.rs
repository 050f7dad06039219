//! ricochet: a sidecar that lets event-native services call REST services.
//!
//! It consumes request messages from NATS, JetStream, Kafka and AMQP (RabbitMQ), calls the HTTP service that
//! runs next to it and publishes the HTTP response as the reply. Every message takes the
//! same path:
//!
//! ```text
//! source -> route -> validate -> map to HTTP -> invoke -> map to reply -> policy -> publish -> settle
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
//! - [`config`] loads and validates the configuration;
//! - [`generation`] is one configuration at work: its pipeline and the intakes feeding it;
//! - [`reload`] replaces the running generation with one from the re-read configuration.

pub mod config;
pub mod generation;
pub mod invoke;
pub mod mapping;
pub mod pipeline;
pub mod reload;
pub mod reply;
pub mod route;
pub mod source;
pub mod telemetry;
pub mod validate;

use std::future::Future;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::Config;
use crate::generation::{Generation, Nats};
use crate::reload::Triggers;
use crate::telemetry::metrics::{ReloadResult, RELOADS};
use crate::telemetry::HealthSlot;

/// Runs the bridge until `shutdown` resolves, then stops intake, lets in-flight messages
/// finish within `shutdown.grace_period`, flushes their replies and returns. With
/// `reloads`, each of its triggers (SIGHUP, a watched file's change) reads the
/// configuration again and applies it (see [`reload`]).
pub async fn run(
    config: Config,
    reloads: Option<Triggers>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    telemetry::liveness::watch_panics();
    let metrics = telemetry::metrics::install()?;
    for result in ReloadResult::ALL {
        metrics::counter!(RELOADS, "result" => result.as_str()).increment(0);
    }
    let health = Arc::new(HealthSlot::default());
    let listen = config.admin.listen;
    let admin = telemetry::admin::serve(listen, metrics, health.clone())
        .await
        .map_err(|e| anyhow::anyhow!("admin server cannot listen on {listen}: {e}"))?;
    info!(%admin, "admin server listening (/healthz, /readyz, /metrics)");

    // A configuration with Kafka or AMQP routes only needs no NATS server at all.
    let mut nats = match generation::needs_nats(&config) {
        true => {
            health.starting(telemetry::admin::NOT_CONNECTED);
            Some(Nats::new(source::nats::connect(&config.nats).await?))
        }
        false => None,
    };
    let mut running = Generation::new(config, nats.clone())?;
    health.set(running.health.clone());
    running.start_core().await?;
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

    let grace = running.config.shutdown.grace_period;
    info!(
        ?grace,
        "shutting down: draining subscriptions and finishing in-flight messages"
    );
    running.health.set_shutting_down();
    let (_, pipeline) = running.stop(grace).await;
    if let Some(nats) = &nats {
        let flushed =
            tokio::time::timeout(std::time::Duration::from_secs(5), nats.client.flush()).await;
        if flushed.is_err() {
            warn!("could not flush the last replies to NATS");
        }
    }
    generation::flush_traces(pipeline).await;
    info!("stopped");
    Ok(())
}
