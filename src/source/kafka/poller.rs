//! The consumer's own thread. librdkafka runs rebalance callbacks inside `poll`, and
//! ricochet's revoke callback blocks: it waits for the partition's in-flight records, then
//! commits synchronously or runs a transaction. Polling here, off the async runtime, lets it
//! block while the runtime (even a single-threaded one) keeps running the lane workers it
//! waits for. Every record is copied out and tracked here at once (so no commit can pass
//! it, and a record of a partition revoked meanwhile is dropped), then handed to the intake
//! over a channel.
//!
//! When stopped, the thread leaves the group itself: the consumer is closed here, where the
//! last revoke callback may block as it likes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use tokio::sync::mpsc;
use tracing::error;

use super::state::Shared;
use super::{Fetched, KafkaConsumer};

/// How long one poll waits for a record; also how long a stop takes to be noticed.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// What the thread hands over: a tracked record, or a consumer error to log.
pub(super) type Polled = Result<Fetched, KafkaError>;

pub(super) struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `consumer`. `finished_at_once`: at-most-once records count as finished
    /// on receipt.
    pub fn start(
        route: &str,
        consumer: Arc<KafkaConsumer>,
        shared: Arc<Shared>,
        finished_at_once: bool,
    ) -> std::io::Result<(Self, mpsc::UnboundedReceiver<Polled>)> {
        let (sender, records) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{route}"))
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    let polled = match consumer.poll(POLL_SLICE) {
                        None => continue,
                        Some(Ok(message)) => {
                            match fetched(&shared, &message, finished_at_once) {
                                Some(record) => Ok(record),
                                // Its partition is no longer ours.
                                None => continue,
                            }
                        }
                        Some(Err(e)) => Err(e),
                    };
                    if sender.send(polled).is_err() {
                        break;
                    }
                }
                // Leaving the group runs the last revoke callback here.
                consumer.unsubscribe();
                drop(consumer);
            })?;
        let poller = Self {
            stop,
            thread: Some(thread),
        };
        Ok((poller, records))
    }

    /// Stops polling and waits until the thread has left the group. The intake must have
    /// dropped its own handles to the consumer first, so that it is closed on that thread.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                error!("the Kafka consumer thread ended abnormally");
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Not stopped through `stop` (the intake ended early): the thread ends by itself.
        self.stop.store(true, Ordering::Release);
    }
}

/// Copies a record out of the consumer and tracks its offset; `None` for a record of a
/// partition no longer assigned.
fn fetched(shared: &Shared, message: &BorrowedMessage<'_>, at_once: bool) -> Option<Fetched> {
    let partition = (message.topic().to_string(), message.partition());
    let generation = shared.track(&partition, message.offset(), at_once)?;
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Fetched {
        topic: partition.0,
        partition: partition.1,
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers,
        generation,
    })
}
