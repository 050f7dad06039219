//! ricochet: a sidecar that lets event-native services call REST services.
//!
//! It consumes request messages from NATS, calls the HTTP service that runs next to it and
//! publishes the HTTP response as the reply. Every message takes the same path:
//!
//! ```text
//! source -> route -> validate -> map to HTTP -> invoke -> map to reply -> publish -> settle
//! ```
//!
//! - [`source`] turns broker messages into [`source::Inbound`] and runs the intake loop;
//! - [`route`] matches subjects against patterns with named captures;
//! - [`mapping`] is the pure message <-> HTTP mapping (the message contract);
//! - [`invoke`] owns the HTTP client and classifies every result once;
//! - [`reply`] publishes replies;
//! - [`pipeline`] takes one message through all of it;
//! - [`telemetry`] holds metric names, logging and the admin server;
//! - [`config`] loads and validates the configuration.

pub mod config;
pub mod invoke;
pub mod mapping;
pub mod pipeline;
pub mod reply;
pub mod route;
pub mod source;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::reply::NatsReplier;
use crate::source::jetstream::JetStreamRoute;
use crate::source::kafka::KafkaRoute;
use crate::telemetry::Health;

/// Runs the bridge until `shutdown` resolves, then stops intake, lets in-flight messages
/// finish within `shutdown.grace_period`, flushes their replies and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = telemetry::metrics::install()?;
    let kafka_routes = (config.routes.iter())
        .filter(|r| r.source == config::SourceKind::Kafka)
        .count();
    let jetstream_routes = (config.routes.iter())
        .filter(|r| r.source == config::SourceKind::Jetstream)
        .count();
    // A configuration with Kafka routes only needs no NATS server at all.
    let needs_nats = kafka_routes < config.routes.len();
    // Readiness waits for the core subscriptions and every JetStream and Kafka consumer.
    let health = Arc::new(Health::new(
        usize::from(needs_nats) + jetstream_routes + kafka_routes,
        needs_nats,
    ));
    let admin = telemetry::admin::serve(config.admin.listen, metrics, health.clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!("admin server cannot listen on {}: {e}", config.admin.listen)
        })?;
    info!(%admin, "admin server listening (/healthz, /readyz, /metrics)");

    let client = match needs_nats {
        true => Some(source::nats::connect(&config.nats).await?),
        false => None,
    };
    if let Some(client) = &client {
        health.set_client(client.clone());
    }
    let pipeline = Arc::new(Pipeline::new(
        &config,
        client.clone().map(NatsReplier::new),
    )?);

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut intakes = JoinSet::new();
    if let Some(client) = &client {
        for (route, subscriber) in source::nats::subscribe(client, &pipeline).await? {
            let (pipeline, tracker, stop) = (pipeline.clone(), tracker.clone(), stop.clone());
            let intake = source::nats::intake(route, subscriber, pipeline, tracker, stop);
            intakes.spawn(intake);
        }
    }
    for route in pipeline.routes() {
        if let Some(consumer) = JetStreamRoute::new(route.clone(), pipeline.clone()) {
            let client = client.clone().expect("JetStream routes connect to NATS");
            let run = consumer.run(client, health.clone(), tracker.clone(), stop.clone());
            intakes.spawn(run);
        } else if let Some(consumer) = KafkaRoute::new(route.clone(), pipeline.clone()) {
            intakes.spawn(consumer.run(health.clone(), tracker.clone(), stop.clone()));
        }
    }

    tokio::pin!(shutdown);
    match &client {
        Some(client) => tokio::select! {
            result = source::nats::confirm_subscriptions(client) => {
                result?;
                health.intake_ready();
                info!(routes = config.routes.len(), "core subscriptions confirmed");
                shutdown.as_mut().await;
            }
            _ = shutdown.as_mut() => {}
        },
        None => shutdown.as_mut().await,
    }

    let grace = config.shutdown.grace_period;
    info!(
        ?grace,
        "shutting down: draining subscriptions and finishing in-flight messages"
    );
    health.set_shutting_down();
    stop.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    let drained = tokio::time::timeout_at(deadline, async {
        while intakes.join_next().await.is_some() {}
        tracker.close();
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            abandoned = tracker.len(),
            "grace period over; exiting with messages still in flight"
        );
    }
    if let Some(client) = &client {
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(5), client.flush()).await;
        if flushed.is_err() {
            warn!("could not flush the last replies to NATS");
        }
    }
    info!("stopped");
    Ok(())
}
