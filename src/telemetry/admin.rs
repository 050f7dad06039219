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

/// `/readyz`'s reason while the NATS connection is down (or not made yet).
pub const NOT_CONNECTED: &str = "not connected to NATS";

/// Why a generation is not ready: `/readyz`'s `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("shutting down")]
    ShuttingDown,
    #[error("{NOT_CONNECTED}")]
    NotConnected,
    /// Some intake is not set up yet or lost its subscription or consumer; `waiting` says
    /// why, by route, for those whose intake said (what their log line says).
    #[error("subscriptions or consumers (JetStream, Kafka, AMQP) not set up yet, or reconnecting{}", waiting_for(.waiting))]
    IntakesPending { waiting: Vec<(String, String)> },
    #[error("every route's circuit breaker is open: the service is failing")]
    EveryCircuitOpen,
}

/// `; route "name": why` for each intake that says why it waits.
fn waiting_for(waiting: &[(String, String)]) -> String {
    let mut text = String::new();
    for (route, why) in waiting {
        text.push_str(&format!("; route {route:?}: {why}"));
    }
    text
}

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
    routes: OnceLock<Vec<Arc<dyn RouteHealth>>>,
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

    pub fn set_routes(&self, routes: Vec<Arc<dyn RouteHealth>>) {
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
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(NotReady::ShuttingDown);
        }
        if self.needs_nats {
            match self.nats.get().map(|c| c.connection_state()) {
                Some(async_nats::connection::State::Connected) => {}
                _ => return Err(NotReady::NotConnected),
            }
        }
        if self.intakes_pending() {
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let waiting = (waiting.iter()).map(|(route, why)| (route.clone(), why.clone()));
            return Err(NotReady::IntakesPending {
                waiting: waiting.collect(),
            });
        }
        let routes = self.routes.get().map(Vec::as_slice).unwrap_or_default();
        if !routes.is_empty() && routes.iter().all(|r| r.refusing()) {
            return Err(NotReady::EveryCircuitOpen);
        }
        Ok(())
    }

    /// `/readyz`'s body: whether ricochet is ready, why not, and each route's circuit.
    fn report(&self) -> (bool, String) {
        let ready = self.ready();
        let routes: Vec<serde_json::Value> = (self.routes.get().into_iter().flatten())
            .map(|route| {
                serde_json::json!({
                    "route": route.name(),
                    "source": route.source(),
                    "circuit": route.circuit(),
                })
            })
            .collect();
        let body = serde_json::json!({
            "ready": ready.is_ok(),
            "reason": ready.as_ref().err().map(NotReady::to_string),
            "routes": routes,
        });
        (ready.is_ok(), format!("{body}\n"))
    }
}

/// What `/readyz` reports of a route (implemented by the pipeline's routes).
pub trait RouteHealth: std::fmt::Debug + Send + Sync {
    fn name(&self) -> &str;
    /// The `source` label of the route's source.
    fn source(&self) -> &'static str;
    /// The state of its circuit breaker (`closed`, `open`, `half_open`).
    fn circuit(&self) -> &'static str;
    /// Whether its circuit breaker refuses calls now.
    fn refusing(&self) -> bool;
}

/// How often histogram observations are folded into their buckets. Until then each one is
/// buffered (about 8 bytes): every five seconds, that buffer held 0.4-0.5 MB at c=128.
const HISTOGRAM_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

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
        // Histograms need periodic upkeep when the exporter does not run its own server:
        // until then every observation is buffered (8 bytes each), so the period bounds
        // that buffer (docs/performance.md, "Where the memory goes").
        let mut tick = tokio::time::interval(HISTOGRAM_UPKEEP);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `/readyz`'s reasons are documented (docs/operations.md): the words stay.
    #[test]
    fn the_reasons_read_as_documented() {
        let pending = NotReady::IntakesPending {
            waiting: vec![
                ("a".into(), "stream \"A\" not found; retrying".into()),
                ("b".into(), "no queue".into()),
            ],
        };
        assert_eq!(
            pending.to_string(),
            "subscriptions or consumers (JetStream, Kafka, AMQP) not set up yet, or reconnecting; \
             route \"a\": stream \"A\" not found; retrying; route \"b\": no queue"
        );
        let nobody = NotReady::IntakesPending { waiting: vec![] };
        assert!(nobody.to_string().ends_with("or reconnecting"));
        assert_eq!(NotReady::NotConnected.to_string(), NOT_CONNECTED);
        assert_eq!(NotReady::ShuttingDown.to_string(), "shutting down");
        let health = Health::new(0, false);
        assert_eq!(health.ready(), Ok(()));
        health.set_shutting_down();
        assert_eq!(health.ready(), Err(NotReady::ShuttingDown));
    }
}
