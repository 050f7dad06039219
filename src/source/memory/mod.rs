//! A toy source, compiled only in tests: requests come from an in-memory queue per route,
//! and what the pipeline asks of the "broker" (replies, dead letters, acks, redeliveries)
//! is written down for the test to read. It exists to show, and to hold in a test, what
//! adding a source takes: this folder and one line in `sources!` (`source/mod.rs`).
//!
//! ```toml
//! [[routes]]
//! source = "memory"
//! [routes.memory]
//! queue = "orders"
//! max_deliver = 2
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{Delivery, RouteConfig};
use crate::message::{
    Confirmed, DeadLetter, DeadLettered, Inbound, Redelivered, Reply, Settle, SettleError,
    Undelivered,
};
use crate::pipeline::Policy;
use crate::source::{Context, Intake, Source};
use crate::telemetry::trace::SpanSource;

/// A memory route's keys: its `[routes.memory]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySource {
    pub memory: MemoryTable,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTable {
    /// The queue the route takes its requests from.
    pub queue: String,
    /// Deliveries before a failing request is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
}

fn default_max_deliver() -> u32 {
    3
}

/// A request in a queue.
#[derive(Debug, Clone)]
struct Request {
    subject: String,
    reply: Option<String>,
    payload: Bytes,
    delivered: u32,
}

/// One queue: where requests wait, and what happened to them.
struct Queue {
    sender: mpsc::UnboundedSender<Request>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    events: Mutex<Vec<String>>,
}

fn queue(name: &str) -> Arc<Queue> {
    static QUEUES: OnceLock<Mutex<HashMap<String, Arc<Queue>>>> = OnceLock::new();
    let mut queues = QUEUES.get_or_init(Default::default).lock().unwrap();
    let queue = queues.entry(name.to_string()).or_insert_with(|| {
        let (sender, receiver) = mpsc::unbounded_channel();
        Arc::new(Queue {
            sender,
            receiver: Mutex::new(Some(receiver)),
            events: Mutex::default(),
        })
    });
    queue.clone()
}

/// Puts a request into queue `name`.
pub fn publish(name: &str, subject: &str, reply: Option<&str>, payload: &'static [u8]) {
    let request = Request {
        subject: subject.to_string(),
        reply: reply.map(str::to_string),
        payload: Bytes::from_static(payload),
        delivered: 1,
    };
    queue(name).sender.send(request).expect("the queue is open");
}

/// What the pipeline asked of queue `name`'s broker, in order.
pub fn events(name: &str) -> Vec<String> {
    queue(name).events.lock().unwrap().clone()
}

impl Source for MemorySource {
    const KIND: &'static str = "memory";
    const DURABLE: bool = true;
    const TABLE_HINT: Option<&'static str> = Some("a [routes.memory] table with `queue`");

    fn policy(&self) -> Policy {
        let max = Some(self.memory.max_deliver);
        Policy::durable(Delivery::AtLeastOnce, max, "max_deliver", Vec::new())
    }

    fn spans(&self, _: &RouteConfig, _: &str) -> SpanSource {
        SpanSource {
            system: "memory",
            consumer_group: None,
        }
    }

    fn intake(&self, context: Context) -> Option<Intake> {
        let queue = queue(&self.memory.queue);
        let mut receiver = queue.receiver.lock().unwrap().take()?;
        Some(Box::pin(async move {
            let Context {
                route,
                pipeline,
                health,
                tracker,
                stop,
                ..
            } = context;
            health.intake_ready();
            loop {
                let admitted = tokio::select! {
                    admitted = route.admission() => match admitted {
                        Some(admitted) => admitted,
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                };
                let request = tokio::select! {
                    request = receiver.recv() => match request {
                        Some(request) => request,
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                };
                let (route, pipeline, queue) = (route.clone(), pipeline.clone(), queue.clone());
                let taken = route.take();
                let work = async move {
                    let _taken = taken;
                    let mut inbound = Inbound::new(
                        request.subject.clone(),
                        request.reply.clone(),
                        Vec::new(),
                        request.payload.clone(),
                    );
                    inbound.delivered = request.delivered;
                    let settle = Held { queue, request };
                    let captures = route.pattern.matches(&inbound.subject);
                    pipeline.deliver(&route, captures, &inbound, &settle).await;
                };
                admitted.run(&tracker, work).await;
            }
        }))
    }
}

/// One request in hand, and its queue.
struct Held {
    queue: Arc<Queue>,
    request: Request,
}

impl Held {
    fn note(&self, event: String) {
        self.queue.events.lock().unwrap().push(event);
    }
}

impl Settle for Held {
    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        let body = String::from_utf8_lossy(&reply.body);
        self.note(format!(
            "reply {destination} {} {body}",
            reply.status.as_u16()
        ));
        Ok(Confirmed::Now)
    }

    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<DeadLettered, Undelivered> {
        self.note(format!(
            "dead_letter {} {}",
            letter.reason, letter.delivered
        ));
        Ok(DeadLettered::Published(Confirmed::Now))
    }

    async fn ack(&self) -> Result<Confirmed, SettleError> {
        self.note("ack".into());
        Ok(Confirmed::Now)
    }

    async fn redeliver(&self, delay: Duration) -> Result<Redelivered, SettleError> {
        self.note(format!("redeliver {delay:?}"));
        let mut again = self.request.clone();
        again.delivered += 1;
        let sent = self.queue.sender.send(again);
        sent.map(|()| Redelivered::ByBroker)
            .map_err(|_| SettleError::ConnectionLost)
    }

    async fn terminate(&self) -> Result<Confirmed, SettleError> {
        self.note("term".into());
        Ok(Confirmed::Now)
    }
}

#[cfg(test)]
mod tests;
