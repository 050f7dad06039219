//! The NATS micro services API: with `[nats.service]`, ricochet answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS` (each for all services, by name, and by name and id) for the
//! REST service it fronts, so that `nats micro ls|info|stats` and any client of the API see
//! it as a NATS service. Each core NATS route is an endpoint; STATS reports what the
//! pipeline recorded in each route's
//! [`RequestStats`](crate::telemetry::stats::RequestStats).
//!
//! Durable routes (JetStream, Kafka, AMQP) are not endpoints: a NATS request to their
//! subjects is not answered by the service (a stream would store it and answer with its
//! publish ack).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::Client;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ServiceConfig;
use crate::pipeline::{Pipeline, Route};

const PING: &str = "io.nats.micro.v1.ping_response";
const INFO: &str = "io.nats.micro.v1.info_response";
const STATS: &str = "io.nats.micro.v1.stats_response";

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
                let (requests, errors, total, last_error) = route.stats.totals();
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
        .filter(|r| super::is_core(r))
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
}
