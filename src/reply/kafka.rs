//! Replies and dead letters to Kafka: an idempotent producer per route, whose send returns
//! only when the delivery report came back, so a request offset is finished only once its
//! reply is stored by the broker.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;

/// How long a record may wait in the producer's queue when it is full.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct KafkaReplier {
    producer: FutureProducer,
}

impl KafkaReplier {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("compression.type", config.compression.as_str())
            .set("linger.ms", "1");
        for (name, value) in &config.producer {
            client.set(name, value);
        }
        Ok(Self {
            producer: client.create()?,
        })
    }

    /// Sends one record and waits for its delivery report.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        payload: &[u8],
    ) -> Result<(), KafkaError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut record = FutureRecord::to(topic).payload(payload).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Timeout::After(QUEUE_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }

    /// Waits for everything sent to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}
