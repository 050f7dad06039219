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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A record's headers, every key and value as librdkafka holds them (a null value as empty).
///
/// Not through rdkafka's `Headers::iter`: it reads each key with `CStr::to_str().unwrap()`,
/// so a key that is not UTF-8 (which any producer writing the protocol itself can send)
/// would panic this thread and stop the route. Such a key is kept with U+FFFD in place of
/// its invalid bytes: never a valid HTTP header name, so the record is refused with 400 and
/// dead-lettered like any record with an invalid header name.
fn headers_of(message: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    use rdkafka::bindings::{rd_kafka_header_get_all, rd_kafka_headers_t};
    use rdkafka::types::RDKafkaRespErr;
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    // `BorrowedHeaders` is librdkafka's header list itself (rdkafka casts it the same way).
    let native = headers as *const _ as *const rd_kafka_headers_t;
    (0..headers.count())
        .filter_map(|idx| {
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0;
            // SAFETY: `native` is the header list of `message`, alive for this borrow; the
            // name and value librdkafka points to live in it and are copied before it ends.
            let err =
                unsafe { rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
            if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            // SAFETY: as above; librdkafka's names are NUL-terminated.
            let key = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
            let value = match value.is_null() {
                true => Vec::new(),
                // SAFETY: as above; `size` bytes at `value`.
                false => unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec(),
            };
            Some((String::from_utf8_lossy(key).into_owned(), value))
        })
        .collect()
}

/// Copies a record out of the consumer and tracks its offset; `None` for a record of a
/// partition no longer assigned.
fn fetched(shared: &Shared, message: &BorrowedMessage<'_>, at_once: bool) -> Option<Fetched> {
    let partition = (message.topic().to_string(), message.partition());
    let generation = shared.track(&partition, message.offset(), at_once)?;
    let headers = headers_of(message);
    Some(Fetched {
        topic: partition.0,
        partition: partition.1,
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers,
        generation,
        sent_at: sent_at(message.timestamp().to_millis()),
    })
}

/// A record's timestamp (CreateTime or LogAppendTime, as its topic says), if it has one: a
/// producer that sets none sends -1, and zero or less is no time a record was made at.
pub(super) fn sent_at(millis: Option<i64>) -> Option<SystemTime> {
    let millis = u64::try_from(millis?).ok().filter(|m| *m > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_timestamp_is_read_and_none_or_nonsense_is_none() {
        assert_eq!(sent_at(None), None);
        // -1: the producer set none; 0 and less: no time a record was made at.
        for none in [-1, 0, i64::MIN] {
            assert_eq!(sent_at(Some(none)), None, "{none}");
        }
        let at = UNIX_EPOCH + Duration::from_millis(1_765_100_000_123);
        assert_eq!(sent_at(Some(1_765_100_000_123)), Some(at));
        // The largest a producer can send is a time the clock holds.
        assert!(sent_at(Some(i64::MAX)).is_some());
    }
}
