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
//! - [`config`] loads and validates the configuration.

pub mod config;
pub mod invoke;
pub mod mapping;
pub mod pipeline;
pub mod reply;
pub mod route;
pub mod source;
pub mod telemetry;
pub mod validate;

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, SourceConfig, SourceKind};
use crate::pipeline::Pipeline;
use crate::reply::NatsReplier;
use crate::source::amqp::AmqpRoute;
use crate::source::jetstream::JetStreamRoute;
use crate::source::kafka::KafkaRoute;
use crate::telemetry::Health;

/// Runs the bridge until `shutdown` resolves, then stops intake, lets in-flight messages
/// finish within `shutdown.grace_period`, flushes their replies and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = telemetry::metrics::install()?;
    let core_routes = (config.routes.iter())
        .filter(|r| r.source.kind() == SourceKind::Nats)
        .count();
    // A configuration with Kafka routes only needs no NATS server at all.
    let needs_nats = (config.routes.iter()).any(|r| r.source.kind().uses_nats());
    // Readiness waits for the NATS connection's subscriptions (confirmed once for all core
    // routes) and for the consumer of every other route.
    let intakes_to_wait_for = usize::from(needs_nats) + config.routes.len() - core_routes;
    let health = Arc::new(Health::new(intakes_to_wait_for, needs_nats));
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
    let pipeline = Arc::new(Pipeline::new(&config)?);
    health.set_routes(pipeline.routes().to_vec());
    let replier = client.clone().map(|c| Arc::new(NatsReplier::new(c)));

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut intakes = JoinSet::new();
    for route in pipeline.routes() {
        let (tracker, stop, health) = (tracker.clone(), stop.clone(), health.clone());
        match &route.config.source {
            // One intake below serves every core route.
            SourceConfig::Nats { .. } => {}
            SourceConfig::Jetstream(js) => {
                let (client, replier) = (client.clone(), replier.clone());
                let (client, replier) = client.zip(replier).expect("JetStream connects to NATS");
                let (route, pipeline) = (route.clone(), pipeline.clone());
                let consumer = JetStreamRoute::new(route, js.clone(), pipeline, replier);
                intakes.spawn(consumer.run(client, health, tracker, stop));
            }
            SourceConfig::Kafka(kafka) => {
                let consumer = KafkaRoute::new(route.clone(), kafka.clone(), pipeline.clone());
                intakes.spawn(consumer.run(health, tracker, stop));
            }
            SourceConfig::Amqp(amqp) => {
                let consumer = AmqpRoute::new(route.clone(), amqp.clone(), pipeline.clone());
                intakes.spawn(consumer.run(health, tracker, stop));
            }
        }
    }
    if let (Some(client), Some(replier), true) = (&client, &replier, core_routes > 0) {
        let queue_group = &config.nats.queue_group;
        let core = source::nats::Core::new(pipeline.clone(), replier.clone(), queue_group);
        let core = Arc::new(core);
        for (route, subscriber) in source::nats::subscribe(client, &core).await? {
            let (core, tracker, stop) = (core.clone(), tracker.clone(), stop.clone());
            intakes.spawn(source::nats::intake(route, subscriber, core, tracker, stop));
        }
    }

    if let (Some(client), Some(service)) = (&client, &config.nats.service) {
        let queue_group = &config.nats.queue_group;
        let (client, pipeline, stop) = (client.clone(), pipeline.clone(), stop.clone());
        let answering = telemetry::discovery::serve(client, service, pipeline, queue_group, stop);
        answering.await?;
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
    // The exporter's last batch goes out through the runtime: wait for it off the runtime's
    // thread.
    let exported = tokio::task::spawn_blocking(move || pipeline.shutdown());
    if tokio::time::timeout(std::time::Duration::from_secs(5), exported)
        .await
        .is_err()
    {
        warn!("tracing: the last spans were not exported within 5 s");
    }
    info!("stopped");
    Ok(())
}
