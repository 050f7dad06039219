//! Soak (issue #17): one ricochet serving a core NATS, a JetStream, a Kafka and an AMQP
//! route at a fixed load for `RICOCHET_SOAK_SECS` (default 20 s; `scripts/soak.sh` runs it for 60 s or
//! as long as asked). Every request must be answered, and after a warm-up (the first
//! quarter) its resident memory and open file descriptors must stay within 10% of where
//! they were.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::jetstream::Stream;
use common::*;
use futures::StreamExt;
use rdkafka::consumer::StreamConsumer;

/// The process's open file descriptors: those that are not connections to the service at
/// `upstream_port`, and those that are. The HTTP client keeps idle connections to the
/// service for reuse, up to what was ever in flight at once, so that pool grows with load
/// bursts (a busy machine makes more) without leaking: it is bounded on its own.
fn open_fds(pid: u32, upstream_port: u16) -> (u64, u64) {
    let mut sockets = HashSet::new();
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        total += 1;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            sockets.insert(inode.to_string());
        }
    }
    // /proc/net/tcp: "sl local rem st ... uid timeout inode"; rem is "ADDR:PORT" in hex.
    let port = format!(":{upstream_port:04X}");
    let mut upstream = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[2].ends_with(&port) && sockets.contains(fields[9]) {
                upstream += 1;
            }
        }
    }
    (total - upstream, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_load_on_every_source_keeps_memory_and_fds_flat() {
    let secs: u64 = std::env::var("RICOCHET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let duration = Duration::from_secs(secs);
    // Requests per second on each source.
    const RATE: u64 = 100;

    let client = nats().await;
    let js = jetstream::new(client.clone());
    let prefix = unique("soak");
    let stream = Stream::create_with(js.clone(), &prefix, |config| {
        config.subjects = vec![format!("{prefix}.js.>")];
        config.max_age = Duration::from_secs(3600);
    })
    .await;
    let stream_name = &stream.name;
    let requests = kafka::topic("soakreq", 2).await;
    let replies_topic = kafka::topic("soakrep", 1).await;
    let upstream = Upstream::echo().await;
    let upstream_port: u16 = upstream
        .base_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let admin = free_port();
    let queue = unique("ricochet.test.soak.");
    let routes = format!(
        r#"
[[routes]]
name = "core"
subject = "{prefix}.core"
path = "/core"

[[routes]]
name = "js"
source = "jetstream"
subject = "{prefix}.js.{{id}}"
path = "/js/{{id}}"

[routes.jetstream]
stream = "{stream_name}"
durable = "soak"
ack_wait = "5s"
redelivery_backoff = ["100ms"]
{kafka}{amqp}"#,
        kafka = kafka::route(
            "kafka",
            &requests,
            "",
            &format!("reply_topic = \"{replies_topic}\"")
        ),
        amqp = amqp::route("amqp", &queue, &queue, "", ""),
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let pid = ricochet.pid();

    // Replies of the durable sources, by id.
    let js_answers = Arc::new(Mutex::new(HashSet::new()));
    {
        let mut sub = client.subscribe(format!("{prefix}.replies")).await.unwrap();
        client.flush().await.unwrap();
        let answers = js_answers.clone();
        tokio::spawn(async move {
            while let Some(reply) = sub.next().await {
                answers
                    .lock()
                    .unwrap()
                    .insert(header(&reply, "correlation-id").unwrap_or_default());
            }
        });
    }
    let kafka_answers = Arc::new(Mutex::new(HashSet::new()));
    {
        let reader: StreamConsumer = kafka::consumer(&replies_topic);
        let answers = kafka_answers.clone();
        tokio::spawn(async move {
            while let Ok(record) = reader.recv().await {
                let record = record.detach();
                answers
                    .lock()
                    .unwrap()
                    .insert(kafka::header(&record, "correlation-id").unwrap_or_default());
            }
        });
    }

    // AMQP: the independent client (pika) sends at the same rate for the whole run.
    let amqp_total = (RATE * secs) as usize;
    let amqp_load = tokio::spawn(amqp::client(serde_json::json!({
        "op": "rpc", "routing_key": queue, "count": amqp_total, "rate": RATE, "timeout": 120,
    })));
    let stop = Arc::new(AtomicBool::new(false));
    let core_failures = Arc::new(Mutex::new(0usize));
    let mut load = Vec::new();
    // Each source: one request every 1/RATE s, counted.
    for source in ["core", "js", "kafka"] {
        let (client, js, prefix, requests, stop, core_failures) = (
            client.clone(),
            js.clone(),
            prefix.clone(),
            requests.clone(),
            stop.clone(),
            core_failures.clone(),
        );
        load.push(tokio::spawn(async move {
            let producer = kafka::producer();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let id = sent.to_string();
                match source {
                    "core" => {
                        let request = client.request(format!("{prefix}.core"), id.clone().into());
                        let ok = matches!(
                            tokio::time::timeout(Duration::from_secs(5), request).await,
                            Ok(Ok(reply)) if reply.payload.as_ref() == id.as_bytes()
                        );
                        if !ok {
                            *core_failures.lock().unwrap() += 1;
                        }
                    }
                    "js" => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("reply-to", format!("{prefix}.replies").as_str());
                        headers.insert("correlation-id", id.as_str());
                        js.publish_with_headers(format!("{prefix}.js.{id}"), headers, "x".into())
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                    }
                    _ => {
                        kafka::produce(
                            &producer,
                            &requests,
                            None,
                            &[("correlation-id", &id)],
                            b"x",
                        )
                        .await;
                    }
                }
                sent += 1;
            }
            sent
        }));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (fds, pooled) = open_fds(pid, upstream_port);
        samples.push((started.elapsed(), rss_kib(pid), fds, pooled));
    }
    stop.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for task in load {
        sent.push(task.await.unwrap());
    }
    let (core_sent, js_sent, kafka_sent) = (sent[0], sent[1], sent[2]);
    let wait = |answers: Arc<Mutex<HashSet<String>>>, total: usize, what: &'static str| async move {
        eventually(Duration::from_secs(120), what, || async {
            let n = answers.lock().unwrap().len();
            holds(n >= total, format!("{n} of {total}"))
        })
        .await;
    };
    wait(
        js_answers.clone(),
        js_sent,
        "every JetStream request answered",
    )
    .await;
    wait(
        kafka_answers.clone(),
        kafka_sent,
        "every Kafka request answered",
    )
    .await;

    let amqp = amqp_load.await.unwrap();

    let after_warmup = &samples[samples.len() / 4..];
    let first = after_warmup[0];
    let (rss_max, fds_max) = after_warmup
        .iter()
        .fold((0, 0), |(r, f), s| (r.max(s.1), f.max(s.2)));
    let (rss_min, fds_min) = after_warmup
        .iter()
        .fold((u64::MAX, u64::MAX), |(r, f), s| (r.min(s.1), f.min(s.2)));
    let pooled = after_warmup.iter().map(|s| s.3);
    let (pooled_min, pooled_max) = (pooled.clone().min().unwrap(), pooled.max().unwrap());
    let core_failures = *core_failures.lock().unwrap();
    println!(
        "RELIABILITY soak {secs}s at {RATE}/s per source: core {core_sent} sent, {} answered; \
         jetstream {js_sent} sent, {} answered; kafka {kafka_sent} sent, {} answered; amqp \
         {amqp_total} sent, {} answered ({} duplicates); after \
         warm-up RSS {rss_min}-{rss_max} KiB (first {} KiB), open fds {fds_min}-{fds_max} (first {}) \
         besides {pooled_min}-{pooled_max} connections to the service",
        core_sent - core_failures,
        js_answers.lock().unwrap().len(),
        kafka_answers.lock().unwrap().len(),
        amqp["answered"],
        amqp["duplicates"],
        first.1,
        first.2,
    );
    assert_eq!(core_failures, 0, "every core NATS request answered");
    assert_eq!(
        amqp["answered"], amqp_total,
        "every AMQP request answered: {amqp}"
    );
    assert!(
        rss_max * 10 <= first.1 * 11,
        "RSS within 10% after warm-up: {rss_min}-{rss_max} KiB from {} KiB",
        first.1
    );
    assert!(
        fds_max * 10 <= first.2 * 11 + 10,
        "open fds within 10% (and one) after warm-up: {fds_min}-{fds_max} from {}",
        first.2
    );
    // The client's pool holds at most what was ever in flight at once: four routes, each
    // at most max_in_flight (64 by default) calls.
    assert!(
        pooled_max <= 4 * 64,
        "connections to the service: {pooled_min}-{pooled_max}, more than ever in flight"
    );
    stream.delete().await;
    amqp::client(serde_json::json!({"op": "delete", "queues": [queue]})).await;
}
