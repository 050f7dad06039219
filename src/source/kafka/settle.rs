//! Settling one Kafka record: the pipeline's [`Settle`] handle for it, and the one place
//! where what the policy decided for a record is carried out. The lane worker (`work` in
//! `mod.rs`) only runs the record again when the answer is a local redelivery.
//!
//! | call | at-least-once | exactly-once | at-most-once |
//! |---|---|---|---|
//! | `accept` | - | - | commits the finished prefix (the record counts as finished since it was tracked) |
//! | `reply`, `dead_letter` | produced; returns with the delivery report (`Now`) | staged for the next transaction (`AtCommit`) | produced (`Now`) |
//! | `ack`, `terminate` | the offset is finished (`Now`) | the offset is finished; counted when its transaction commits (`AtCommit`) | not called |
//! | `redeliver` | `Local(delay)`: the record waits in its lane, then runs again | the same | not called |
//!
//! A record that is no longer ours (its partition revoked, or rewound after an aborted
//! transaction) settles nothing: `Undelivered::Lost` or `SettleError::Lost`, and its next
//! delivery (to the next owner, or after the rewind) settles it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{error, warn};

use super::headers;
use super::publish::KafkaReplier;
use super::transaction::Produced;
use super::{KafkaConsumer, KafkaRoute, Record};
use crate::config::Delivery;
use crate::message::{
    dead_letter, Accepted, Cause, Confirmed, DeadLetter, DeadLettered, Redelivered, Reply, Settle,
    SettleError, Undelivered,
};
use crate::source::backoff::{Backoff, RECONNECT};
use crate::telemetry::metrics::Settlement;

/// Room left for the record's framing, beyond payload, key and headers.
const RECORD_OVERHEAD: usize = 512;

/// A record to produce: a reply or a dead letter.
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Bytes,
}

impl Output {
    fn size(&self) -> usize {
        let headers = self.headers.iter().map(|(n, v)| n.len() + v.len());
        record_size(self.payload.len(), self.key.as_deref(), headers)
    }
}

/// What a record counts against `message.max.bytes`: payload, key, headers (the sum of
/// their name and value lengths) and framing.
fn record_size(payload: usize, key: Option<&[u8]>, headers: impl Iterator<Item = usize>) -> usize {
    payload + key.map_or(0, <[u8]>::len) + headers.sum::<usize>() + RECORD_OVERHEAD
}

/// What the lane workers settle through.
#[derive(Clone)]
pub(super) struct Clients {
    pub replier: Arc<KafkaReplier>,
    /// At-most-once's commit on receipt. Weak: the consumer must be closed on its own
    /// thread (`poller.rs`), so only the intake may hold it.
    pub consumer: Weak<KafkaConsumer>,
}

/// One record's settle handle: its reply and dead letter (with the record's key), and its
/// offset.
pub(super) struct RecordSettle<'a> {
    pub source: &'a KafkaRoute,
    pub record: &'a Record,
    pub clients: &'a Clients,
}

impl RecordSettle<'_> {
    /// The reply as a record: its header values as bytes, unchanged, and the correlation id
    /// the request carried byte for byte. `Inbound::correlation` is text (what NATS and
    /// AMQP ids are, and what traces show), so the one header the pipeline echoed from it
    /// gets the record's own bytes back here.
    fn output(&self, topic: &str, reply: &Reply) -> Output {
        let name = &self.source.route.config.correlation_header;
        let id = headers::correlation(&self.record.headers, name);
        Output {
            topic: topic.to_string(),
            key: self.record.key.clone(),
            headers: (reply.headers.iter())
                .map(|(n, v)| match id {
                    Some(id) if n.eq_ignore_ascii_case(name) => (n.to_string(), id.to_vec()),
                    _ => (n.to_string(), v.to_vec()),
                })
                .collect(),
            payload: reply.body.clone(),
        }
    }

    /// At-least-once and at-most-once: produces `output` and waits for its delivery report,
    /// producing again (never calling the service again) while the record is ours; an
    /// error no retry can fix (too large, no such topic, not authorised) drops the output.
    /// Exactly-once: stages it for the next transaction, which also commits the offset.
    async fn produce(&self, output: Output, produced: Produced) -> Result<Confirmed, Undelivered> {
        let (source, record) = (self.source, self.record);
        if source.delivery == Delivery::ExactlyOnce {
            let partition = record.partition_id();
            let staged = (source.shared).stage(
                &partition,
                record.generation,
                record.offset,
                output,
                produced,
            );
            return match staged {
                true => Ok(Confirmed::AtCommit),
                false => Err(Undelivered::Lost),
            };
        }
        let headers: Vec<(&str, &[u8])> = (output.headers.iter())
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let mut backoff = Backoff::new(RECONNECT);
        loop {
            let sent = self.clients.replier.send(
                &output.topic,
                output.key.as_deref(),
                &headers,
                &output.payload,
            );
            match sent.await {
                Ok(()) => return Ok(Confirmed::Now),
                Err(e) if permanent(&e) => {
                    error!(route = %source.route.name, topic = %output.topic, record = %record.id(), error = %e, "record cannot be produced, ever; dropped");
                    let why = format!("topic {}: {e}", output.topic);
                    return Err(Undelivered::Dropped(Cause::text(why)));
                }
                Err(e) => {
                    warn!(route = %source.route.name, topic = %output.topic, error = %e, "record not delivered; producing it again");
                    // Stopping ends the wait: the record is left to the next run then.
                    if !backoff.wait(&source.stop).await || !source.owns(record) {
                        return Err(Undelivered::Lost);
                    }
                }
            }
        }
    }

    /// Ack or term: the record's offset is finished, if the record is still ours.
    fn finish(&self, action: Settlement) -> Result<Confirmed, SettleError> {
        let record = self.record;
        let partition = record.partition_id();
        let shared = &self.source.shared;
        if !shared.finish(&partition, record.generation, record.offset, action) {
            return Err(SettleError::Lost);
        }
        Ok(match self.source.delivery {
            Delivery::ExactlyOnce => Confirmed::AtCommit,
            Delivery::AtLeastOnce | Delivery::AtMostOnce => Confirmed::Now,
        })
    }
}

impl Settle for RecordSettle<'_> {
    fn too_large(&self, _: &str, reply: &Reply) -> Option<(usize, usize, &'static str)> {
        let limit = self.source.max_message_bytes;
        // Measured without building the record: that happens once, when it is produced.
        let headers = reply.headers.iter().map(|(n, v)| n.len() + v.len());
        let size = record_size(reply.body.len(), self.record.key.as_deref(), headers);
        (size > limit).then_some((size, limit, "the producer's message.max.bytes"))
    }

    fn destination_problem(&self, destination: &str) -> Option<&'static str> {
        (!super::valid_topic(destination))
            .then_some("is not a Kafka topic name (letters, digits, '.', '_', '-')")
    }

    /// The record has counted as finished since it was tracked (`Shared::track`), not from
    /// here: a record queued in its lane behind a slow one must not hold back the commit of
    /// later records that already ran, which a restart would then run a second time. What
    /// is left to do on receipt is the commit.
    async fn accept(&self) -> Result<Accepted, SettleError> {
        if let Some(consumer) = self.clients.consumer.upgrade() {
            self.source.commit_finished(&consumer);
        }
        // Without the consumer (never while a record runs) the shutdown commit has it.
        Ok(Accepted::Settled)
    }

    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        let output = self.output(destination, reply);
        self.produce(output, Produced::Reply).await
    }

    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<DeadLettered, Undelivered> {
        let Some(topic) = &self.source.config.dead_letter_topic else {
            return Ok(DeadLettered::NoDestination);
        };
        let record = self.record;
        let mut headers = record.headers.clone();
        let origin = [
            (dead_letter::ORIGINAL_TOPIC, record.topic.clone()),
            (
                dead_letter::ORIGINAL_PARTITION,
                record.partition.to_string(),
            ),
            (dead_letter::ORIGINAL_OFFSET, record.offset.to_string()),
        ];
        for (name, value) in letter.headers().into_iter().chain(origin) {
            headers.push((name.to_string(), value.into_bytes()));
        }
        let mut output = Output {
            topic: topic.clone(),
            key: record.key.clone(),
            headers,
            payload: record.payload.clone(),
        };
        if output.size() > self.source.max_message_bytes {
            // Keep the record's identity and why; the original topic still holds it.
            output.headers.push((
                dead_letter::PAYLOAD_OMITTED.into(),
                format!("{} bytes exceed message.max.bytes", record.payload.len()).into_bytes(),
            ));
            output.payload = Bytes::new();
        }
        let produced = self.produce(output, Produced::DeadLetter).await;
        produced.map(DeadLettered::Published)
    }

    async fn ack(&self) -> Result<Confirmed, SettleError> {
        self.finish(Settlement::Ack)
    }

    /// Local: the lane worker runs the record again after `delay`; its offset stays
    /// unfinished meanwhile, so no commit passes it.
    async fn redeliver(&self, delay: Duration) -> Result<Redelivered, SettleError> {
        Ok(Redelivered::Local(delay))
    }

    async fn terminate(&self) -> Result<Confirmed, SettleError> {
        self.finish(Settlement::Term)
    }
}

/// Producer errors that no retry of the same record can fix.
fn permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}
