//! The adaptive in-flight limit (`max_in_flight = "auto"`) end to end: a JetStream backlog
//! in front of a scripted service of K workers, which queues inside itself whatever it
//! cannot take at once (so latency, not errors, says it is full), and one that refuses
//! with 503 beyond K instead. The limit settles near K; every request is answered once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::jetstream::{request_headers, Stream};
use common::*;
use futures::StreamExt;

/// Requests in the service at once, waiting ones included; and the most there were.
#[derive(Default)]
struct Inside {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// A service of `workers` workers taking `work` per request: a request waits for a free
/// worker in arrival order (tokio's semaphore is fair), or, `shed`, is answered 503 at once
/// when none is free.
async fn service(workers: usize, work: Duration, shed: bool, inside: Arc<Inside>) -> Upstream {
    use std::sync::atomic::Ordering::SeqCst;
    let pool = Arc::new(tokio::sync::Semaphore::new(workers));
    Upstream::start(move |seen| {
        let (pool, inside) = (pool.clone(), inside.clone());
        async move {
            let now = inside.now.fetch_add(1, SeqCst) + 1;
            inside.peak.fetch_max(now, SeqCst);
            let worker = match shed {
                true => pool.try_acquire().ok(),
                false => pool.acquire().await.ok(),
            };
            let reply = match worker {
                Some(_worker) => {
                    tokio::time::sleep(work).await;
                    http::Response::new(http_body_util::Full::new(seen.body))
                }
                None => respond(503, "busy"),
            };
            inside.now.fetch_sub(1, SeqCst);
            reply
        }
    })
    .await
}

struct Run {
    /// The route's limit, read after every 50th reply.
    limits: Vec<f64>,
    min_rtt: f64,
    /// Replies per request id.
    answered: HashMap<String, usize>,
    logs: String,
}

/// `total` requests published before ricochet starts (a backlog), then answered by a
/// route with the adaptive limit in front of `upstream`.
async fn catch_up(tag: &str, upstream: &Upstream, total: usize, retry: &str) -> Run {
    let stream = Stream::create(tag).await;
    let (replies, mut sub) = stream.subscribe("replies").await;
    for i in 0..total {
        let id = i.to_string();
        stream
            .publish(&id, request_headers(&replies, &id), "x")
            .await;
    }
    let admin = free_port();
    let table = format!("max_in_flight = \"auto\"\n{retry}\n[routes.concurrency]\nmin = 2\nmax = 64\nsample_interval = \"50ms\"");
    let routes = stream.route(&table, "");
    let toml = config(&upstream.base_url(), admin, &routes);
    let ricochet = Ricochet::start(&toml, admin).await;
    let started = std::time::Instant::now();
    let mut run = Run {
        limits: Vec::new(),
        min_rtt: 0.0,
        answered: HashMap::new(),
        logs: String::new(),
    };
    let mut received = 0;
    while run.answered.len() < total {
        // Progress, not speed: each reply may take this long, however slow the machine.
        let Ok(reply) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await else {
            let logs = ricochet.logs();
            let tail: String = logs
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            let metrics = ricochet.metrics().await;
            panic!("{} of {total} answered, then nothing for 30 s; ricochet's log ends:\n{tail}\n{metrics}", run.answered.len());
        };
        let reply = reply.unwrap();
        *run.answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
        received += 1;
        if received % 50 == 0 {
            let metrics = ricochet.metrics().await;
            run.limits.push(metric(
                &metrics,
                "ricochet_concurrency_limit",
                &["route=\"js\""],
            ));
        }
    }
    println!("answered in {:?}", started.elapsed());
    let metrics = ricochet.metrics().await;
    run.min_rtt = metric(
        &metrics,
        "ricochet_concurrency_min_rtt_seconds",
        &["route=\"js\""],
    );
    run.logs = ricochet.logs();
    stream.delete().await;
    run
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

const WORKERS: usize = 6;
const WORK: Duration = Duration::from_millis(20);

#[tokio::test]
async fn a_backlog_settles_the_limit_near_the_workers_of_a_service_that_queues() {
    const TOTAL: usize = 1500;
    let inside = Arc::new(Inside::default());
    let upstream = service(WORKERS, WORK, false, inside.clone()).await;
    let run = catch_up("adaptq", &upstream, TOTAL, "").await;
    assert_eq!(run.answered.len(), TOTAL);
    assert!(
        run.answered.values().all(|n| *n == 1),
        "a request answered twice"
    );
    // The first third: the min RTT measured at 2, then the rise.
    let settled = &run.limits[run.limits.len() / 3..];
    let middle = median(settled);
    println!(
        "queueing service, {WORKERS} workers of {WORK:?}: limit {:?}, min RTT {:.1} ms, peak inside the service {}",
        run.limits,
        run.min_rtt * 1e3,
        inside.peak.load(std::sync::atomic::Ordering::SeqCst)
    );
    // 1.25 x 6 + sqrt(7.5) = 10 at equilibrium; a fixed limit of 64 would queue 58 inside.
    assert!(
        (WORKERS as f64..=3.0 * WORKERS as f64).contains(&middle),
        "the limit settled at {middle}, not near {WORKERS}: {:?}",
        run.limits
    );
    assert!(
        (WORK.as_secs_f64()..3.0 * WORK.as_secs_f64()).contains(&run.min_rtt),
        "min RTT {} s for {WORK:?} of work",
        run.min_rtt
    );
    assert!(
        run.logs.contains("concurrency limit changed") && run.logs.contains("reason=\"gradient\""),
        "no limit change at debug level:\n{}",
        run.logs
    );
}

#[tokio::test]
async fn a_service_that_refuses_with_503_beyond_its_workers_holds_the_limit_near_them() {
    const TOTAL: usize = 1000;
    let inside = Arc::new(Inside::default());
    let upstream = service(WORKERS, WORK, true, inside.clone()).await;
    // Refusals are retried at once and without end: only the limit keeps them few.
    let retry = "timeout = \"2s\"\ntotal_timeout = \"20s\"\n[routes.retry]\nmax_attempts = 1000\ninitial_interval = \"1ms\"\nmax_interval = \"1ms\"\nmultiplier = 1.0\njitter = 0.0\nbudget_ratio = 1000.0\n[routes.circuit_breaker]\nenabled = false";
    let run = catch_up("adapt503", &upstream, TOTAL, retry).await;
    assert_eq!(run.answered.len(), TOTAL);
    assert!(
        run.answered.values().all(|n| *n == 1),
        "a request answered twice"
    );
    let calls = upstream.calls();
    let settled = &run.limits[run.limits.len() / 3..];
    let middle = median(settled);
    println!(
        "refusing service, {WORKERS} workers of {WORK:?}: limit {:?}, {calls} calls for {TOTAL} requests",
        run.limits
    );
    assert!(
        (2.0..=2.0 * WORKERS as f64).contains(&middle),
        "the limit settled at {middle} with 503s beyond {WORKERS}: {:?}",
        run.limits
    );
    assert!(
        run.logs.contains("reason=\"overload\""),
        "no overload change logged"
    );
}
