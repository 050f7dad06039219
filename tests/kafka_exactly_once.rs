//! Exactly-once Kafka delivery, against librdkafka's mock cluster (tansu, used by the other
//! Kafka tests, does not implement transactions). The mock cluster runs in this test
//! process and listens on loopback; the ricochet binary connects to it like to any broker.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::Message;

const TOTAL: usize = 100;

fn route(brokers: &str, requests: &str, replies: &str, transactional_id: &str) -> String {
    format!(
        r#"
[[routes]]
name = "eos"
source = "kafka"
subject = "{requests}"
method = "POST"
path = "/work"
delivery = "exactly_once"
max_in_flight = 32

[routes.kafka]
brokers = "{brokers}"
reply_topic = "{replies}"
ordering = "unordered"
transactional_id = "{transactional_id}"

[routes.kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#
    )
}

/// A caller that sees only committed replies.
fn committed_reader(brokers: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("eos-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

async fn read(
    reader: &StreamConsumer,
    answered: &mut HashMap<String, usize>,
    within: Duration,
) -> bool {
    match tokio::time::timeout(within, reader.recv()).await {
        Ok(Ok(message)) => {
            let correlation = message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "correlation-id")
                        .and_then(|h| h.value)
                })
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("correlation-id on every reply");
            *answered.entry(correlation).or_default() += 1;
            true
        }
        Ok(Err(e)) => panic!("reader error: {e}"),
        Err(_) => false,
    }
}

async fn produce_requests(producer: &FutureProducer, topic: &str, ids: std::ops::Range<usize>) {
    for i in ids {
        let headers = kafka::headers(&[("correlation-id", &i.to_string())]);
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload("x")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// What ricochet counted of the route: replies published and acks.
async fn counted(ricochet: &Ricochet) -> (f64, f64) {
    let text = ricochet.metrics().await;
    let replies = metric(
        &text,
        "ricochet_replies_published_total",
        &["route=\"eos\""],
    );
    let acks = metric(
        &text,
        "ricochet_settlements_total",
        &["route=\"eos\"", "action=\"ack\""],
    );
    (replies, acks)
}

/// Waits until ricochet counted `n` replies published and `n` acks, and checks that the
/// counts then stay there while transactions keep running (every 200 ms).
async fn wait_counted(ricochet: &Ricochet, n: usize) {
    let n = n as f64;
    let what = format!("{n} replies published and acked");
    eventually(Duration::from_secs(30), &what, || async {
        let seen = counted(ricochet).await;
        holds(seen == (n, n), format!("{seen:?}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counted(ricochet).await, (n, n), "counted once, and no more");
}

/// What the mock cluster can show: replies and offsets go through transactions, every
/// request is answered once in steady state, and a failed transaction is aborted and its
/// records processed again; replies published and acks are counted for what committed,
/// once, whatever was aborted before. (The mock neither stores transactional offset commits nor
/// hides aborted transactions from read_committed readers, so crash-exactness itself needs
/// a real Kafka, as in the docker-compose setup.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_offsets_commit_in_transactions_and_failures_reprocess() {
    let mock = MockCluster::new(3).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let requests = unique("eosreq");
    let replies = unique("eosrep");
    mock.create_topic(&requests, 4, 1).unwrap();
    mock.create_topic(&replies, 1, 1).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    produce_requests(&producer, &requests, 0..TOTAL).await;

    let upstream = Upstream::echo().await;
    let admin = free_port();
    let toml = config(
        &upstream.base_url(),
        admin,
        &route(&brokers, &requests, &replies, &unique("txn")),
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    let reader = committed_reader(&brokers, &replies);
    let mut answered: HashMap<String, usize> = HashMap::new();
    while answered.len() < TOTAL {
        assert!(
            read(&reader, &mut answered, Duration::from_secs(30)).await,
            "only {} answered; logs:\n{}",
            answered.len(),
            ricochet.logs()
        );
    }
    while read(&reader, &mut answered, Duration::from_secs(1)).await {}
    assert!(
        answered.values().all(|n| *n == 1),
        "steady state: every request answered once"
    );
    assert_eq!(upstream.calls(), TOTAL);
    wait_counted(&ricochet, TOTAL).await;

    // The next offset commit fails: the transaction holding it must abort, and its records be
    // processed again rather than skipped.
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    produce_requests(&producer, &requests, TOTAL..TOTAL + 10).await;
    while answered.len() < TOTAL + 10 {
        assert!(
            read(&reader, &mut answered, Duration::from_secs(30)).await,
            "logs:\n{}",
            ricochet.logs()
        );
    }
    let logs = ricochet.logs();
    assert!(
        logs.contains("transaction failed; aborting"),
        "the failure was seen:\n{logs}"
    );
    assert!(
        upstream.calls() > TOTAL + 10,
        "aborted records were processed again: {}",
        upstream.calls()
    );
    // Processed more often than that, but counted once each: with the transaction that
    // committed them, not with the one that aborted.
    wait_counted(&ricochet, TOTAL + 10).await;
    println!(
        "exactly-once (mock): {} requests, {} upstream calls after one aborted transaction",
        TOTAL + 10,
        upstream.calls()
    );
}
