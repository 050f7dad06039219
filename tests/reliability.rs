//! Reliability suite (issue #17): ricochet killed and restarted under load, brokers bounced,
//! every request accounted for. Each scenario prints its figures (messages, answered, lost,
//! duplicated, longest stall, recovery) and asserts on counts, never on speed: the machine
//! running them may be loaded.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::brokers::OwnBroker;
use common::jetstream::{request_headers, Stream};
use common::*;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Generous: the suite shares two cores with other builds.
const ALL_ANSWERED_WITHIN: Duration = Duration::from_secs(240);

/// Every reply seen, by correlation id, and when new ones stopped coming.
#[derive(Default)]
struct Tally {
    answers: HashMap<String, usize>,
    /// Replies read from a log (Kafka offset, stream sequence) with their ids; a reply read
    /// twice from the log (a reader's own redelivery) is counted once.
    by_offset: Vec<(i64, String)>,
    offsets: std::collections::HashSet<i64>,
    started: Option<Instant>,
    last_new: Option<Instant>,
    longest_stall: Duration,
    /// When each request was first answered, in order.
    new_at: Vec<Instant>,
}

impl Tally {
    /// One reply; `offset` is its place in a log, if it was read from one.
    fn record(&mut self, id: String, offset: Option<i64>) {
        let now = Instant::now();
        self.started.get_or_insert(now);
        if let Some(offset) = offset {
            if !self.offsets.insert(offset) {
                return;
            }
            self.by_offset.push((offset, id.clone()));
        }
        let count = self.answers.entry(id).or_default();
        *count += 1;
        if *count == 1 {
            if let Some(last) = self.last_new {
                self.longest_stall = self.longest_stall.max(now - last);
            }
            self.last_new = Some(now);
            self.new_at.push(now);
        }
    }

    fn unique(&self) -> usize {
        self.answers.len()
    }

    /// Time from `since` to the first answer of a request not answered before.
    fn first_new_after(&self, since: Instant) -> Option<Duration> {
        let i = self.new_at.partition_point(|&t| t < since);
        self.new_at.get(i).map(|&t| t - since)
    }

    /// The answered ids are exactly the ids sent: `0..total`.
    fn assert_answered_exactly(&self, total: usize) {
        let expected: std::collections::HashSet<String> =
            (0..total).map(|i| i.to_string()).collect();
        let seen: std::collections::HashSet<String> = self.answers.keys().cloned().collect();
        assert_eq!(seen, expected, "the answered ids are exactly the ids sent");
    }

    fn duplicates(&self) -> usize {
        self.answers.values().map(|n| n - 1).sum()
    }
}

type Shared = Arc<Mutex<Tally>>;

/// What a scenario prints: the issue's figures.
fn report(scenario: &str, sent: usize, tally: &Tally, recoveries: &[Duration], extra: &str) {
    let lost = sent.saturating_sub(tally.unique());
    println!(
        "RELIABILITY {scenario}: messages {sent}, answered {}, lost {lost}, duplicated {}, \
         longest stall {:.1?}, recovery {:.1?}{extra}",
        tally.unique(),
        tally.duplicates(),
        tally.longest_stall,
        recoveries,
    );
}

/// Waits until `tally` holds `count` distinct answers.
async fn answered_at_least(tally: &Shared, count: usize, within: Duration) {
    let what = format!("{count} distinct requests answered");
    eventually(within, &what, || async {
        let unique = tally.lock().unwrap().unique();
        holds(unique >= count, format!("{unique} answered"))
    })
    .await;
}

/// Waits until every one of `ids` is answered.
async fn answered_all<'a>(
    tally: &Shared,
    ids: impl IntoIterator<Item = &'a String> + Clone,
    within: Duration,
    what: &str,
) {
    eventually(within, what, || async {
        let tally = tally.lock().unwrap();
        let all = ids.clone().into_iter().count();
        let missing = (ids.clone().into_iter())
            .filter(|id| !tally.answers.contains_key(*id))
            .count();
        holds(missing == 0, format!("{missing} of {all} unanswered"))
    })
    .await;
}

/// Time from `since` until a request not answered before is answered.
async fn recovery_after(tally: &Shared, since: Instant) -> Duration {
    let before = tally.lock().unwrap().unique();
    answered_at_least(tally, before + 1, Duration::from_secs(120)).await;
    since.elapsed()
}

/// A stream on the shared NATS, memory storage, subjects `{prefix}.req.>`, messages kept
/// 15 minutes (longer than a scenario).
async fn js_stream(tag: &str) -> Stream {
    let js = jetstream::new(nats().await);
    Stream::create_with(js, &unique(tag), |config| {
        config.max_age = Duration::from_secs(900);
    })
    .await
}

/// The route on `stream`, with at most `max_in_flight` requests at once.
fn js_route(stream: &Stream, max_in_flight: usize) -> String {
    let consumer = "durable = \"ricochet-rel\"\nack_wait = \"2s\"\nmax_deliver = 1000\n\
                    redelivery_backoff = [\"100ms\"]";
    stream.route(&format!("max_in_flight = {max_in_flight}"), consumer)
}

/// Collects replies on `subject` (and counts dead letters on `dlq`) in the background.
async fn collect_nats(
    client: &async_nats::Client,
    subject: &str,
    dlq: &str,
) -> (Shared, Arc<AtomicUsize>) {
    let tally = Shared::default();
    let dead = Arc::new(AtomicUsize::new(0));
    let mut replies = client.subscribe(subject.to_string()).await.unwrap();
    let mut letters = client.subscribe(dlq.to_string()).await.unwrap();
    client.flush().await.unwrap();
    let sink = tally.clone();
    tokio::spawn(async move {
        while let Some(reply) = replies.next().await {
            let id = header(&reply, "correlation-id").unwrap_or_default();
            sink.lock().unwrap().record(id, None);
        }
    });
    let count = dead.clone();
    tokio::spawn(async move {
        while letters.next().await.is_some() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (tally, dead)
}

/// Publishes requests `0..total` to `{prefix}.req.<i>`, 100 acks outstanding at a time,
/// publishing again whatever the server did not acknowledge, each with its `Nats-Msg-Id` so
/// that the stream keeps one copy. Returns how many publishes it made (including the
/// repeated ones). `pause` comes after every 100.
fn js_publisher(
    js: jetstream::Context,
    prefix: String,
    replies: String,
    total: usize,
    pause: Duration,
    acked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    js_publisher_watching(js, None, prefix, replies, total, pause, acked)
}

/// [`js_publisher`] that, told its connection's losses, gives up waiting for the acks of a
/// round when the connection is lost (they will never come) and publishes the round again.
fn js_publisher_watching(
    js: jetstream::Context,
    mut losses: Option<tokio::sync::watch::Receiver<u64>>,
    prefix: String,
    replies: String,
    total: usize,
    pause: Duration,
    acked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut publishes = 0;
        let ids: Vec<usize> = (0..total).collect();
        for chunk in ids.chunks(100) {
            let mut pending: Vec<usize> = chunk.to_vec();
            while !pending.is_empty() {
                if let Some(losses) = &mut losses {
                    losses.borrow_and_update();
                }
                let mut acks = Vec::new();
                let mut failed = Vec::new();
                for &i in &pending {
                    publishes += 1;
                    // Bounded: while the server is down the client holds the publish until
                    // it has reconnected; a requester gives up and publishes again.
                    let publish = js.publish_with_headers(
                        format!("{prefix}.req.{i}"),
                        {
                            let mut headers = request_headers(&replies, &i.to_string());
                            headers.insert("Nats-Msg-Id", format!("req-{i}").as_str());
                            headers
                        },
                        "x".into(),
                    );
                    match tokio::time::timeout(Duration::from_secs(5), publish).await {
                        Ok(Ok(ack)) => acks.push((i, ack)),
                        _ => failed.push(i),
                    }
                }
                // Awaited together: an ack lost with the server costs its timeout once per
                // round, not once per lost ack (a round that lost 60 acks would wait 60
                // timeouts one after the other, a stall of the requester's own).
                let round: Vec<usize> = acks.iter().map(|(i, _)| *i).collect();
                let acks = acks.into_iter().map(|(i, ack)| async move {
                    (i, tokio::time::timeout(Duration::from_secs(10), ack).await)
                });
                let acks = futures::future::join_all(acks);
                let answered = match &mut losses {
                    Some(losses) => tokio::select! {
                        answered = acks => Some(answered),
                        Ok(()) = losses.changed() => None,
                    },
                    None => Some(acks.await),
                };
                let Some(answered) = answered else {
                    // Published again with the same Nats-Msg-Id: the stream keeps one copy.
                    failed.extend(round);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    pending = failed;
                    continue;
                };
                for (i, ack) in answered {
                    if !matches!(ack, Ok(Ok(_))) {
                        failed.push(i);
                    } else {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if !failed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                pending = failed;
            }
            tokio::time::sleep(pause).await;
        }
        publishes
    })
}

/// ricochet SIGKILLed and restarted three times during 10,000 JetStream requests.
///
/// ricochet acknowledges a request (double ack: it waits for the server's confirmation)
/// only after its reply is published, and holds the request's `max_in_flight` permit until
/// then, so what a kill can repeat is at most the requests in flight at that moment: at most
/// `max_in_flight` per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_killed_three_times_loses_no_request() {
    const TOTAL: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    const KILLS: usize = 3;
    let stream = js_stream("reljskill").await;
    let (js, prefix) = (&stream.js, &stream.prefix);
    let client = nats().await;
    let replies = format!("{prefix}.replies");
    let (tally, dead) = collect_nats(&client, &replies, &format!("{prefix}.dlq")).await;
    let upstream = Upstream::slow_echo(Duration::from_millis(1)).await;
    let admin = free_port();
    let toml = config(&upstream.base_url(), admin, &js_route(&stream, IN_FLIGHT));
    let mut ricochet = Ricochet::start(&toml, admin).await;
    let publisher = js_publisher(
        js.clone(),
        prefix.clone(),
        replies.clone(),
        TOTAL,
        Duration::ZERO,
        Arc::default(),
    );

    let mut recoveries = Vec::new();
    for kill in 1..=KILLS {
        answered_at_least(&tally, TOTAL * kill / (KILLS + 1), ALL_ANSWERED_WITHIN).await;
        ricochet.signal("-KILL");
        let killed_at = Instant::now();
        ricochet.wait_exit(Duration::from_secs(10)).await;
        drop(ricochet);
        ricochet = Ricochet::start(&toml, admin).await;
        recoveries.push(recovery_after(&tally, killed_at).await);
    }
    let sent = publisher.await.unwrap();
    answered_at_least(&tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    // Let redeliveries of requests that were in flight at the last kill arrive and be counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stream.delete().await;
    let tally = tally.lock().unwrap();
    report(
        "jetstream, 3 kills",
        TOTAL,
        &tally,
        &recoveries,
        &format!(
            ", publishes {sent}, dead-lettered {}, upstream calls {} ({} repeated)",
            dead.load(Ordering::SeqCst),
            upstream.calls(),
            upstream.calls() - TOTAL.min(upstream.calls())
        ),
    );
    tally.assert_answered_exactly(TOTAL);
    assert!(
        tally.duplicates() <= KILLS * IN_FLIGHT,
        "a kill repeats at most the {IN_FLIGHT} requests in flight: {} duplicates",
        tally.duplicates()
    );
    assert!(
        upstream.calls() <= TOTAL + KILLS * IN_FLIGHT,
        "a kill makes the service repeat at most the {IN_FLIGHT} calls in flight: {} calls",
        upstream.calls()
    );
    assert_eq!(dead.load(Ordering::SeqCst), 0, "nothing dead-lettered");
    drop(ricochet);
}

/// A producer that sends every record in a batch of its own (tansu stalls when a fetch
/// starts inside a batch), many at once.
fn single_record_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

/// Produces requests `0..total` to `topic`, 50 outstanding at a time, producing again what
/// failed. Returns how many sends it made.
fn kafka_publisher(brokers: String, topic: String, total: usize) -> tokio::task::JoinHandle<usize> {
    kafka_publisher_acked(brokers, topic, total, Acked::default())
}

/// The requests the broker acknowledged (a delivery report came back), by id, and when the
/// last new one came.
#[derive(Clone, Default)]
struct Acked(Arc<Mutex<(std::collections::HashSet<String>, Option<Instant>)>>);

impl Acked {
    fn add(&self, id: usize) {
        let mut acked = self.0.lock().unwrap();
        if acked.0.insert(id.to_string()) {
            acked.1 = Some(Instant::now());
        }
    }

    fn ids(&self) -> std::collections::HashSet<String> {
        self.0.lock().unwrap().0.clone()
    }

    fn last_new(&self) -> Option<Instant> {
        self.0.lock().unwrap().1
    }
}

/// Like [`kafka_publisher`], noting in `acked` every request the broker acknowledged.
fn kafka_publisher_acked(
    brokers: String,
    topic: String,
    total: usize,
    acked: Acked,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let producer = single_record_producer(&brokers);
        let mut sends = 0;
        let ids: Vec<usize> = (0..total).collect();
        for chunk in ids.chunks(50) {
            let mut pending: Vec<usize> = chunk.to_vec();
            while !pending.is_empty() {
                sends += pending.len();
                let results = futures::future::join_all(pending.iter().map(|&i| {
                    let producer = producer.clone();
                    let topic = topic.clone();
                    async move {
                        let id = i.to_string();
                        let key = format!("k{i}");
                        let record = FutureRecord::to(&topic)
                            .payload("x")
                            .key(&key)
                            .headers(kafka::headers(&[("correlation-id", &id)]));
                        (
                            i,
                            producer.send(record, Duration::from_secs(30)).await.is_ok(),
                        )
                    }
                }))
                .await;
                for (i, ok) in &results {
                    if *ok {
                        acked.add(*i);
                    }
                }
                pending = results
                    .into_iter()
                    .filter(|(_, ok)| !ok)
                    .map(|(i, _)| i)
                    .collect();
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        sends
    })
}

/// Collects replies from `topic` (one partition) with their offsets.
fn collect_kafka(brokers: &str, topic: &str) -> Shared {
    let tally = Shared::default();
    let consumer = kafka::consumer_on(brokers, topic);
    let sink = tally.clone();
    tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(message) => {
                    let message = message.detach();
                    let id = kafka::header(&message, "correlation-id").unwrap_or_default();
                    sink.lock().unwrap().record(id, Some(message.offset()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tally
}

/// Records of `topic` (all partitions) that `group` has committed.
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Records in `topic` partition 0 (its high watermark).
fn high_watermark(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks")
        .1
}

/// ricochet SIGKILLed and restarted three times during 10,000 Kafka requests.
///
/// ricochet commits only the contiguous prefix of records whose reply was delivered, so what
/// a kill can repeat is the records the killed instance took but had not committed: its
/// in-flight window. Each instance calls a service of its own, so the test knows exactly
/// which records each one took; the window at a kill is that instance's distinct calls
/// minus what it committed (the group's committed offsets before and after its life). The
/// duplicates are at most the windows' sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_killed_three_times_loses_no_request() {
    kafka_killed_three_times(false).await;
}

/// [`kafka_killed_three_times_loses_no_request`] with the route's reply store on (issue
/// #28): a record the killed instance had answered but not committed is answered from the
/// store by the next; the service is called again only for a record whose call was under
/// way at a kill (called by the killed instance, not answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_killed_three_times_with_the_reply_store_calls_again_only_calls_under_way() {
    kafka_killed_three_times(true).await;
}

async fn kafka_killed_three_times(store: bool) {
    const TOTAL: usize = 10_000;
    const KILLS: usize = 3;
    const PARTITIONS: i32 = 4;
    let brokers = kafka::brokers();
    let requests = kafka::topic("relkkill", PARTITIONS).await;
    let replies = kafka::topic("relkkillrep", 1).await;
    let group = unique("rel-kill");
    let admin = free_port();
    let store_table = match store {
        true => format!(
            "\n[routes.reply_store]\nbucket = \"{}\"\non_unavailable = \"redeliver\"",
            unique("rel_kafka_")
        ),
        false => String::new(),
    };
    let routes = kafka::route(
        "kill",
        &requests,
        &format!("max_in_flight = 64{store_table}"),
        &format!("reply_topic = \"{replies}\"\nordering = \"unordered\"\ngroup_id = \"{group}\""),
    );
    let mut upstreams = vec![Upstream::slow_echo(Duration::from_millis(1)).await];
    let mut ricochet =
        Ricochet::start(&config(&upstreams[0].base_url(), admin, &routes), admin).await;
    let tally = collect_kafka(&brokers, &replies);
    let publisher = kafka_publisher(brokers.clone(), requests.clone(), TOTAL);

    let mut recoveries = Vec::new();
    // Records the killed instances had called the service for and not answered.
    let mut under_way = std::collections::HashSet::new();
    // Records committed when each instance died.
    let mut committed_at = vec![0i64];
    for kill in 1..=KILLS {
        answered_at_least(&tally, TOTAL * kill / (KILLS + 1), ALL_ANSWERED_WITHIN).await;
        ricochet.signal("-KILL");
        let killed_at = Instant::now();
        ricochet.wait_exit(Duration::from_secs(10)).await;
        drop(ricochet);
        let answered: std::collections::HashSet<String> =
            tally.lock().unwrap().answers.keys().cloned().collect();
        let called = upstreams[kill - 1].seen();
        under_way.extend((called.iter().map(kafka_id)).filter(|id| !answered.contains(id)));
        // A commit the dead instance sent may still reach the broker after its exit: read
        // the commits once they stand still.
        let every = Duration::from_millis(1000);
        let now = steady(every, Duration::from_secs(60), "the commits", || async {
            committed(&brokers, &group, &requests, PARTITIONS)
        });
        committed_at.push(now.await);
        upstreams.push(Upstream::slow_echo(Duration::from_millis(1)).await);
        let toml = config(&upstreams[kill].base_url(), admin, &routes);
        ricochet = Ricochet::start(&toml, admin).await;
        recoveries.push(recovery_after(&tally, killed_at).await);
    }
    let sent = publisher.await.unwrap();
    answered_at_least(&tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    // Everything ricochet published is read before the duplicates are counted.
    let end = high_watermark(&brokers, &replies);
    eventually(Duration::from_secs(60), "every reply read", || async {
        let read = tally.lock().unwrap().by_offset.len() as i64;
        holds(read >= end, format!("{read} of {end}"))
    })
    .await;
    let tally = tally.lock().unwrap();
    // Per killed instance: distinct records it called the service for, minus those it
    // committed.
    let mut windows = Vec::new();
    let mut repeated_by_one_instance = 0;
    // What each repeat was: its correlation id and the record it came from (the
    // `Idempotency-Key` ricochet sends: topic, partition and offset), to tell a record
    // processed twice from a record the producer wrote twice.
    let mut repeats = Vec::new();
    for (k, upstream) in upstreams.iter().enumerate() {
        let mut distinct = std::collections::HashSet::new();
        for call in upstream.seen() {
            if !distinct.insert(kafka_id(&call)) {
                repeated_by_one_instance += 1;
                let key = call
                    .headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok());
                repeats.push(format!("instance {k}: id {} from {key:?}", kafka_id(&call)));
            }
        }
        if k < KILLS {
            let committed_by_it = committed_at[k + 1] - committed_at[k];
            windows.push((distinct.len() as i64 - committed_by_it).max(0) as usize);
        }
    }
    let calls: Vec<usize> = upstreams.iter().map(Upstream::calls).collect();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for call in upstreams.iter().flat_map(Upstream::seen) {
        *by_id.entry(kafka_id(&call)).or_default() += 1;
    }
    let repeated: Vec<&String> = (by_id.iter())
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    report(
        if store { "kafka, 3 kills, reply store on" } else { "kafka, 3 kills" },
        TOTAL,
        &tally,
        &recoveries,
        &format!(
            ", sends {sent}, taken-but-uncommitted at each kill {windows:?}, calls per \
             instance {calls:?}, repeated by one instance {repeated_by_one_instance}, replies read {}, \
             records called again {} (calls under way at the kills {})",
            tally.by_offset.len(),
            repeated.len(),
            under_way.len(),
        ),
    );
    if store {
        for id in &repeated {
            assert!(
                under_way.contains(*id),
                "record {id} called again but its call was not under way at a kill"
            );
        }
    }
    tally.assert_answered_exactly(TOTAL);
    assert_eq!(
        repeated_by_one_instance, 0,
        "no instance calls the service twice for a record: {repeats:?}"
    );
    // The windows count the killed instance's calls: with the store, records it answered
    // from the store (not calling) and did not commit come again too, so the bound holds
    // for the calls (above), not for the replies.
    if !store {
        assert!(
            tally.duplicates() <= windows.iter().sum(),
            "only the records taken but not committed at a kill are repeated: {} duplicates, windows {windows:?}",
            tally.duplicates()
        );
    }
}

/// The correlation id of a request the Kafka tests' service saw (its `correlation-id`
/// header).
fn kafka_id(seen: &Seen) -> String {
    seen.headers
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A nats-server of this test's own (see [`OwnBroker`]), JetStream's file storage in its
/// directory, that the test kills and starts again.
struct OwnNats {
    broker: OwnBroker,
    /// Whether the server accepted `sync_interval: always` (nats-server 2.10 and later).
    sync_always: bool,
}

impl OwnNats {
    fn new() -> Self {
        // nats-server 2.9 (Debian's) has no sync_interval: it syncs every 2 minutes, which a
        // process kill (not a machine crash) does not lose.
        let sync_always = brokers::nats_server_accepts("jetstream { sync_interval: always }");
        let sync = if sync_always {
            ", sync_interval: always"
        } else {
            ""
        };
        let mut broker = OwnBroker::nats_server(|dir| {
            format!(
                "jetstream {{ store_dir: {:?} {sync} }}",
                dir.join("jetstream")
            )
        });
        broker.start();
        Self {
            broker,
            sync_always,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.broker.port())
    }

    /// How long after `started` (its start) the server answers for `stream` on a new
    /// connection: it recovers its streams from disk first. `None` after 60 s.
    fn ready_after(
        &self,
        started: Instant,
        stream: &str,
    ) -> impl std::future::Future<Output = Option<Duration>> {
        let (url, stream) = (self.url(), stream.to_string());
        async move {
            let within = Duration::from_secs(60).saturating_sub(started.elapsed());
            let ready = wait_until(within, || async {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_millis(200))
                    .connect(&url);
                let js = jetstream::new(connect.await.map_err(|e| e.to_string())?);
                let asked = tokio::time::timeout(Duration::from_secs(1), js.get_stream(&stream));
                match asked.await {
                    Ok(Ok(_)) => Ok(started.elapsed()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            });
            ready.await.ok()
        }
    }

    /// A client, and the count of its connection's losses.
    async fn client_watched(&self) -> (async_nats::Client, tokio::sync::watch::Receiver<u64>) {
        let losses = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let told = losses.clone();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    told.send_modify(|n| *n += 1);
                }
                async {}
            })
            .connect(self.url())
            .await
            .expect("own nats-server");
        (client, losses.subscribe())
    }

    /// A client that connects as soon as the server listens (it is retried until then).
    async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .expect("own nats-server")
    }
}

/// A RabbitMQ node of this test's own (see [`OwnBroker::rabbitmq`]): durable queues and
/// persistent messages survive its kill.
struct OwnRabbit(OwnBroker);

impl OwnRabbit {
    fn new() -> Self {
        let mut broker = OwnBroker::rabbitmq();
        broker.start();
        Self(broker)
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.0.port())
    }

    /// Waits until the node takes AMQP connections; how long that took since `started`.
    async fn ready_after(&self, started: Instant) -> Duration {
        let within = Duration::from_secs(90).saturating_sub(started.elapsed());
        let port = self.0.port();
        eventually(within, "own RabbitMQ taking AMQP connections", || async {
            let opened = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
            opened.map_err(|e| e.to_string())
        })
        .await;
        let command = serde_json::json!({"op": "depth", "queues": []});
        amqp::client_at(&self.url(), command).await;
        started.elapsed()
    }
}

/// AMQP broker restart: a RabbitMQ node of the test's own SIGKILLed and started again
/// twice while ricochet works through 2,000 persistent requests (published with confirms
/// before the first kill) whose replies go to a durable queue. ricochet, the same process
/// throughout, reconnects; every request is answered. Run on both queue types, since what a
/// crashed node repeats differs: a quorum queue keeps acknowledgements in its log, so only
/// what was in flight at a kill comes again (at most `max_in_flight` per kill); a classic
/// queue may lose acknowledgements not yet written to its index, and redeliver requests
/// that were answered long before the kill (counted, not bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_broker_restarted_twice_quorum_queue_repeats_only_what_was_in_flight() {
    let (duplicates, repeated_calls) = amqp_broker_restarted_twice("quorum", false).await;
    let bound = 2 * AMQP_BOUNCE_IN_FLIGHT;
    assert!(
        duplicates <= bound && repeated_calls <= bound,
        "at most what was in flight at the two kills ({bound}): {duplicates} duplicate replies, \
         {repeated_calls} repeated calls"
    );
}

/// [`amqp_broker_restarted_twice_quorum_queue_repeats_only_what_was_in_flight`] on a classic
/// queue, the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_broker_restarted_twice_classic_queue_every_request_answered() {
    amqp_broker_restarted_twice("classic", false).await;
}

/// [`amqp_broker_restarted_twice_classic_queue_every_request_answered`] with the route's
/// reply store on (issue #28): the requests a crashed classic queue delivers again, however
/// long ago they were answered, are answered from the store. The service is called again
/// at most for what was in flight at the kills (here none need be: ricochet outlives the
/// broker, so a call under way at a kill is stored when it ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_broker_restarted_twice_classic_queue_with_the_reply_store_repeats_no_call() {
    let (_, repeated_calls) = amqp_broker_restarted_twice("classic", true).await;
    let bound = 2 * AMQP_BOUNCE_IN_FLIGHT;
    assert!(
        repeated_calls <= bound,
        "at most what was in flight at the two kills ({bound}): {repeated_calls} repeated calls"
    );
}

const AMQP_BOUNCE_IN_FLIGHT: usize = 4;

/// The broker restart on a request queue of `queue_type`, with the route's reply store on
/// (`store`) or not: duplicate replies and repeated service calls, once every request is
/// answered.
async fn amqp_broker_restarted_twice(queue_type: &str, store: bool) -> (usize, usize) {
    const TOTAL: usize = 2_000;
    const IN_FLIGHT: usize = AMQP_BOUNCE_IN_FLIGHT;
    let mut broker = OwnRabbit::new();
    let boot = broker.ready_after(Instant::now()).await;
    let url = broker.url();
    let prefix = unique("relamqpbounce");
    let (queue, replies) = (format!("{prefix}.requests"), format!("{prefix}.replies"));
    let declared = amqp::client_at(
        &url,
        serde_json::json!({"op": "declare", "queues": [&replies]}),
    );
    declared.await;
    // About 160 answers a second: the run outlasts two restarts.
    let upstream = Upstream::slow_echo(Duration::from_millis(25)).await;
    let admin = free_port();
    let route = amqp::route_at(
        &url,
        "amqp",
        &queue,
        &queue,
        &format!(
            "max_in_flight = {IN_FLIGHT}{}",
            match store {
                // On the tests' NATS, which stays up.
                true => format!(
                    "\n[routes.reply_store]\nbucket = \"{}\"\non_unavailable = \"redeliver\"",
                    unique("rel_amqp_")
                ),
                false => String::new(),
            }
        ),
        &format!("max_deliver = 100\nqueue_type = \"{queue_type}\""),
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &route), admin).await;
    let publish = serde_json::json!({
        "op": "rpc", "routing_key": &queue, "count": TOTAL, "timeout": 0,
        "reply_to": &replies, "prefix": "r",
    });
    let published = amqp::client_at(&url, publish).await;
    assert_eq!(published["sent"], TOTAL, "{published}");

    // The replies are taken from their queue as they come (only while the node is up: the
    // test kills it); the node is killed when 600 and 1,300 requests are answered, each
    // time down for 1 s.
    let tally = Mutex::new(Tally::default());
    // Takes what replies there are (waiting up to 0.3 s for one); how many are answered.
    let take = || async {
        let command =
            serde_json::json!({"op": "get", "queue": &replies, "count": 500, "timeout": 0.3});
        let taken = amqp::client_at(&url, command).await;
        let mut tally = tally.lock().unwrap();
        for reply in taken["messages"].as_array().unwrap() {
            let id = reply["correlation_id"].as_str().unwrap_or_default();
            tally.record(id.trim_start_matches("r-").to_string(), None);
        }
        tally.unique()
    };
    let started = Instant::now();
    let (mut recoveries, mut restarts) = (Vec::new(), Vec::new());
    for kill_at in [600, 1_300, TOTAL] {
        let what = format!("{kill_at} of {TOTAL} requests answered");
        let within = ALL_ANSWERED_WITHIN.saturating_sub(started.elapsed());
        eventually(within, &what, || async {
            let answered = take().await;
            holds(answered >= kill_at, format!("{answered} answered"))
        })
        .await;
        if kill_at == TOTAL {
            break;
        }
        broker.0.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = Instant::now();
        broker.0.start();
        restarts.push(broker.ready_after(at).await);
        recoveries.push(Instant::now());
    }
    // Late copies: redeliveries of what was in flight at the last kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    take().await;
    let tally = tally.into_inner().unwrap();
    // Recovery: from the node taking connections again to the next request answered.
    let recoveries: Vec<Duration> = recoveries
        .iter()
        .filter_map(|&at| tally.first_new_after(at))
        .collect();
    let calls = upstream.calls();
    println!(
        "RELIABILITY amqp broker restart ({queue_type} queue{}): messages {TOTAL}, answered {}, lost {}, duplicated {}, \
         longest stall {:.1?}, recovery {recoveries:.1?} after the node took connections again, \
         node start {boot:.1?} then restarts {restarts:.1?}, upstream calls {calls} ({} repeated)",
        if store { ", reply store on" } else { "" },
        tally.unique(),
        TOTAL.saturating_sub(tally.unique()),
        tally.duplicates(),
        tally.longest_stall,
        calls.saturating_sub(TOTAL)
    );
    tally.assert_answered_exactly(TOTAL);
    // The same process throughout, connected again and ready.
    ricochet.wait_ready().await;
    (tally.duplicates(), calls.saturating_sub(TOTAL))
}

/// A small deterministic pseudo-random sequence (xorshift), seeded from the clock and
/// printed so that a failing run can be told apart.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        Self(seed)
    }

    /// A duration in `[low, high)`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.0 % span.max(1))
    }
}

/// JetStream bounce: a nats-server of the test's own, file storage, killed for 0-2 s every
/// 1-3 s while 10,000 requests flow. The requester publishes again whatever was not
/// acknowledged (with `Nats-Msg-Id`, so the stream keeps one copy); replies go to a stream
/// of their own (ricochet waits for its publish ack), read with acknowledgements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_bounce_every_request_answered() {
    const TOTAL: usize = 10_000;
    let mut server = OwnNats::new();
    let (client, losses) = server.client_watched().await;
    let js = jetstream::new(client.clone());
    let prefix = unique("reljsbounce");
    // On disk, to survive the kills, and kept as long as the server lives.
    let on_disk = |config: &mut stream::Config| {
        config.storage = stream::StorageType::File;
        config.max_age = Duration::ZERO;
    };
    let requests = Stream::create_with(js.clone(), &prefix, on_disk).await;
    let name = requests.name.clone();
    Stream::create_with(js.clone(), &prefix, |config| {
        on_disk(config);
        config.name = format!("{name}_REPLIES");
        config.subjects = vec![format!("{prefix}.replies")];
    })
    .await;
    let upstream = Upstream::slow_echo(Duration::from_millis(1)).await;
    let admin = free_port();
    let toml = format!(
        r#"
[nats]
url = "{url}"
connect_timeout = "500ms"

[upstream]
base_url = "{base}"
request_timeout = "5s"

[admin]
listen = "127.0.0.1:{admin}"

{route}
"#,
        url = server.url(),
        base = upstream.base_url(),
        route = js_route(&requests, 32),
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    let replies = format!("{prefix}.replies");

    // The reader: a durable pull consumer on the replies stream, reading on through every
    // outage; a reply read again (its ack lost with the server) is counted once, by sequence.
    let tally = Shared::default();
    let reader = {
        let js = js.clone();
        let stream_name = format!("{name}_REPLIES");
        let sink = tally.clone();
        tokio::spawn(async move {
            loop {
                let consumer = async {
                    let stream = js.get_stream(&stream_name).await.ok()?;
                    stream
                        .get_or_create_consumer(
                            "reader",
                            jetstream::consumer::pull::Config {
                                durable_name: Some("reader".into()),
                                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                                // A reply the server sent as the connection went down comes
                                // again after this (the default 30 s once made the reader's
                                // stall look like ricochet's).
                                ack_wait: Duration::from_secs(2),
                                ..Default::default()
                            },
                        )
                        .await
                        .ok()
                };
                let Some(consumer) = consumer.await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                loop {
                    let batch = consumer
                        .fetch()
                        .max_messages(500)
                        .expires(Duration::from_millis(500))
                        .messages()
                        .await;
                    let Ok(mut batch) = batch else { break };
                    // A fetch the bounced server will never answer is given up after 1 s of
                    // silence, not after its own timeout (5.5 s): the reader's recovery is
                    // not ricochet's.
                    let silence = Duration::from_secs(1);
                    while let Ok(Some(Ok(message))) =
                        tokio::time::timeout(silence, batch.next()).await
                    {
                        let sequence = message.info().map(|i| i.stream_sequence as i64).ok();
                        let id = header(&message, "correlation-id").unwrap_or_default();
                        sink.lock().unwrap().record(id, sequence);
                        let _ = message.ack().await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let acked = Arc::new(AtomicUsize::new(0));
    // About 500 requests/s for 20 s, so that the bounces hit the requester too.
    let publisher = js_publisher_watching(
        js.clone(),
        Some(losses),
        prefix.clone(),
        replies,
        TOTAL,
        Duration::from_millis(200),
        acked.clone(),
    );

    // Progress every 10 s: what the requester had acknowledged, what ricochet took, what
    // was answered, so that a stall can be placed.
    let progress = {
        let (acked, tally, admin) = (acked.clone(), tally.clone(), ricochet.admin_port);
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let taken = metrics_of(admin)
                    .await
                    .map(|m| metric(&m, "ricochet_messages_received_total", &[]))
                    .unwrap_or(-1.0);
                let answered = tally.lock().unwrap().unique();
                println!(
                    "bounce progress at {:.0?}: publishes acknowledged {}, taken by ricochet {taken}, answered {answered}",
                    started.elapsed(),
                    acked.load(Ordering::SeqCst)
                );
            }
        })
    };
    // When ricochet's own connection came back and when it took messages again, to tell
    // its recovery from the test's clients'.
    let (samples, sampler) = ricochet_samples(ricochet.admin_port);
    // The bouncer: down for 0-2 s every 1-3 s until every request is answered.
    let mut jitter = Jitter::new();
    let mut bounces = 0;
    let mut restarts = Vec::new();
    // From each restart to the server answering JetStream requests: its own recovery.
    let mut readiness: Vec<tokio::task::JoinHandle<Option<Duration>>> = Vec::new();
    let mut down_total = Duration::ZERO;
    let started = Instant::now();
    while tally.lock().unwrap().unique() < TOTAL {
        let (answered, read) = {
            let tally = tally.lock().unwrap();
            (tally.unique(), tally.by_offset.len())
        };
        if started.elapsed() >= ALL_ANSWERED_WITHIN {
            // What the server holds, to tell a stuck requester, reader or ricochet apart.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let stream = js
                .get_stream(&name)
                .await
                .map(|s| s.cached_info().state.clone());
            let consumer = requests.try_consumer("ricochet-rel").await.map(|i| {
                format!(
                    "delivered {:?}, ack floor {:?}, pending {}, ack pending {}, waiting pulls {}",
                    i.delivered, i.ack_floor, i.num_pending, i.num_ack_pending, i.num_waiting
                )
            });
            println!(
                "bounce stalled: stream {stream:?}; consumer {consumer:?}; metrics:\n{}",
                ricochet.metrics().await
            );
        }
        assert!(
            started.elapsed() < ALL_ANSWERED_WITHIN,
            "{} of {TOTAL} answered after {:?} ({} publishes acknowledged, {} replies read); logs:\n{}",
            answered,
            started.elapsed(),
            acked.load(Ordering::SeqCst),
            read,
            ricochet.logs()
        );
        tokio::time::sleep(jitter.between(Duration::from_secs(1), Duration::from_secs(3))).await;
        if tally.lock().unwrap().unique() >= TOTAL {
            break;
        }
        // A start not yet ready is recorded as never ready (None).
        if let Some(probe) = readiness.last() {
            probe.abort();
        }
        server.broker.kill();
        let down = jitter.between(Duration::ZERO, Duration::from_secs(2));
        tokio::time::sleep(down).await;
        server.broker.start();
        let at = Instant::now();
        restarts.push(at);
        readiness.push(tokio::spawn(server.ready_after(at, &name)));
        bounces += 1;
        down_total += down;
    }
    progress.abort();
    sampler.abort();
    let publishes = publisher.await.unwrap();
    // Redeliveries of requests in flight at the last bounce come within ack_wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    reader.abort();
    let mut ready = Vec::new();
    for probe in readiness {
        ready.push(probe.await.ok().flatten());
    }
    let slowest_ready = ready.iter().map(|r| r.unwrap_or(Duration::MAX)).max();
    let tally = tally.lock().unwrap();
    // Recovery: from each restart to the next request answered for the first time.
    let recoveries: Vec<Duration> = restarts
        .iter()
        .filter_map(|&at| tally.first_new_after(at))
        .collect();
    // From each restart to ricochet's first connection, and its first message, after it.
    let (reconnected, taking): (Vec<_>, Vec<_>) = {
        let samples = samples.lock().unwrap();
        (restarts.iter())
            .map(|&at| {
                (
                    samples.after(at, |s| s.connected),
                    samples.after(at, |s| s.received),
                )
            })
            .unzip()
    };
    let calls = upstream.calls();
    report(
        "jetstream bounce",
        TOTAL,
        &tally,
        &recoveries,
        &format!(
            ", {bounces} bounces ({down_total:.1?} down), publishes {publishes}, upstream calls {calls} \
             ({} repeated), sync_interval always: {}, server ready after each restart {ready:.1?}, \
             ricochet connected again after each restart {reconnected:.1?} and took messages again \
             {taking:.1?}",
            calls.saturating_sub(TOTAL),
            server.sync_always
        ),
    );
    tally.assert_answered_exactly(TOTAL);
    assert!(
        bounces >= 3,
        "the server was bounced during the run: {bounces}"
    );
    // A server that came back without its consumer state (nats-server 2.9.10 without
    // `sync_interval: always`, docs/reliability.md) delivers the stream again from its
    // start: thousands of repeated calls, not an in-flight window per bounce, made before
    // the first new request is reached. That replay is the server's, and the stall it
    // causes may be longer; every request must still be answered exactly once (above).
    let replayed = calls.saturating_sub(TOTAL) > 1_000;
    let bound = Duration::from_secs(if replayed { 60 } else { 30 });
    assert!(
        tally.longest_stall < bound,
        "no stall over {bound:?}: {:?} (stream replayed by the server: {replayed}; slowest server start {slowest_ready:?}); the server's log:\n{}\nricochet's:\n{}",
        tally.longest_stall,
        server.broker.log_tail(60),
        ricochet.logs()
    );
    drop(ricochet);
}

/// Core NATS: the nats-server restarted while requests flow. ricochet (the same process)
/// reconnects, subscribes again and answers within 5 s of the server being back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_server_restart_answers_again_within_5s() {
    let mut server = OwnNats::new();
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let subject = unique("relcore");
    let toml = format!(
        r#"
[nats]
url = "{url}"
connect_timeout = "500ms"

[upstream]
base_url = "{base}"

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "core"
subject = "{subject}"
path = "/core"
"#,
        url = server.url(),
        base = upstream.base_url(),
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    let client = server.client().await;

    // The caller: one request after another, each with a 1 s timeout.
    #[derive(Default)]
    struct Calls {
        sent: usize,
        answered: usize,
        wrong: usize,
        last_answer: Option<Instant>,
    }
    let calls = Arc::new(Mutex::new(Calls::default()));
    let caller = {
        let calls = calls.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let body = format!("r{i}");
                calls.lock().unwrap().sent += 1;
                let request = client.request(subject.clone(), body.clone().into());
                match tokio::time::timeout(Duration::from_secs(1), request).await {
                    Ok(Ok(reply)) => {
                        let mut calls = calls.lock().unwrap();
                        if reply.payload.as_ref() == body.as_bytes() {
                            calls.answered += 1;
                            calls.last_answer = Some(Instant::now());
                        } else {
                            calls.wrong += 1;
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    let answered = || calls.lock().unwrap().answered;
    eventually(
        Duration::from_secs(20),
        "requests answered before the restart",
        || async { holds(answered() >= 100, answered()) },
    )
    .await;

    let mut recoveries = Vec::new();
    for _ in 0..2 {
        server.broker.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = answered();
        server.broker.start();
        let back = Instant::now();
        eventually(
            Duration::from_secs(5),
            "an answer within 5 s of the server's return",
            || async { holds(answered() > before, format!("{} answered", answered())) },
        )
        .await;
        recoveries.push(back.elapsed());
        eventually(Duration::from_secs(20), "answers flowing again", || async {
            holds(answered() >= before + 100, answered())
        })
        .await;
    }
    caller.abort();
    let (status, _) = ricochet.admin_get("/healthz").await.unwrap();
    let metrics = ricochet.metrics().await;
    let calls = calls.lock().unwrap();
    println!(
        "RELIABILITY core nats restart: requests {}, answered {}, unanswered {} (sent while the \
         server was away; core NATS is at-most-once), wrong {}, recovery {recoveries:.1?}",
        calls.sent,
        calls.answered,
        calls.sent - calls.answered - calls.wrong,
        calls.wrong
    );
    assert_eq!(calls.wrong, 0, "every answer is its request's");
    assert_eq!(status, 200, "the same ricochet process, never restarted");
    assert!(
        metric(
            &metrics,
            "ricochet_nats_connection_events_total",
            &["event=\"disconnected\""]
        ) >= 2.0,
        "{metrics}"
    );
}

/// Graceful stop: SIGTERM while JetStream requests arrive at about 1,000/s. ricochet stops
/// taking requests, finishes the ones it took, exits 0 within its grace period; every
/// request the service saw was answered, none dead-lettered, none processed twice; the
/// next instance answers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_1000_per_second_answers_every_accepted_request() {
    const TOTAL: usize = 6_000;
    const GRACE: Duration = Duration::from_secs(10);
    let stream = js_stream("relterm").await;
    let (js, prefix) = (&stream.js, &stream.prefix);
    let client = nats().await;
    let replies = format!("{prefix}.replies");
    let (tally, dead) = collect_nats(&client, &replies, &format!("{prefix}.dlq")).await;
    // Slow enough that many calls are under way at the SIGTERM.
    let upstream = Upstream::slow_echo(Duration::from_millis(50)).await;
    let admin = free_port();
    let routes = format!(
        "[shutdown]\ngrace_period = \"{}s\"\n{}",
        GRACE.as_secs(),
        js_route(&stream, 100)
    );
    let toml = config(&upstream.base_url(), admin, &routes);
    let mut ricochet = Ricochet::start(&toml, admin).await;

    // About 1,000 requests/s: 10 every 10 ms.
    let publisher = {
        let js = js.clone();
        let prefix = prefix.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(10) {
                tick.tick().await;
                let mut acks = Vec::new();
                for &i in chunk {
                    let mut headers = request_headers(&replies, &i.to_string());
                    headers.insert("Nats-Msg-Id", format!("req-{i}").as_str());
                    let ack = js
                        .publish_with_headers(format!("{prefix}.req.{i}"), headers, "x".into())
                        .await
                        .unwrap();
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await.unwrap();
                }
            }
        })
    };
    answered_at_least(&tally, TOTAL / 3, ALL_ANSWERED_WITHIN).await;
    ricochet.signal("-TERM");
    let termed = Instant::now();
    let status = ricochet.wait_exit(GRACE + Duration::from_secs(20)).await;
    let stopped_in = termed.elapsed();
    let logs = ricochet.logs();
    drop(ricochet);
    // Every request the service saw before the stop has its reply (replies may trail by a
    // moment on the reader's connection).
    let accepted: std::collections::HashSet<String> = upstream
        .seen()
        .iter()
        .map(|seen| {
            seen.path_and_query
                .trim_start_matches("/orders/")
                .to_string()
        })
        .collect();
    let what = "a reply for every accepted request";
    answered_all(&tally, &accepted, Duration::from_secs(10), what).await;
    let accepted_count = accepted.len();
    let calls_at_stop = upstream.calls();

    let _next = Ricochet::start(&toml, admin).await;
    publisher.await.unwrap();
    answered_at_least(&tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stream.delete().await;
    let tally = tally.lock().unwrap();
    report(
        "sigterm at 1000/s",
        TOTAL,
        &tally,
        &[],
        &format!(
            ", accepted by the stopped instance {accepted_count}, stopped in {stopped_in:.1?} \
             (grace {GRACE:?}), exit {status}, dead-lettered {}, upstream calls {}",
            dead.load(Ordering::SeqCst),
            upstream.calls()
        ),
    );
    assert!(status.success(), "exit 0: {status}; logs:\n{logs}");
    assert!(
        stopped_in <= GRACE + Duration::from_secs(2),
        "stopped within the grace period: {stopped_in:?}"
    );
    assert!(
        calls_at_stop > 0 && accepted_count < TOTAL,
        "the stop came mid-run"
    );
    assert_eq!(dead.load(Ordering::SeqCst), 0, "nothing dead-lettered");
    assert_eq!(tally.unique(), TOTAL);
    assert_eq!(
        upstream.calls(),
        TOTAL,
        "nothing processed twice after a graceful stop"
    );
    assert_eq!(tally.duplicates(), 0);
}

/// The requests `upstream` saw, by the id the path or header carries.
fn seen_ids(upstream: &Upstream, kafka: bool) -> std::collections::HashSet<String> {
    upstream
        .seen()
        .iter()
        .map(|seen| {
            if kafka {
                kafka_id(seen)
            } else {
                seen.path_and_query
                    .trim_start_matches("/orders/")
                    .to_string()
            }
        })
        .collect()
}

/// After `victim` is killed: how long until every request it had taken and not answered
/// is answered (by the survivor).
async fn takeover(
    tally: &Shared,
    victim: &Upstream,
    kafka: bool,
    killed_at: Instant,
) -> (usize, Duration) {
    let orphans: Vec<String> = {
        let tally = tally.lock().unwrap();
        seen_ids(victim, kafka)
            .into_iter()
            .filter(|id| !tally.answers.contains_key(id))
            .collect()
    };
    let what = "the survivor answers the victim's requests";
    answered_all(tally, &orphans, Duration::from_secs(120), what).await;
    (orphans.len(), killed_at.elapsed())
}

/// Two ricochet replicas on one JetStream durable consumer, one SIGKILLed mid-run: every
/// request answered, and what the dead one held is redelivered to the survivor after
/// `ack_wait` (2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_two_replicas_one_killed_survivor_takes_over() {
    const TOTAL: usize = 5_000;
    let stream = js_stream("reljsrep").await;
    let (js, prefix) = (&stream.js, &stream.prefix);
    let client = nats().await;
    let replies = format!("{prefix}.replies");
    let (tally, dead) = collect_nats(&client, &replies, &format!("{prefix}.dlq")).await;
    let routes = js_route(&stream, 32);
    let victim_upstream = Upstream::slow_echo(Duration::from_millis(5)).await;
    let survivor_upstream = Upstream::slow_echo(Duration::from_millis(5)).await;
    let (a, b) = (free_port(), free_port());
    let mut victim = Ricochet::start(&config(&victim_upstream.base_url(), a, &routes), a).await;
    let _survivor = Ricochet::start(&config(&survivor_upstream.base_url(), b, &routes), b).await;
    let publisher = js_publisher(
        js.clone(),
        prefix.clone(),
        replies.clone(),
        TOTAL,
        Duration::from_millis(50),
        Arc::default(),
    );
    answered_at_least(&tally, TOTAL / 3, ALL_ANSWERED_WITHIN).await;
    victim.signal("-KILL");
    let killed_at = Instant::now();
    victim.wait_exit(Duration::from_secs(10)).await;
    let (orphans, took) = takeover(&tally, &victim_upstream, false, killed_at).await;
    publisher.await.unwrap();
    answered_at_least(&tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    stream.delete().await;
    let tally = tally.lock().unwrap();
    report(
        "jetstream two replicas, one killed",
        TOTAL,
        &tally,
        &[took],
        &format!(
            ", victim calls {}, survivor calls {}, orphans at the kill {orphans} (answered by the \
             survivor after the 2s ack_wait), dead-lettered {}",
            victim_upstream.calls(),
            survivor_upstream.calls(),
            dead.load(Ordering::SeqCst)
        ),
    );
    assert_eq!(tally.unique(), TOTAL, "every request answered");
    assert!(
        victim_upstream.calls() > 0 && survivor_upstream.calls() > 0,
        "both replicas worked"
    );
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(20),
        "takeover within ack_wait (and slack): {took:?}"
    );
    assert_eq!(dead.load(Ordering::SeqCst), 0);
    drop(victim);
}

/// Two ricochet replicas in one Kafka consumer group, one SIGKILLed mid-run: every request
/// answered, and the dead member's partitions go to the survivor once the group
/// coordinator's session timeout (6 s here) expires. Against librdkafka's mock cluster:
/// tansu 0.6 leaves a dead member's partitions unassigned (docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_two_replicas_one_killed_survivor_takes_over() {
    const TOTAL: usize = 5_000;
    const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let (requests, replies) = (unique("relkrep"), unique("relkreprep"));
    mock.create_topic(&requests, 4, 1).unwrap();
    mock.create_topic(&replies, 1, 1).unwrap();
    let routes = kafka::route_on(
        &brokers,
        "takeover",
        &requests,
        "max_in_flight = 32",
        &format!("reply_topic = \"{replies}\"\nordering = \"unordered\""),
    );
    let victim_upstream = Upstream::slow_echo(Duration::from_millis(2)).await;
    let survivor_upstream = Upstream::slow_echo(Duration::from_millis(2)).await;
    let (a, b) = (free_port(), free_port());
    let mut victim = Ricochet::start(&config(&victim_upstream.base_url(), a, &routes), a).await;
    let survivor = Ricochet::start(&config(&survivor_upstream.base_url(), b, &routes), b).await;
    let tally = collect_kafka(&brokers, &replies);
    let publisher = kafka_publisher(brokers.clone(), requests.clone(), TOTAL);
    answered_at_least(&tally, TOTAL / 3, ALL_ANSWERED_WITHIN).await;
    assert!(
        victim_upstream.calls() > 0 && survivor_upstream.calls() > 0,
        "both replicas have partitions before the kill ({} and {} calls); survivor logs:\n{}",
        victim_upstream.calls(),
        survivor_upstream.calls(),
        survivor.logs()
    );
    victim.signal("-KILL");
    let killed_at = Instant::now();
    victim.wait_exit(Duration::from_secs(10)).await;
    // When the coordinator hands the survivor all four partitions.
    let label = "route=\"takeover\"";
    eventually(
        Duration::from_secs(60),
        "all partitions at the survivor",
        || async {
            let assigned = metric(
                &survivor.metrics().await,
                "ricochet_kafka_assigned_partitions",
                &[label],
            );
            holds(assigned == 4.0, assigned)
        },
    )
    .await;
    let reassigned = killed_at.elapsed();
    let (orphans, took) = takeover(&tally, &victim_upstream, true, killed_at).await;
    let sent = publisher.await.unwrap();
    answered_at_least(&tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    let tally = tally.lock().unwrap();
    report(
        "kafka two replicas, one killed (mock cluster)",
        TOTAL,
        &tally,
        &[took],
        &format!(
            ", sends {sent}, victim calls {}, survivor calls {}, every partition at the survivor \
             {reassigned:.1?} after the kill ({SESSION_TIMEOUT:?} session timeout), orphans at the \
             kill {orphans}",
            victim_upstream.calls(),
            survivor_upstream.calls(),
        ),
    );
    tally.assert_answered_exactly(TOTAL);
    // The session timeout, the coordinator's rebalance (the mock delays it by a few
    // seconds) and the survivor's own revoke and assign, on a loaded machine.
    assert!(
        took < SESSION_TIMEOUT + Duration::from_secs(30),
        "takeover within the session timeout (and slack): {took:?}"
    );
    drop(victim);
}

/// Upstream faults through a fault-injecting proxy (latency and jitter, slow bandwidth, connection reset,
/// black hole, connection refused, headers then a stalled body), each for 3 s, while core
/// NATS callers keep asking: every request gets the service's answer or a documented error
/// (502, 503 from the breaker, 504) within its deadline, and throughput is back to (half
/// of, on a loaded machine) the baseline within 10 s of the fault's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_get_answers_or_documented_errors_and_recover() {
    use common::faults::{Fault, FaultProxy};
    const CALLERS: usize = 8;
    // 1 KiB answers: at the slow bandwidth below one takes about 250 ms.
    let body: &'static str = "0123456789abcdef".repeat(64).leak();
    let upstream = Upstream::start(move |_| async move { respond(200, body) }).await;
    let proxy = FaultProxy::start(upstream.addr).await;
    let admin = free_port();
    let subject = unique("relfault");
    let routes = format!(
        r#"
[[routes]]
name = "faults"
subject = "{subject}"
method = "GET"
path = "/fault"
timeout = "300ms"
total_timeout = "1s"

[routes.retry]
max_attempts = 2

[routes.circuit_breaker]
break_duration = "1s"
max_break_duration = "2s"
"#
    );
    let toml = config(&proxy.base_url(), admin, &routes);
    let ricochet = Ricochet::start(&toml, admin).await;
    let rss_before = rss_kib(ricochet.pid());
    let (sampled, sampler) = peak_rss(ricochet.pid());

    #[derive(Default)]
    struct Seen {
        ok_at: Vec<Instant>,
        statuses: HashMap<String, usize>,
        no_answer: usize,
        slowest: Duration,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = nats().await;
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (client, subject, seen, stop) =
            (client.clone(), subject.clone(), seen.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let request = client.request(subject.clone(), "x".into());
                // The route's deadline is 1 s: 3 s leaves room for a loaded machine.
                let answer = tokio::time::timeout(Duration::from_secs(3), request).await;
                let took = started.elapsed();
                let mut seen = seen.lock().unwrap();
                match answer {
                    Ok(Ok(reply)) => {
                        let status =
                            header(&reply, "Ricochet-Status").unwrap_or_else(|| "200".into());
                        if status == "200" {
                            seen.ok_at.push(Instant::now());
                        }
                        *seen.statuses.entry(status).or_default() += 1;
                        seen.slowest = seen.slowest.max(took);
                    }
                    _ => seen.no_answer += 1,
                }
            }
        }));
    }
    let ok_in_last_second = || {
        let seen = seen.lock().unwrap();
        let since = Instant::now() - Duration::from_secs(1);
        seen.ok_at.iter().rev().take_while(|&&t| t >= since).count()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = ok_in_last_second();
    assert!(baseline > 0, "answers before any fault");

    let faults = [
        (
            "latency 50ms+-50ms",
            Fault::Latency {
                base: Duration::from_millis(50),
                jitter: Duration::from_millis(50),
            },
        ),
        (
            "slow bandwidth 4 KiB/s",
            Fault::SlowBandwidth {
                bytes_per_second: 4096,
            },
        ),
        ("reset", Fault::Reset),
        ("black hole", Fault::BlackHole),
        ("refused", Fault::Refuse),
        ("stalled body", Fault::StallBody),
    ];
    let mut figures = Vec::new();
    for (what, fault) in faults {
        let before: HashMap<String, usize> = seen.lock().unwrap().statuses.clone();
        proxy.set(fault);
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.set(Fault::None);
        let ended = Instant::now();
        let during: HashMap<String, usize> = {
            let seen = seen.lock().unwrap();
            seen.statuses
                .iter()
                .map(|(s, n)| (s.clone(), n - before.get(s).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        let what_recovers =
            format!("throughput back to half the baseline ({baseline}/s) after {what}");
        eventually(Duration::from_secs(10), &what_recovers, || async {
            let now = ok_in_last_second();
            holds(now * 2 >= baseline, format!("{now}/s"))
        })
        .await;
        figures.push(format!(
            "{what}: {during:?}, recovered in {:.1?}",
            ended.elapsed()
        ));
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    sampled.store(true, Ordering::SeqCst);
    let rss_peak = sampler.await.unwrap();
    let seen = seen.lock().unwrap();
    let answered: usize = seen.statuses.values().sum();
    println!(
        "RELIABILITY upstream faults: requests {}, answered {answered}, unanswered {}, slowest {:.1?}, \
         baseline {baseline} answers/s, RSS {rss_before} KiB before, peak {rss_peak} KiB; {}",
        answered + seen.no_answer,
        seen.no_answer,
        seen.slowest,
        figures.join("; ")
    );
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "memory bounded through the faults: {rss_before} KiB before, {rss_peak} KiB at the peak"
    );
    assert_eq!(
        seen.no_answer, 0,
        "every request answered: {:?}",
        seen.statuses
    );
    for status in seen.statuses.keys() {
        assert!(
            ["200", "502", "503", "504"].contains(&status.as_str()),
            "only the service's answer or a documented error: {status}"
        );
    }
    assert!(
        seen.slowest < Duration::from_secs(3),
        "within the deadline (and slack)"
    );
    drop(ricochet);
}

/// One reading of ricochet's counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Its NATS connection's `connected` events.
    connected: f64,
    /// Messages taken.
    received: f64,
}

#[derive(Debug, Default)]
struct Samples(Vec<Sample>);

impl Samples {
    /// How long after `at` the counter `of` first grew (None: not until the end).
    fn after(&self, at: Instant, of: impl Fn(&Sample) -> f64) -> Option<Duration> {
        let before = self.0.iter().rev().find(|s| s.at <= at)?;
        let grown = (self.0.iter()).find(|s| s.at > at && of(s) > of(before))?;
        Some(grown.at - at)
    }
}

/// Reads ricochet's connection events and messages taken every 20 ms, until aborted.
fn ricochet_samples(admin: u16) -> (Arc<Mutex<Samples>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let record = samples.clone();
    let sampler = tokio::spawn(async move {
        loop {
            if let Some(text) = metrics_of(admin).await {
                let connected = r#"event="connected""#;
                record.lock().unwrap().0.push(Sample {
                    at: Instant::now(),
                    connected: metric(&text, "ricochet_nats_connection_events_total", &[connected]),
                    received: metric(&text, "ricochet_messages_received_total", &[]),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (samples, sampler)
}

/// The admin server's `/metrics` on `port`, if it answers.
async fn metrics_of(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// Samples `pid`'s RSS every 50 ms until the returned flag is set; the task ends with the
/// highest value seen.
fn peak_rss(
    pid: u32,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<u64>,
) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while !flag.load(Ordering::SeqCst) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    (done, sampler)
}

/// Core NATS requests offered at 10x what the service answers (service 40 ms, `max_in_flight
/// = 4`: 100/s; offered 1,000/s for 4 s): every caller gets an answer, the service's 200 or
/// a 503 `overloaded` at once, never a timeout; ricochet's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_overload_at_ten_times_gets_fast_refusals_not_timeouts() {
    const RATE: usize = 1_000;
    const SECONDS: usize = 4;
    const CALLER_TIMEOUT: Duration = Duration::from_secs(5);
    let prefix = unique("relover");
    let upstream = Upstream::slow_echo(Duration::from_millis(40)).await;
    let admin = free_port();
    let route = format!(
        "[[routes]]\nname = \"over\"\nsubject = \"{prefix}.{{id}}\"\nmethod = \"POST\"\npath = \"/orders/{{id}}\"\nmax_in_flight = 4\n"
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &route), admin).await;
    let before = rss_kib(ricochet.pid());
    let (done, sampler) = peak_rss(ricochet.pid());
    let client = nats().await;
    // (status, seconds to the answer) of every request; `None` for no answer.
    let answers = Arc::new(Mutex::new(Vec::<Option<(String, f64)>>::new()));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut callers = Vec::new();
    for i in 0..RATE * SECONDS {
        if i % (RATE / 100) == 0 {
            tick.tick().await;
        }
        let (client, answers, subject) = (client.clone(), answers.clone(), format!("{prefix}.{i}"));
        callers.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer =
                tokio::time::timeout(CALLER_TIMEOUT, client.request(subject, "x".into())).await;
            let seen = match answer {
                Ok(Ok(reply)) => {
                    let status = header(&reply, "Ricochet-Status").unwrap_or_default();
                    let kind = header(&reply, "Ricochet-Error").unwrap_or_default();
                    Some((format!("{status} {kind}"), sent.elapsed().as_secs_f64()))
                }
                _ => None,
            };
            answers.lock().unwrap().push(seen);
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    let answers = answers.lock().unwrap().clone();
    let unanswered = answers.iter().filter(|a| a.is_none()).count();
    let mut by_status = HashMap::<String, (usize, f64)>::new();
    for (status, took) in answers.iter().flatten() {
        let entry = by_status.entry(status.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(*took);
    }
    println!(
        "RELIABILITY core NATS overload at 10x: {} requests, {unanswered} unanswered, by status (count, slowest s): {by_status:?}, RSS {before} KiB before, peak {peak} KiB, service calls {}",
        answers.len(),
        upstream.calls()
    );
    assert_eq!(unanswered, 0, "every caller gets an answer, not a timeout");
    let statuses: std::collections::HashSet<&str> = by_status.keys().map(String::as_str).collect();
    assert!(
        statuses.is_subset(&["200 ", "503 overloaded"].into()),
        "only the service's answers and overload refusals: {by_status:?}"
    );
    let (refused, slowest_refusal) = by_status["503 overloaded"];
    assert!(refused > answers.len() / 2, "most of a 10x load is refused");
    assert!(
        slowest_refusal < CALLER_TIMEOUT.as_secs_f64() / 2.0,
        "refusals come at once, not near the caller's timeout: {slowest_refusal} s"
    );
    assert!(
        by_status["200 "].0 > 0,
        "the service's capacity is still used"
    );
    assert!(
        peak < before + 64 * 1024,
        "memory bounded under overload: {before} KiB before, {peak} KiB at the peak"
    );
}

/// Durable sources offered 10x what the service answers (service 50 ms, `max_in_flight = 2`
/// per route: 40/s; 1,000 requests on each of JetStream, Kafka and AMQP as fast as the
/// publishers go): each route falls behind and catches up, every request answered once,
/// nothing dead-lettered, memory bounded (what waits stays in the brokers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_sources_overloaded_fall_behind_and_catch_up_losing_nothing() {
    const TOTAL: usize = 1_000;
    let upstream = Upstream::slow_echo(Duration::from_millis(50)).await;
    let client = nats().await;
    let stream = js_stream("reloverjs").await;
    let (js, prefix) = (&stream.js, &stream.prefix);
    let js_replies = format!("{prefix}.replies");
    let (js_tally, dead) = collect_nats(&client, &js_replies, &format!("{prefix}.dlq")).await;
    let brokers = kafka::brokers();
    let requests = kafka::topic("reloverk", 2).await;
    let kafka_replies = kafka::topic("reloverkrep", 1).await;
    let kafka_tally = collect_kafka(&brokers, &kafka_replies);
    let queue = unique("ricochet.test.relover.");
    let routes = format!(
        "{}{}{}",
        js_route(&stream, 2),
        kafka::route(
            "kafka",
            &requests,
            "max_in_flight = 2",
            &format!("reply_topic = \"{kafka_replies}\"\nordering = \"unordered\""),
        ),
        amqp::route(
            "amqp",
            &queue,
            &queue,
            "max_in_flight = 2",
            "max_deliver = 100"
        ),
    );
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let before = rss_kib(ricochet.pid());
    let (done, sampler) = peak_rss(ricochet.pid());
    let started = Instant::now();
    let js_publisher = js_publisher(
        js.clone(),
        prefix.clone(),
        js_replies,
        TOTAL,
        Duration::ZERO,
        Arc::default(),
    );
    let kafka_publisher = kafka_publisher(brokers, requests, TOTAL);
    let command = serde_json::json!({
        "op": "rpc", "routing_key": queue, "count": TOTAL, "timeout": 240, "rate": 400,
    });
    let amqp_answers = tokio::spawn(amqp::client(command));
    js_publisher.await.unwrap();
    kafka_publisher.await.unwrap();
    let offered_in = started.elapsed();
    let behind = (
        TOTAL - js_tally.lock().unwrap().unique(),
        TOTAL - kafka_tally.lock().unwrap().unique(),
    );
    answered_at_least(&js_tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    answered_at_least(&kafka_tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    let amqp = amqp_answers.await.unwrap();
    let caught_up_in = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    let counts = |tally: &Shared| {
        let tally = tally.lock().unwrap();
        (tally.unique(), tally.duplicates())
    };
    let (js_counts, kafka_counts) = (counts(&js_tally), counts(&kafka_tally));
    println!(
        "RELIABILITY durable overload at 10x: {TOTAL} requests per source offered in {offered_in:.1?} \
         (JetStream and Kafka {behind:?} behind then), all caught up in {caught_up_in:.1?}; \
         JetStream {} answered, {} duplicates; Kafka {} answered, {} duplicates; AMQP {} answered, \
         {} duplicates; dead-lettered {}; RSS {before} KiB before, peak {peak} KiB",
        js_counts.0,
        js_counts.1,
        kafka_counts.0,
        kafka_counts.1,
        amqp["answered"],
        amqp["duplicates"],
        dead.load(Ordering::SeqCst),
    );
    assert!(
        behind.0 > TOTAL / 2 && behind.1 > TOTAL / 2,
        "the load outran the service: {behind:?}"
    );
    assert_eq!(
        amqp["answered"], TOTAL,
        "every AMQP request answered: {amqp}"
    );
    assert_eq!(dead.load(Ordering::SeqCst), 0, "nothing dead-lettered");
    assert_eq!(js_counts.1 + kafka_counts.1, 0, "nothing answered twice");
    assert_eq!(amqp["duplicates"], 0);
    assert!(
        peak < before + 64 * 1024,
        "memory bounded under overload: {before} KiB before, {peak} KiB at the peak"
    );
    stream.delete().await;
    amqp::client(serde_json::json!({"op": "delete", "queues": [queue]})).await;
}

/// A tansu of the test's own with persistent storage (SQLite, a file in its directory),
/// started and listening.
fn own_tansu() -> OwnBroker {
    let mut tansu = OwnBroker::tansu_sqlite();
    tansu.start();
    tansu.wait_listening(Duration::from_secs(30));
    tansu
}

/// How long the Kafka bounce may go without progress (no new answer and no request newly
/// acknowledged by the broker) while acknowledged requests are unanswered, before the test
/// calls them lost. Progress, not elapsed time, decides: a slow machine makes the run
/// longer, never a failure; a request that is never answered fails it with its id.
const KAFKA_NO_PROGRESS_LIMIT: Duration = Duration::from_secs(90);
/// How long the Kafka bounce waits without progress when nothing is pending: the test's
/// publisher is waiting for the broker; over librdkafka's `message.timeout.ms` (300 s),
/// after which a send fails and is sent again.
const KAFKA_PUBLISHER_STUCK: Duration = Duration::from_secs(400);

/// Where a Kafka run stands, counted exactly: requests the broker acknowledged, requests
/// answered, and the difference (pending).
fn kafka_accounting(tally: &Tally, acked: &Acked) -> (usize, usize, Vec<String>) {
    let acked = acked.ids();
    let mut pending: Vec<String> = acked
        .iter()
        .filter(|id| !tally.answers.contains_key(*id))
        .cloned()
        .collect();
    pending.sort_by_key(|id| id.parse::<usize>().unwrap_or(usize::MAX));
    (acked.len(), tally.unique(), pending)
}

/// Every record of `topic` (partitions `0..partitions`) by correlation id: where it is.
fn kafka_read_all(brokers: &str, topic: &str, partitions: i32) -> HashMap<String, Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("rel-audit"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let end = (consumer.fetch_watermarks(topic, p, Duration::from_secs(10))).map_or(0, |w| w.1);
        ends.insert(p, end);
        let _ = list.add_partition_offset(topic, p, Offset::Beginning);
    }
    consumer.assign(&list).expect("assign");
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    let mut read: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && ends
            .iter()
            .any(|(p, end)| read.get(p).copied().unwrap_or(0) < *end)
    {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let message = message.detach();
            read.insert(message.partition(), message.offset() + 1);
            let id = kafka::header(&message, "correlation-id").unwrap_or_default();
            found.entry(id).or_default().push(format!(
                "{}@{}",
                message.partition(),
                message.offset()
            ));
        }
    }
    found
}

/// What the Kafka bounce waits with: the run's parts, to judge progress and, when a request
/// is lost, to say where it was lost.
struct KafkaRun<'a> {
    tally: &'a Shared,
    acked: &'a Acked,
    ricochet: &'a Ricochet,
    upstream: &'a Upstream,
    brokers: String,
    tansu_log: std::path::PathBuf,
    requests: &'a str,
    replies: &'a str,
}

impl KafkaRun<'_> {
    /// Waits until `count` distinct requests are answered, for as long as the run makes
    /// progress. Fails when nothing progressed for [`KAFKA_NO_PROGRESS_LIMIT`] with
    /// acknowledged requests unanswered (lost), naming them and where each one is.
    async fn answered(&self, count: usize, what: &str) {
        let started = Instant::now();
        loop {
            let (last_answer, unique) = {
                let tally = self.tally.lock().unwrap();
                (tally.last_new, tally.unique())
            };
            if unique >= count {
                return;
            }
            let progress = [Some(started), last_answer, self.acked.last_new()]
                .into_iter()
                .flatten()
                .max()
                .unwrap();
            let stalled = progress.elapsed();
            if stalled >= KAFKA_NO_PROGRESS_LIMIT {
                let pending = kafka_accounting(&self.tally.lock().unwrap(), self.acked).2;
                // Nothing pending: ricochet has answered all it was given and the test's
                // publisher is waiting for the broker (its sends time out and are sent
                // again); only a publisher stuck for good fails the test.
                if !pending.is_empty() || stalled >= KAFKA_PUBLISHER_STUCK {
                    self.lost(count, what).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// No progress: the exact accounting, and for each pending request whether the broker
    /// still holds it, whether the service was called for it and whether a reply to it is
    /// in the reply topic; then ricochet's metrics and logs.
    async fn lost(&self, count: usize, what: &str) -> ! {
        let (acked, answered, pending) = kafka_accounting(&self.tally.lock().unwrap(), self.acked);
        let (requests, replies) = {
            let (b, q, r) = (
                self.brokers.clone(),
                self.requests.to_string(),
                self.replies.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                (kafka_read_all(&b, &q, 2), kafka_read_all(&b, &r, 1))
            })
            .await
            .unwrap()
        };
        let called: HashMap<String, usize> =
            self.upstream
                .seen()
                .iter()
                .fold(HashMap::new(), |mut calls, seen| {
                    *calls.entry(kafka_id(seen)).or_default() += 1;
                    calls
                });
        let where_: Vec<String> = pending
            .iter()
            .take(20)
            .map(|id| {
                format!(
                    "{id}: request at {:?}, service called {} times, reply at {:?}",
                    requests.get(id),
                    called.get(id).copied().unwrap_or(0),
                    replies.get(id)
                )
            })
            .collect();
        let metrics = self.ricochet.metrics().await;
        let metrics: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("kafka") || l.contains("in_flight") || l.contains("handled"))
            })
            .collect();
        let tansu = std::fs::read_to_string(&self.tansu_log).unwrap_or_default();
        let tansu: Vec<&str> = tansu.lines().rev().take(20).collect();
        let logs = self.ricochet.logs();
        let tail: Vec<&str> = logs
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "waiting for {what} ({count} answered): no progress for {KAFKA_NO_PROGRESS_LIMIT:?}; \
             acknowledged by the broker {acked}, answered {answered}, pending (acknowledged, \
             unanswered) {}: {pending:?}\n{}\nricochet metrics:\n{}\nricochet log tail:\n{}\ntansu log tail (newest first):\n{}",
            pending.len(),
            where_.join("\n"),
            metrics.join("\n"),
            tail.join("\n"),
            tansu.join("\n"),
        );
    }
}

/// Kafka bounce: a tansu of the test's own with persistent (SQLite) storage, SIGKILLed
/// and started again twice during 5,000 requests. The producer sends again what failed;
/// ricochet's consumer and reply producer ride over the restarts.
///
/// Counted exactly: requests the broker acknowledged (a delivery report), answered,
/// duplicated, pending (acknowledged, unanswered). It waits as long as answers or
/// acknowledgements keep coming, so a late request passes on a loaded machine, and fails
/// with the pending ids (and where each one is) when nothing moves for
/// [`KAFKA_NO_PROGRESS_LIMIT`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bounce_every_request_answered() {
    const TOTAL: usize = 5_000;
    const BOUNCES: usize = 2;
    let mut tansu = own_tansu();
    let brokers = format!("127.0.0.1:{}", tansu.port());
    let requests = kafka::topic_on(&brokers, "relkbounce", 2).await;
    let replies = kafka::topic_on(&brokers, "relkbouncerep", 1).await;
    let routes = kafka::route_on(
        &brokers,
        "bounce",
        &requests,
        "max_in_flight = 32",
        &format!("reply_topic = \"{replies}\"\nordering = \"unordered\""),
    );
    let upstream = Upstream::slow_echo(Duration::from_millis(1)).await;
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let tally = collect_kafka(&brokers, &replies);
    let acked = Acked::default();
    let publisher = kafka_publisher_acked(brokers.clone(), requests.clone(), TOTAL, acked.clone());
    let mut jitter = Jitter::new();
    let mut recoveries = Vec::new();
    let run = KafkaRun {
        tally: &tally,
        acked: &acked,
        ricochet: &ricochet,
        upstream: &upstream,
        brokers: brokers.clone(),
        tansu_log: tansu.log_path(),
        requests: &requests,
        replies: &replies,
    };
    for bounce in 1..=BOUNCES {
        run.answered(
            TOTAL * bounce / (BOUNCES + 1),
            "the answers before a bounce",
        )
        .await;
        let (acknowledged, answered, pending) = kafka_accounting(&tally.lock().unwrap(), &acked);
        println!(
            "bounce {bounce}: acknowledged {acknowledged}, answered {answered}, pending {}",
            pending.len()
        );
        tansu.kill();
        let down = jitter.between(Duration::from_millis(500), Duration::from_secs(2));
        tokio::time::sleep(down).await;
        let restarted = Instant::now();
        tansu.start();
        tansu.wait_listening(Duration::from_secs(30));
        let before = tally.lock().unwrap().unique();
        run.answered(before + 1, "a new answer after the restart")
            .await;
        recoveries.push(restarted.elapsed());
        let (acknowledged, answered, pending) = kafka_accounting(&tally.lock().unwrap(), &acked);
        println!(
            "restart {bounce} recovered: acknowledged {acknowledged}, answered {answered}, pending {}",
            pending.len()
        );
    }
    run.answered(TOTAL, "every request answered").await;
    let sent = publisher.await.unwrap();
    let tally = tally.lock().unwrap();
    let (acknowledged, answered, pending) = kafka_accounting(&tally, &acked);
    report(
        "kafka bounce (tansu, SQLite storage)",
        TOTAL,
        &tally,
        &recoveries,
        &format!(
            ", bounces {BOUNCES}, sends {sent}, acknowledged {acknowledged}, pending {}, \
             service calls {}",
            pending.len(),
            upstream.calls()
        ),
    );
    assert_eq!(
        (acknowledged, answered),
        (TOTAL, TOTAL),
        "pending {pending:?}"
    );
    tally.assert_answered_exactly(TOTAL);
    drop(ricochet);
}

/// Calls per request id the service saw (its path `/orders/<id>`).
fn calls_by_id(upstream: &Upstream) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for seen in upstream.seen() {
        let id = seen
            .path_and_query
            .trim_start_matches("/orders/")
            .to_string();
        *calls.entry(id).or_default() += 1;
    }
    calls
}

/// [`jetstream_killed_three_times_loses_no_request`] with the route's reply store on
/// (issue #28). At each kill the test notes the requests the service had been called for
/// and that had no reply yet: the calls under way. A request whose reply was stored is
/// answered from the store when it comes again; so the service may be called again only
/// for a request whose call was under way at a kill (not yet stored), and every other
/// request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_killed_three_times_with_the_reply_store_calls_again_only_calls_under_way() {
    jetstream_kills_with_the_reply_store(1).await;
}

/// [`jetstream_killed_three_times_with_the_reply_store_calls_again_only_calls_under_way`]
/// with two replicas on the durable consumer, one of them killed three times: the other
/// takes the killed one's redeliveries and finds their claims or replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_two_replicas_one_killed_three_times_with_the_reply_store() {
    jetstream_kills_with_the_reply_store(2).await;
}

async fn jetstream_kills_with_the_reply_store(replicas: usize) {
    const TOTAL: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    const KILLS: usize = 3;
    let stream = js_stream("reljsstore").await;
    let (js, prefix) = (&stream.js, &stream.prefix);
    let client = nats().await;
    let replies = format!("{prefix}.replies");
    let (tally, dead) = collect_nats(&client, &replies, &format!("{prefix}.dlq")).await;
    let upstream = Upstream::slow_echo(Duration::from_millis(1)).await;
    let bucket = unique("rel_store_");
    let admin = free_port();
    // A short deadline: the claim of a call a kill interrupted ends with it (plus slack).
    let route = js_route(&stream, IN_FLIGHT)
        .replace("max_in_flight", "total_timeout = \"3s\"\nmax_in_flight");
    let route = format!(
        "{route}\n[routes.reply_store]\nbucket = \"{bucket}\"\nttl = \"1h\"\non_unavailable = \"redeliver\"\n"
    );
    let toml = config(&upstream.base_url(), admin, &route);
    let mut ricochet = Ricochet::start(&toml, admin).await;
    // The replicas that stay up.
    let mut others = Vec::new();
    for _ in 1..replicas {
        let port = free_port();
        let toml = config(&upstream.base_url(), port, &route);
        others.push(Ricochet::start(&toml, port).await);
    }
    let publisher = js_publisher(
        js.clone(),
        prefix.clone(),
        replies.clone(),
        TOTAL,
        Duration::ZERO,
        Arc::default(),
    );

    let mut recoveries = Vec::new();
    let mut under_way = std::collections::HashSet::new();
    for kill in 1..=KILLS {
        answered_at_least(&tally, TOTAL * kill / (KILLS + 1), ALL_ANSWERED_WITHIN).await;
        ricochet.signal("-KILL");
        let killed_at = Instant::now();
        ricochet.wait_exit(Duration::from_secs(10)).await;
        // Dead: nothing it called can still be answered by it.
        let answered: std::collections::HashSet<String> =
            tally.lock().unwrap().answers.keys().cloned().collect();
        let called = calls_by_id(&upstream);
        under_way.extend(called.into_keys().filter(|id| !answered.contains(id)));
        drop(ricochet);
        ricochet = Ricochet::start(&toml, admin).await;
        recoveries.push(recovery_after(&tally, killed_at).await);
    }
    let sent = publisher.await.unwrap();
    answered_at_least(&tally, TOTAL, ALL_ANSWERED_WITHIN).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = ricochet.metrics().await;
    let hits = metric(
        &metrics,
        "ricochet_reply_store_lookups_total",
        &["result=\"hit\""],
    ) + metric(
        &metrics,
        "ricochet_reply_store_lookups_total",
        &["result=\"hit_after_wait\""],
    );
    stream.delete().await;
    let _ = jetstream::new(client.clone())
        .delete_key_value(&bucket)
        .await;
    let calls = calls_by_id(&upstream);
    let repeated: Vec<(&String, &usize)> = calls.iter().filter(|(_, n)| **n > 1).collect();
    let repeated_calls: usize = repeated.iter().map(|(_, n)| *n - 1).sum();
    let tally = tally.lock().unwrap();
    let scenario = match replicas {
        1 => "jetstream, 3 kills, reply store on".to_string(),
        n => format!("jetstream, {n} replicas, one killed 3 times, reply store on"),
    };
    report(
        &scenario,
        TOTAL,
        &tally,
        &recoveries,
        &format!(
            ", publishes {sent}, dead-lettered {}, upstream calls {} ({repeated_calls} repeated, \
             for {} requests; calls under way at the kills {}), served from the store by the replicas running at the end {hits}",
            dead.load(Ordering::SeqCst),
            upstream.calls(),
            repeated.len(),
            under_way.len(),
        ),
    );
    tally.assert_answered_exactly(TOTAL);
    assert_eq!(calls.len(), TOTAL, "every request reached the service");
    for (id, n) in &repeated {
        assert!(
            under_way.contains(*id),
            "request {id} was called {n} times but its call was not under way at a kill"
        );
    }
    assert_eq!(dead.load(Ordering::SeqCst), 0, "nothing dead-lettered");
    drop((ricochet, others));
}
