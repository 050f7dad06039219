//! The NATS micro services API: with `[nats.service]`, ricochet answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS` (each for all services, by name, and by name and id) for the
//! REST service it fronts, so that `nats micro ls|info|stats` and any client of the API see
//! it as a NATS service. Each core NATS route is an endpoint; STATS reports what the
//! pipeline recorded in each route's [`RequestStats`].
//!
//! Durable routes (JetStream, Kafka, AMQP) are not endpoints: a NATS request to their
//! subjects is not answered by the service (a stream would store it and answer with its
//! publish ack).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::Client;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ServiceConfig;
use crate::message::reply::SERVICE_ERROR_HEADER;
use crate::message::Reply;
use crate::pipeline::{Pipeline, Route};

const PING: &str = "io.nats.micro.v1.ping_response";
const INFO: &str = "io.nats.micro.v1.info_response";
const STATS: &str = "io.nats.micro.v1.stats_response";

/// What STATS reports of one route: messages finished, those answered with an error status
/// (>= 400: ricochet's own errors and the service's), the last of them, and the time from
/// receipt to the finished message.
#[derive(Debug, Default)]
pub struct RequestStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RequestStats {
    /// One finished message: `failed` is its error (`"<status>:<description>"`) if its
    /// reply had an error status.
    pub fn record(&self, elapsed: Duration, failed: Option<String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_ns.fetch_add(nanos, Ordering::Relaxed);
        if let Some(error) = failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        }
    }

    /// The error a reply stands for, in the API's `"<code>:<description>"` form, if its
    /// status is an error. Only error replies allocate.
    pub fn error_of(reply: &Reply) -> Option<String> {
        let status = reply.status.as_u16();
        (status >= 400).then(|| {
            let description = reply.header(SERVICE_ERROR_HEADER).unwrap_or("");
            format!("{status}:{description}")
        })
    }

    fn json(&self) -> (u64, u64, u64, String) {
        let requests = self.requests.load(Ordering::Relaxed);
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        (
            requests,
            self.errors.load(Ordering::Relaxed),
            self.processing_ns.load(Ordering::Relaxed),
            last.clone().unwrap_or_default(),
        )
    }
}

/// One ricochet instance as a micro service.
struct Service {
    name: String,
    id: String,
    version: String,
    description: String,
    metadata: BTreeMap<String, String>,
    started: String,
    /// The core routes, with the subject and queue group each subscribes with.
    endpoints: Vec<(Arc<Route>, String, String)>,
}

impl Service {
    /// The fields every answer starts with.
    fn identity(&self, kind: &str) -> serde_json::Map<String, Value> {
        let mut answer = serde_json::Map::new();
        answer.insert("type".into(), json!(kind));
        answer.insert("name".into(), json!(self.name));
        answer.insert("id".into(), json!(self.id));
        answer.insert("version".into(), json!(self.version));
        answer.insert("metadata".into(), json!(self.metadata));
        answer
    }

    fn ping(&self) -> Value {
        Value::Object(self.identity(PING))
    }

    fn info(&self) -> Value {
        let mut answer = self.identity(INFO);
        answer.insert("description".into(), json!(self.description));
        let endpoints: Vec<Value> = (self.endpoints.iter())
            .map(|(route, subject, queue_group)| {
                json!({
                    "name": route.name,
                    "subject": subject,
                    "queue_group": queue_group,
                    "metadata": {
                        "http.method": route.config.method,
                        "http.path": route.config.path,
                    },
                })
            })
            .collect();
        answer.insert("endpoints".into(), json!(endpoints));
        Value::Object(answer)
    }

    fn stats(&self) -> Value {
        let mut answer = self.identity(STATS);
        answer.insert("started".into(), json!(self.started));
        let endpoints: Vec<Value> = (self.endpoints.iter())
            .map(|(route, subject, queue_group)| {
                let (requests, errors, total, last_error) = route.stats.json();
                json!({
                    "name": route.name,
                    "subject": subject,
                    "queue_group": queue_group,
                    "num_requests": requests,
                    "num_errors": errors,
                    "last_error": last_error,
                    "processing_time": total,
                    "average_processing_time": total.checked_div(requests).unwrap_or(0),
                    "data": Value::Null,
                })
            })
            .collect();
        answer.insert("endpoints".into(), json!(endpoints));
        Value::Object(answer)
    }
}

/// The nine control subjects: each verb for all services, by name, by name and id.
fn control_subjects(name: &str, id: &str) -> Vec<(&'static str, String)> {
    let mut subjects = Vec::with_capacity(9);
    for verb in ["PING", "INFO", "STATS"] {
        subjects.push((verb, format!("$SRV.{verb}")));
        subjects.push((verb, format!("$SRV.{verb}.{name}")));
        subjects.push((verb, format!("$SRV.{verb}.{name}.{id}")));
    }
    subjects
}

/// Subscribes to the control subjects, then answers them on a task of its own until `stop`.
pub async fn serve(
    client: Client,
    config: &ServiceConfig,
    pipeline: Arc<Pipeline>,
    default_queue_group: &str,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let endpoints = (pipeline.routes().iter())
        .filter(|r| crate::source::nats::is_core(r))
        .map(|route| {
            let subject = route.pattern.subscription_subject();
            let group = route
                .consumer_group
                .as_deref()
                .unwrap_or(default_queue_group);
            (route.clone(), subject, group.to_string())
        })
        .collect();
    let service = Arc::new(Service {
        name: config.name.clone(),
        id: nuid::next().to_string(),
        version: config.version.clone(),
        description: config.description.clone(),
        metadata: config.metadata.clone(),
        started: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        endpoints,
    });
    let mut subscriptions = Vec::new();
    for (verb, subject) in control_subjects(&service.name, &service.id) {
        subscriptions.push((verb, client.subscribe(subject).await?));
    }
    client.flush().await?;
    info!(name = %service.name, id = %service.id, "answering the NATS micro services API ($SRV.PING, $SRV.INFO, $SRV.STATS)");
    let requests = futures::stream::select_all(
        (subscriptions.into_iter()).map(|(verb, subscriber)| subscriber.map(move |m| (verb, m))),
    );
    tokio::spawn(answer(client, service, requests, stop));
    Ok(())
}

async fn answer(
    client: Client,
    service: Arc<Service>,
    mut requests: impl futures::Stream<Item = (&'static str, async_nats::Message)> + Unpin,
    stop: CancellationToken,
) {
    loop {
        let (verb, message) = tokio::select! {
            next = requests.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = stop.cancelled() => break,
        };
        let Some(reply) = message.reply else { continue };
        let body = match verb {
            "PING" => service.ping(),
            "INFO" => service.info(),
            _ => service.stats(),
        };
        if let Err(e) = client.publish(reply, body.to_string().into()).await {
            warn!(error = %e, "micro services API answer not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ErrorKind;

    #[test]
    fn every_verb_answers_for_all_by_name_and_by_id() {
        let subjects: Vec<String> = control_subjects("orders", "ID1")
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(
            subjects,
            [
                "$SRV.PING",
                "$SRV.PING.orders",
                "$SRV.PING.orders.ID1",
                "$SRV.INFO",
                "$SRV.INFO.orders",
                "$SRV.INFO.orders.ID1",
                "$SRV.STATS",
                "$SRV.STATS.orders",
                "$SRV.STATS.orders.ID1",
            ]
        );
    }

    #[test]
    fn stats_count_requests_errors_the_last_error_and_processing_time() {
        let stats = RequestStats::default();
        let ok = Reply::from_response(
            http::StatusCode::OK,
            &http::HeaderMap::new(),
            bytes::Bytes::new(),
            &Default::default(),
        );
        assert_eq!(RequestStats::error_of(&ok), None);
        stats.record(Duration::from_millis(3), RequestStats::error_of(&ok));
        let timeout = Reply::error(ErrorKind::Timeout, "the service did not answer within 1s");
        let failed = RequestStats::error_of(&timeout);
        assert_eq!(
            failed.as_deref(),
            Some("504:the service did not answer within 1s")
        );
        stats.record(Duration::from_millis(5), failed);
        assert_eq!(
            stats.json(),
            (
                2,
                1,
                8_000_000,
                "504:the service did not answer within 1s".into()
            )
        );
    }
}
