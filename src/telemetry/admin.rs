//! The admin HTTP server: `/healthz` (the process answers and its machinery is alive: see
//! `liveness`; 503 with the reasons once not), `/readyz` (connected to NATS,
//! subscribed, consumers bound, not every circuit open, not shutting down; a JSON body says
//! why and shows each route's circuit) and `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::pipeline::Route;

/// `/readyz`'s reason while the NATS connection is down (or not made yet).
pub const NOT_CONNECTED: &str = "not connected to NATS";

/// The health of the generation running now (see `generation.rs`): a reload puts the new
/// generation's in its place once that one is ready.
#[derive(Debug, Default)]
pub struct HealthSlot {
    current: RwLock<Option<Arc<Health>>>,
    /// Why there is no generation yet, for `/readyz`.
    starting: RwLock<Option<&'static str>>,
}

impl HealthSlot {
    pub fn set(&self, health: Arc<Health>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(health);
    }

    /// What `/readyz` says until the first generation has started.
    pub fn starting(&self, reason: &'static str) {
        *self.starting.write().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn current(&self) -> Option<Arc<Health>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `/readyz`'s body; not ready until the first generation has started.
    fn report(&self) -> (bool, String) {
        match self.current() {
            Some(health) => health.report(),
            None => {
                let reason = self.starting.read().unwrap_or_else(|e| e.into_inner());
                let reason = reason.unwrap_or("starting");
                let body = serde_json::json!({"ready": false, "reason": reason, "routes": []});
                (false, format!("{body}\n"))
            }
        }
    }
}

/// What `/readyz` reports of one generation.
#[derive(Debug)]
pub struct Health {
    nats: OnceLock<async_nats::Client>,
    /// The routes, for their circuit breakers.
    routes: OnceLock<Vec<Arc<Route>>>,
    /// Intakes (core subscriptions, JetStream consumers) not set up yet.
    pending: AtomicUsize,
    /// False when no route uses NATS: readiness then ignores the NATS connection.
    needs_nats: bool,
    shutting_down: AtomicBool,
    /// Why an intake is not set up, by route name (what its log line says), for `/readyz`.
    waiting: Mutex<BTreeMap<String, String>>,
}

impl Health {
    pub fn set_client(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    pub fn set_routes(&self, routes: Vec<Arc<Route>>) {
        let _ = self.routes.set(routes);
    }

    /// Readiness waits for `intakes` calls of [`Health::intake_ready`].
    pub fn new(intakes: usize, needs_nats: bool) -> Self {
        Self {
            nats: OnceLock::new(),
            routes: OnceLock::new(),
            needs_nats,
            pending: AtomicUsize::new(intakes),
            shutting_down: AtomicBool::new(false),
            waiting: Mutex::default(),
        }
    }

    /// The intake of `route` cannot be set up yet, because of `why` (say the stream).
    pub fn intake_waiting(&self, route: &str, why: String) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.insert(route.to_string(), why);
    }

    /// The intake of `route` is set up: it no longer waits for anything.
    pub fn intake_set_up(&self, route: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.remove(route);
    }

    /// An intake that was ready lost its subscription or consumer.
    pub fn intake_lost(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// One intake is subscribed (or bound to its consumer).
    pub fn intake_ready(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Whether some intake is not set up yet (or lost its subscription or consumer).
    pub fn intakes_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if self.needs_nats {
            match self.nats.get().map(|c| c.connection_state()) {
                Some(async_nats::connection::State::Connected) => {}
                _ => return Err(NOT_CONNECTED.into()),
            }
        }
        if self.intakes_pending() {
            let mut reason = String::from(
                "subscriptions or consumers (JetStream, Kafka, AMQP) not set up yet, or reconnecting",
            );
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for (route, why) in waiting.iter() {
                reason.push_str(&format!("; route {route:?}: {why}"));
            }
            return Err(reason);
        }
        let routes = self.routes.get().map(Vec::as_slice).unwrap_or_default();
        if !routes.is_empty() && routes.iter().all(|r| r.invoker.breaker.refusing()) {
            return Err("every route's circuit breaker is open: the service is failing".into());
        }
        Ok(())
    }

    /// `/readyz`'s body: whether ricochet is ready, why not, and each route's circuit.
    fn report(&self) -> (bool, String) {
        let ready = self.ready();
        let routes: Vec<serde_json::Value> = (self.routes.get().into_iter().flatten())
            .map(|route| {
                serde_json::json!({
                    "route": route.name,
                    "source": route.source.kind().as_str(),
                    "circuit": route.invoker.breaker.state().name(),
                })
            })
            .collect();
        let body = serde_json::json!({
            "ready": ready.is_ok(),
            "reason": ready.as_ref().err(),
            "routes": routes,
        });
        (ready.is_ok(), format!("{body}\n"))
    }
}

/// Binds `listen` and serves in the background; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<HealthSlot>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        // Histograms need periodic upkeep when the exporter does not run its own server.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&req, &metrics, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn respond(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &HealthSlot,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => match super::liveness::global().check() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(reasons) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("failed: restart ricochet\n{}\n", reasons.join("\n")),
            ),
        },
        "/readyz" => match health.report() {
            (true, body) => (StatusCode::OK, "application/json", body),
            (false, body) => (StatusCode::SERVICE_UNAVAILABLE, "application/json", body),
        },
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
