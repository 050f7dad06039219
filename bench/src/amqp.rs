//! The AMQP legs: a requester over RabbitMQ (one channel, direct reply-to, replies matched
//! to requests by correlation id), and A1's native RPC responder: consume, publish the
//! payload to `reply_to` with the correlation id, ack (no publisher confirms: what a plain
//! RabbitMQ RPC server does; ricochet waits for the confirm before it acks, so A2 also
//! measures that round trip).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

pub struct AmqpRequester {
    channel: Channel,
    queue: String,
    pending: Pending,
    next: AtomicU64,
    _connection: Connection,
}

impl AmqpRequester {
    pub async fn new(url: &str, queue: &str) -> anyhow::Result<Arc<Self>> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("RabbitMQ (--amqp-url)")?;
        let channel = connection.create_channel().await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut replies = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "bench".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let id = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string());
                let sender = id.and_then(|id| waiting.lock().unwrap().remove(&id));
                if let Some(sender) = sender {
                    let _ = sender.send(reply.data);
                }
            }
        });
        Ok(Arc::new(Self {
            channel,
            queue: queue.to_string(),
            pending,
            next: AtomicU64::new(0),
            _connection: connection,
        }))
    }

    pub async fn call(&self, payload: &Bytes) -> anyhow::Result<()> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (sender, receiver) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.clone(), sender);
        let properties = BasicProperties::default()
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(id.as_str().into());
        let published = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await;
        if let Err(e) = published {
            self.pending.lock().unwrap().remove(&id);
            return Err(e.into());
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), receiver).await;
        let body = match reply {
            Ok(Ok(body)) => body,
            _ => {
                self.pending.lock().unwrap().remove(&id);
                anyhow::bail!("no reply within 10 s");
            }
        };
        super::check(&body, payload)
    }

    /// Deletes the leg's queues (ricochet declares its request queue and retry queue
    /// durable).
    pub async fn delete(&self, queues: &[String]) {
        for queue in queues {
            let _ = (self.channel)
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// A1's responder: answers every request on `queue` with its payload. Prints "ready" once
/// it consumes.
pub async fn respond(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("RabbitMQ (--amqp-url)")?;
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    channel.basic_qos(1024, BasicQosOptions::default()).await?;
    let mut requests = channel
        .basic_consume(
            queue.into(),
            "bench-responder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("ready");
    while let Some(delivery) = requests.next().await {
        let delivery = delivery?;
        if let Some(reply_to) = delivery.properties.reply_to().clone() {
            let mut properties = BasicProperties::default();
            if let Some(id) = delivery.properties.correlation_id().clone() {
                properties = properties.with_correlation_id(id);
            }
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?;
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
