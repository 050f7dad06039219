//! One generation of the running bridge: the [`Pipeline`] built from one configuration and
//! the intakes that feed it, with their own stop token, in-flight tracker and readiness.
//!
//! ricochet starts one generation; each reload (`reload.rs`) starts another and stops the
//! one before it. What lives longer than a generation (the NATS connection, the admin
//! server, the metrics) is handed in as [`Nats`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::pipeline::Pipeline;
use crate::settings::Settings;
use crate::source::nats::handover::{self, Handle};
use crate::source::nats::{Core, NatsSource, SubscriptionKey};
pub use crate::source::nats::{KeptSubscriptions, Nats};
use crate::source::{Context, Source};
use crate::telemetry::admin::RouteHealth;
use crate::telemetry::liveness::{self, Cause};
use crate::telemetry::Health;

pub struct Generation {
    pub settings: Settings,
    pub pipeline: Arc<Pipeline>,
    pub health: Arc<Health>,
    nats: Option<Nats>,
    stop: CancellationToken,
    tracker: TaskTracker,
    intakes: JoinSet<()>,
    /// Cancelled once the server has confirmed the core subscriptions.
    confirmed: CancellationToken,
    /// What the core intakes share, once they run.
    core: Option<Arc<Core>>,
    /// One per running core intake: a reload takes its subscription over through it.
    core_intakes: Vec<Handle>,
}

/// Whether any route of `settings` takes messages from NATS (core or JetStream) or keeps
/// its replies in a reply store (NATS key-value).
pub fn needs_nats(settings: &Settings) -> bool {
    (settings.sources.iter()).any(|s| s.uses_nats())
        || (settings.config.routes.iter()).any(|r| r.reply_store.is_some())
}

fn core_routes(settings: &Settings) -> usize {
    (settings.sources.iter())
        .filter(|s| s.kind() == NatsSource::KIND)
        .count()
}

impl Generation {
    /// Builds the pipeline (HTTP client, limits, breakers, validation, tracing); starts
    /// nothing yet. `nats` is required when a route uses NATS.
    pub fn new(settings: Settings, nats: Option<Nats>) -> anyhow::Result<Self> {
        let needs_nats = needs_nats(&settings);
        if needs_nats && nats.is_none() {
            anyhow::bail!("routes take messages from NATS but there is no NATS connection");
        }
        let pipeline = Arc::new(settings.pipeline()?);
        // The reply stores are asked on the shared connection, whatever the route's source.
        if let Some(nats) = &nats {
            for store in (pipeline.routes().iter()).filter_map(|r| r.store.as_ref()) {
                store.connect(nats.client.clone());
            }
        }
        // Readiness waits for the NATS connection's subscriptions (confirmed once for all
        // core routes) and for the consumer of every other route.
        let intakes = usize::from(needs_nats) + settings.sources.len() - core_routes(&settings);
        let health = Arc::new(Health::new(intakes, needs_nats));
        if let (Some(nats), true) = (&nats, needs_nats) {
            health.set_client(nats.client.clone());
        }
        let routes = pipeline.routes().iter();
        health.set_routes(routes.map(|r| r.clone() as Arc<dyn RouteHealth>).collect());
        Ok(Self {
            settings,
            pipeline,
            health,
            nats: nats.filter(|_| needs_nats),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            intakes: JoinSet::new(),
            confirmed: CancellationToken::new(),
            core: None,
            core_intakes: Vec::new(),
        })
    }

    /// Subscribes the core NATS routes (their queue groups share requests with any other
    /// subscriber, an older generation included), taking over the subscriptions in `kept`
    /// (a reload's, see [`Generation::release_core`]); on an error `kept` is left whole.
    /// Readiness follows once the server has confirmed them: see
    /// [`Generation::core_confirmed`].
    pub async fn start_core(&mut self, kept: &mut KeptSubscriptions) -> anyhow::Result<()> {
        let Some(nats) = self.nats.clone() else {
            self.confirmed.cancel();
            return Ok(());
        };
        if core_routes(&self.settings) > 0 {
            let queue_group = &self.settings.config.nats.queue_group;
            let core = Core::new(self.pipeline.clone(), nats.replier.clone(), queue_group);
            let core = Arc::new(core);
            self.core = Some(core.clone());
            let subscribed = crate::source::nats::subscribe(&nats.client, &core, kept).await?;
            for (route, key, subscriber) in subscribed {
                self.run_core(&core, route, key, subscriber);
            }
        }
        let (health, confirmed, stop) = (
            self.health.clone(),
            self.confirmed.clone(),
            self.stop.clone(),
        );
        let routes = self.settings.config.routes.len();
        tokio::spawn(async move {
            tokio::select! {
                result = crate::source::nats::confirm_subscriptions(&nats.client) => match result {
                    Ok(()) => {
                        health.intake_ready();
                        info!(routes, "core subscriptions confirmed");
                    }
                    Err(e) => warn!(error = %e, "could not confirm the core subscriptions"),
                },
                _ = stop.cancelled() => {}
            }
            confirmed.cancel();
        });
        Ok(())
    }

    /// The core subscriptions this generation makes.
    pub fn core_keys(&self) -> Vec<SubscriptionKey> {
        let queue_group = &self.settings.config.nats.queue_group;
        handover::keys(&self.pipeline, queue_group)
    }

    /// Takes over the running core subscriptions that the next generation makes too
    /// (`wanted`): their intakes stop taking messages and hand them over, with the messages
    /// not taken yet. The rest drain when this generation stops.
    pub async fn release_core(&mut self, wanted: &[SubscriptionKey]) -> KeptSubscriptions {
        let mut left = wanted.to_vec();
        let mut kept = KeptSubscriptions::default();
        let (asked, running): (Vec<Handle>, Vec<Handle>) =
            (self.core_intakes.drain(..)).partition(|intake| {
                match left.iter().position(|key| *key == intake.key) {
                    Some(at) => {
                        left.swap_remove(at);
                        true
                    }
                    None => false,
                }
            });
        self.core_intakes = running;
        for intake in asked {
            let key = intake.key.clone();
            // None: its intake had ended (its connection closed); the next generation
            // subscribes anew.
            if let Some(subscriber) = intake.take().await {
                kept.add(key, subscriber);
            }
        }
        kept
    }

    /// Takes back the subscriptions [`Generation::release_core`] gave a reload that was
    /// then refused: they go on serving this generation's routes.
    pub fn resume_core(&mut self, mut kept: KeptSubscriptions) {
        let Some(core) = self.core.clone() else {
            return;
        };
        for (key, subscriber) in kept.drain() {
            // Every key was this generation's; a subscription without a route ends.
            if let Some(route) = core.route_for(&key) {
                self.run_core(&core, route, key, subscriber);
            }
        }
    }

    /// Runs one core subscription's intake.
    fn run_core(
        &mut self,
        core: &Arc<Core>,
        route: Arc<crate::pipeline::Route>,
        key: SubscriptionKey,
        subscriber: async_nats::Subscriber,
    ) {
        let (core, tracker, stop) = (core.clone(), self.tracker.clone(), self.stop.clone());
        let name = format!("core NATS route {}", route.name);
        let (handle, release) = handover::pair(key);
        let released = handle.released();
        self.core_intakes.push(handle);
        let intake = crate::source::nats::intake(route, subscriber, core, tracker, stop, release);
        self.spawn_intake(name, intake, Some(released));
    }

    /// Resolves once the server has the core subscriptions (at once without NATS).
    pub async fn core_confirmed(&self) {
        self.confirmed.cancelled().await;
    }

    /// Starts the consumers of the durable sources (JetStream, Kafka, AMQP) and the NATS
    /// micro services API.
    pub async fn start_durable(&mut self) -> anyhow::Result<()> {
        let mut intakes = Vec::new();
        for (route, source) in self.pipeline.routes().iter().zip(&self.settings.sources) {
            let context = Context {
                route: route.clone(),
                pipeline: self.pipeline.clone(),
                nats: self.nats.clone(),
                health: self.health.clone(),
                tracker: self.tracker.clone(),
                stop: self.stop.clone(),
            };
            // Core NATS routes have none: `start_core` subscribed them together.
            if let Some(intake) = source.intake(context) {
                intakes.push((format!("{} route {}", route.kind, route.name), intake));
            }
        }
        for (name, intake) in intakes {
            self.spawn_intake(name, intake, None);
        }
        if let (Some(nats), Some(service)) = (&self.nats, &self.settings.config.nats.service) {
            let queue_group = &self.settings.config.nats.queue_group;
            let (client, pipeline, stop) = (
                nats.client.clone(),
                self.pipeline.clone(),
                self.stop.clone(),
            );
            crate::source::nats::discovery::serve(client, service, pipeline, queue_group, stop)
                .await?;
        }
        Ok(())
    }

    /// Runs one intake until it ends. An intake ends by itself only when `stop` asks it to,
    /// or `released` when it handed its subscription to the next generation; any other end
    /// (its subscription or client gone) leaves its route unserved for good, a liveness
    /// failure. (A panic is one already, through the panic hook.)
    fn spawn_intake(
        &mut self,
        name: String,
        intake: impl Future<Output = ()> + Send + 'static,
        released: Option<CancellationToken>,
    ) {
        let stop = self.stop.clone();
        self.intakes.spawn(async move {
            intake.await;
            let released = released.is_some_and(|r| r.is_cancelled());
            if !stop.is_cancelled() && !released {
                let reason = format!("the intake of {name} ended while ricochet was running");
                liveness::global().failed(Cause::IntakeEnded, reason);
            }
        });
    }

    /// Resolves once every intake is set up (or after `limit`); false on the limit.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let ready = async {
            while self.health.intakes_pending() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(limit, ready).await.is_ok()
    }

    /// Stops intake (core subscriptions drain, consumers stop fetching) and lets the
    /// messages in flight finish within `grace`. What is still running then goes on in the
    /// background (a reload) or ends with the process (a shutdown). True when all finished.
    pub async fn stop(mut self, grace: Duration) -> (bool, Arc<Pipeline>) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        let (intakes, tracker) = (&mut self.intakes, &self.tracker);
        let drained = tokio::time::timeout_at(deadline, async {
            while intakes.join_next().await.is_some() {}
            tracker.close();
            tracker.wait().await;
        })
        .await;
        if drained.is_err() {
            warn!(
                abandoned = self.tracker.len(),
                ?grace,
                "grace period over with messages still in flight"
            );
            // Dropping the set would abort the intakes still winding down.
            self.intakes.detach_all();
        }
        (drained.is_ok(), self.pipeline)
    }
}

/// Exports the spans `pipeline` has not exported yet, off the runtime's thread (the
/// exporter's last batch goes out through the runtime), until `deadline` at the latest.
pub async fn flush_traces(pipeline: Arc<Pipeline>, deadline: tokio::time::Instant) {
    let exported = tokio::task::spawn_blocking(move || pipeline.shutdown());
    if tokio::time::timeout_at(deadline, exported).await.is_err() {
        warn!("tracing: the last spans were not exported within the grace period");
    }
}
