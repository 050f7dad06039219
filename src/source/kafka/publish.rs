//! Replies and dead letters to Kafka: an idempotent producer per route, whose send returns
//! only when the delivery report came back, so a request offset is finished only once its
//! reply is stored by the broker.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;

use crate::source::kafka::KafkaConfig;

/// How long a record may wait in the producer's queue when it is full.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each transaction call (init, offsets, commit, abort).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// One record of a transaction.
pub struct TransactionRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(String, Vec<u8>)],
    pub payload: &'a [u8],
}

pub struct KafkaReplier {
    producer: FutureProducer,
}

impl KafkaReplier {
    /// `transactional_id` makes a transactional producer (exactly-once); this blocks while
    /// the transactions are initialised (fencing an earlier producer with the same id).
    pub fn new(config: &KafkaConfig, transactional_id: Option<&str>) -> Result<Self, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("compression.type", config.compression.as_str())
            .set("linger.ms", "1");
        let security =
            (config.properties()).map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        for (name, value) in security {
            client.set(name, value);
        }
        for (name, value) in &config.producer {
            client.set(name, value);
        }
        if let Some(id) = transactional_id {
            client.set("transactional.id", id);
        }
        let producer: FutureProducer = client.create()?;
        if transactional_id.is_some() {
            producer.init_transactions(Timeout::After(TRANSACTION_TIMEOUT))?;
        }
        Ok(Self { producer })
    }

    /// Exactly-once: produces `records` and commits `offsets` for the consumer group in one
    /// transaction. Blocking. Retriable failures are retried here; an `Abortable` error
    /// wants [`Self::abort`], a `Fatal` one a new producer.
    pub fn commit_transaction(
        &self,
        records: &[TransactionRecord<'_>],
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TransactionError> {
        let timeout = || Timeout::After(TRANSACTION_TIMEOUT);
        self.producer
            .begin_transaction()
            .map_err(TransactionError::from)?;
        for record in records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            let mut future = FutureRecord::to(record.topic)
                .payload(record.payload)
                .headers(headers);
            if let Some(key) = record.key {
                future = future.key(key);
            }
            // Delivery is confirmed by the commit, which flushes the transaction.
            drop(
                self.producer
                    .send_result(future)
                    .map_err(|(error, _)| TransactionError::Abortable(error))?,
            );
        }
        retry_retriable(|| {
            self.producer
                .send_offsets_to_transaction(offsets, group, timeout())
        })?;
        retry_retriable(|| self.producer.commit_transaction(timeout()))
    }

    pub fn abort(&self) -> Result<(), KafkaError> {
        self.producer
            .abort_transaction(Timeout::After(TRANSACTION_TIMEOUT))
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

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// Abort the transaction; its records are processed again.
    #[error("{0}")]
    Abortable(KafkaError),
    /// The producer is unusable (fenced, or a protocol error): make a new one.
    #[error("{0}")]
    Fatal(KafkaError),
}

impl From<KafkaError> for TransactionError {
    fn from(error: KafkaError) -> Self {
        let fatal = matches!(&error, KafkaError::Transaction(e) if e.is_fatal());
        if fatal {
            TransactionError::Fatal(error)
        } else {
            TransactionError::Abortable(error)
        }
    }
}

/// Runs a transaction call again while librdkafka says that may succeed (a timeout after
/// which the broker may already have committed must not become an abort).
fn retry_retriable(
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), TransactionError> {
    let mut tries = 0;
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}
