//! A lane worker: runs its lane's records through the pipeline (`Pipeline::deliver`), one
//! after another, each with its settle handle (`settle.rs`), which carries out what the
//! pipeline decided. What is left here is a local redelivery: the record waits in its lane
//! for its delay (holding its lane, not its partition: `lanes.rs`), then runs again.

use std::sync::Arc;
use std::time::Duration;

use super::headers;
use super::lanes::Lane;
use super::settle::{Clients, RecordSettle};
use super::{KafkaRoute, Record};
use crate::message::{Inbound, Position, Redelivered};
use crate::pipeline::Settled;
use crate::route::Captures;

impl KafkaRoute {
    /// A lane worker: processes its lane's records in order until the lane is empty.
    pub(super) async fn work(self: Arc<Self>, lane: Lane, first: Record, clients: Clients) {
        let mut next = Some(first);
        while let Some(record) = next {
            self.process(&lane, &record, &clients).await;
            let mut state = self.shared.lock();
            drop(record);
            next = state.lanes.next(&lane);
            if next.is_none() {
                self.shared
                    .worker_done(&mut state, lane.partition(), lane.generation());
            }
        }
    }

    /// Processes one record until the pipeline is done with it. Its settle handle
    /// (`settle.rs`) carries out what was decided, its offset included; what is left here
    /// is a local redelivery: the record waits in its lane (the partition's other lanes go
    /// on), then goes through the pipeline again, unless it lost its partition or ricochet
    /// is stopping meanwhile (then it is left to the next owner, unsettled).
    async fn process(&self, lane: &Lane, record: &Record, clients: &Clients) {
        let route = &self.route;
        let mut inbound = self.inbound(record);
        let settle = RecordSettle {
            source: self,
            record,
            clients,
        };
        loop {
            let captures = self.captures(&record.topic);
            let settled = (self.pipeline).deliver(route, captures, &inbound, &settle);
            match settled.await {
                // Finished, or left unsettled to the next owner: either way, done here.
                // (`ByBroker` never comes from Kafka's handle: its redelivery is local.)
                Settled::Done | Settled::Abandoned | Settled::Redeliver(Redelivered::ByBroker) => {
                    return
                }
                Settled::Redeliver(Redelivered::Local(delay)) => {
                    if !self.wait_to_retry(lane, record, delay).await {
                        return;
                    }
                    inbound.delivered += 1;
                    // A fresh deadline for the next round.
                    inbound.received = std::time::Instant::now();
                }
            }
        }
    }

    /// The route's captures for a topic. Topics named explicitly (`kafka.topics`,
    /// `kafka.topic_pattern`) need not match a `subject` without captures.
    fn captures(&self, topic: &str) -> Option<Captures> {
        let pattern = &self.route.pattern;
        pattern.matches(topic).or_else(|| {
            let explicit = !self.config.topics.is_empty() || self.config.topic_pattern.is_some();
            (explicit && pattern.capture_names().is_empty()).then(Captures::default)
        })
    }

    /// Waits `delay` holding the record's lane (not its partition: see `lanes.rs`);
    /// `false` if the record lost its partition or ricochet is stopping (the wait ends at
    /// once then).
    async fn wait_to_retry(&self, lane: &Lane, record: &Record, delay: Duration) -> bool {
        self.set_waiting(lane, true);
        let woken = self.shared.wake.notified();
        tokio::pin!(woken);
        if self.owns(record) {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut woken => {}
                _ = self.stop.cancelled() => {}
            }
        }
        self.set_waiting(lane, false);
        self.owns(record)
    }

    fn set_waiting(&self, lane: &Lane, waiting: bool) {
        self.shared.lock().lanes.wait(lane, waiting);
        // The intake decides whether the partition pauses or resumes.
        self.shared.retrying_changed.notify_one();
    }

    /// Whether the record still belongs to this member's current view of its partition.
    pub(super) fn owns(&self, record: &Record) -> bool {
        !self.stop.is_cancelled()
            && self
                .shared
                .lock()
                .partitions
                .get(&record.partition_id())
                .is_some_and(|ps| ps.generation == record.generation && !ps.revoking)
    }

    fn inbound(&self, record: &Record) -> Inbound {
        let config = &self.route.config;
        let (headers, unreadable) = headers::split(&record.headers, &config.correlation_header);
        let mut inbound = Inbound::new(
            record.topic.clone(),
            crate::message::reply_destination(
                &headers,
                &config.reply_to_header,
                self.config.reply_topic.as_deref(),
            ),
            headers,
            record.payload.clone(),
        );
        inbound.unreadable = unreadable;
        // The text form, for traces and the pipeline's echo; the reply gets the raw bytes
        // (`RecordSettle::output`).
        let correlation = headers::correlation(&record.headers, &config.correlation_header);
        inbound.correlation = Some(match correlation {
            Some(id) => String::from_utf8_lossy(id).into_owned(),
            None => record.id(),
        });
        inbound.idempotency_key = Some(record.id());
        inbound.position = Position::Partition {
            partition: record.partition,
            offset: record.offset,
        };
        inbound.sent_at = record.sent_at;
        inbound
    }
}
