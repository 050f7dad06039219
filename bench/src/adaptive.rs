//! `--adaptive`: ricochet's adaptive in-flight limit (`max_in_flight = "auto"`) against a
//! fixed `max_in_flight = 64`, side by side, in front of a service of K workers
//! (`--workers`, `--work` per request) that queues inside itself whatever it cannot take at
//! once, as a thread pool or a connection pool does. The service runs in this process, so
//! it can time each request from its arrival and change K mid-run.
//!
//! 1. **Overload on core NATS**: an open loop at 1.5 x the service's capacity for
//!    `--duration`, `max_pending = 0` (beyond the limit, a request is refused at once).
//! 2. **Backlog catch-up on JetStream**: `--duration` x capacity requests in a stream
//!    before ricochet starts; it drains them.
//! 3. **Capacity change**: a JetStream backlog while K goes from `--workers` to 4 x that
//!    and back, half of `--duration` each; the limit over time.
//!
//! For each: goodput (answered requests per second), p50/p99 of the answered requests (core
//! NATS: at the caller; JetStream: inside the service, what its other clients feel),
//! attempts that outlived the route's `timeout` (100 ms) inside the service, ricochet's
//! retries, and its limit.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{start_ricochet, unique, upstream_section, Args, ChildProcess};

/// The route's attempt timeout in every scenario.
const TIMEOUT: Duration = Duration::from_millis(100);
/// The most workers the service can have (K changes below it).
const MOST_WORKERS: usize = 1024;

/// A service of K workers; a request waits for a free worker in arrival order.
struct Service {
    pool: Arc<Semaphore>,
    /// Permits held back so that `MOST_WORKERS - held` workers serve.
    held: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    workers: AtomicUsize,
    work: Duration,
    /// Time inside the service (waiting for a worker and working), in microseconds.
    inside: Mutex<Histogram<u64>>,
    /// Requests that took longer than [`TIMEOUT`] inside the service.
    late: AtomicU64,
    calls: AtomicU64,
}

impl Service {
    async fn start(workers: usize, work: Duration) -> anyhow::Result<(Arc<Self>, String)> {
        let service = Arc::new(Self {
            pool: Arc::new(Semaphore::new(MOST_WORKERS)),
            held: Mutex::new(None),
            workers: AtomicUsize::new(MOST_WORKERS),
            work,
            inside: Mutex::new(histogram()),
            late: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        });
        service.set_workers(workers).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let this = service.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let this = this.clone();
                tokio::spawn(async move {
                    let handler = service_fn(move |_: hyper::Request<Incoming>| {
                        let this = this.clone();
                        async move { Ok::<_, std::convert::Infallible>(this.serve().await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        Ok((service, base_url))
    }

    async fn serve(&self) -> hyper::Response<Full<Bytes>> {
        let arrived = Instant::now();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let worker = self.pool.acquire().await;
        tokio::time::sleep(self.work).await;
        drop(worker);
        let took = arrived.elapsed();
        if took > TIMEOUT {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        let _ = (self.inside.lock().unwrap()).record(took.as_micros() as u64);
        hyper::Response::new(Full::new(Bytes::from_static(b"ok")))
    }

    /// K from now on: requests already waiting are served by the workers there were.
    async fn set_workers(&self, workers: usize) {
        let previous = self.held.lock().unwrap().take();
        drop(previous);
        let hold = (MOST_WORKERS - workers) as u32;
        if hold > 0 {
            let held = self.pool.clone().acquire_many_owned(hold).await.ok();
            *self.held.lock().unwrap() = held;
        }
        self.workers.store(workers, Ordering::SeqCst);
    }

    /// The counts since the last reset, and resets them.
    fn take(&self) -> (Histogram<u64>, u64, u64) {
        let inside = std::mem::replace(&mut *self.inside.lock().unwrap(), histogram());
        let late = self.late.swap(0, Ordering::SeqCst);
        let calls = self.calls.swap(0, Ordering::SeqCst);
        (inside, late, calls)
    }

    fn capacity(&self) -> f64 {
        self.workers.load(Ordering::SeqCst) as f64 / self.work.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// One scenario's figures for one limit.
struct Row {
    scenario: &'static str,
    limit: &'static str,
    goodput: f64,
    p50_ms: f64,
    p99_ms: f64,
    late: u64,
    retries: f64,
    refused: u64,
    calls: u64,
    mean_limit: f64,
}

/// ricochet's metrics text.
async fn metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut text = String::new();
    if stream.write_all(request.as_bytes()).await.is_ok() {
        let _ = stream.read_to_string(&mut text).await;
    }
    text
}

/// The sum of `name`'s samples.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads the limit every 250 ms until dropped: (seconds since start, limit).
struct LimitLog {
    seen: Arc<Mutex<Vec<(f64, f64)>>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl LimitLog {
    fn start(port: u16) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let start = started;
            loop {
                let limit = metric(&metrics(port).await, "ricochet_concurrency_limit");
                log.lock()
                    .unwrap()
                    .push((start.elapsed().as_secs_f64(), limit));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self {
            seen,
            task,
            started,
        }
    }

    fn stop(self) -> Vec<(f64, f64)> {
        self.task.abort();
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

fn mean(limits: &[(f64, f64)]) -> f64 {
    limits.iter().map(|(_, l)| l).sum::<f64>() / limits.len().max(1) as f64
}

/// The route keys of each side.
const LIMITS: [(&str, &str); 2] = [
    ("fixed 64", "max_in_flight = 64\n"),
    ("auto", "max_in_flight = \"auto\"\n"),
];

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let workers = args.workers;
    let (service, base_url) = Service::start(workers, args.work).await?;
    let capacity = service.capacity();
    eprintln!(
        "service: {workers} workers x {:?} per request = {capacity:.0} requests/s",
        args.work
    );
    let mut rows = Vec::new();
    for (name, keys) in LIMITS {
        rows.push(overload(args, &service, &base_url, name, keys).await?);
    }
    for (name, keys) in LIMITS {
        rows.push(backlog(args, &service, &base_url, name, keys).await?);
    }
    println!(
        "\nK = {workers} workers x {:?}, route timeout {TIMEOUT:?}, {:?} per scenario",
        args.work, args.duration
    );
    println!(
        "| scenario | limit | goodput /s | p50 ms | p99 ms | over timeout | retries | refused 503 | service calls | mean limit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.0} | {} | {} | {:.1} |",
            r.scenario,
            r.limit,
            r.goodput,
            r.p50_ms,
            r.p99_ms,
            r.late,
            r.retries,
            r.refused,
            r.calls,
            r.mean_limit
        );
    }
    capacity_change(args, &service, &base_url).await
}

/// Scenario 1: core NATS requests at 1.5 x capacity, refused beyond the limit.
async fn overload(
    args: &Args,
    service: &Service,
    base_url: &str,
    name: &'static str,
    keys: &str,
) -> anyhow::Result<Row> {
    eprintln!("== overload on core NATS, {name}");
    let subject = format!("bench.adaptive.{}", unique());
    let routes = format!(
        "{}\n[[routes]]\nname = \"adaptive\"\nsubject = \"{subject}\"\npath = \"/work\"\ntimeout = \"{}ms\"\n{keys}max_pending = 0\n",
        upstream_section(args, base_url),
        TIMEOUT.as_millis()
    );
    let ricochet = start_ricochet(args, &routes).await?;
    let port = ricochet.admin.context("ricochet's admin port")?;
    let client = async_nats::connect(&args.nats_url).await.context("NATS")?;
    let rate = service.capacity() * 1.5;
    let total = (rate * args.duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let answered = Arc::new(Mutex::new(histogram()));
    let refused = Arc::new(AtomicU64::new(0));
    let limits = LimitLog::start(port);
    let _ = service.take();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, subject) = (client.clone(), subject.clone());
        let (answered, refused) = (answered.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let request = client.request(subject, Bytes::from_static(b"x"));
            match tokio::time::timeout(Duration::from_secs(10), request).await {
                Ok(Ok(reply)) if !is_error(&reply) => {
                    let micros = scheduled.elapsed().as_micros() as u64;
                    let _ = answered.lock().unwrap().record(micros.max(1));
                }
                _ => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let text = metrics(port).await;
    let limits = limits.stop();
    let (_, late, calls) = service.take();
    let answered = answered.lock().unwrap().clone();
    drop(ricochet);
    Ok(Row {
        scenario: "overload, core NATS",
        limit: name,
        goodput: answered.len() as f64 / elapsed,
        p50_ms: answered.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: answered.value_at_quantile(0.99) as f64 / 1e3,
        late,
        retries: metric(&text, "ricochet_retries_total"),
        refused: refused.load(Ordering::SeqCst),
        calls,
        mean_limit: mean(&limits),
    })
}

/// A stream of its own on `{prefix}.req.>`, holding `count` requests whose replies go to
/// `{prefix}.replies`; through the JetStream API's subjects (no JetStream client needed).
async fn fill_stream(
    client: &async_nats::Client,
    prefix: &str,
    count: u64,
) -> anyhow::Result<String> {
    let stream = prefix.to_uppercase().replace(['.', '-'], "_");
    let config = json!({
        "name": stream, "subjects": [format!("{prefix}.req.>")], "storage": "memory",
        "retention": "limits", "max_age": 600_000_000_000u64, "num_replicas": 1
    });
    let created = client
        .request(
            format!("$JS.API.STREAM.CREATE.{stream}"),
            config.to_string().into(),
        )
        .await?;
    if String::from_utf8_lossy(&created.payload).contains("\"error\"") {
        bail!(
            "stream not created: {}",
            String::from_utf8_lossy(&created.payload)
        );
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("reply-to", format!("{prefix}.replies").as_str());
    for i in 0..count {
        let subject = format!("{prefix}.req.{i}");
        client
            .publish_with_headers(subject, headers.clone(), Bytes::from_static(b"x"))
            .await?;
        if i % 1000 == 999 {
            client.flush().await?;
        }
    }
    client.flush().await?;
    for _ in 0..600 {
        let info = client
            .request(format!("$JS.API.STREAM.INFO.{stream}"), Bytes::new())
            .await?;
        let info: serde_json::Value = serde_json::from_slice(&info.payload)?;
        if info["state"]["messages"].as_u64() == Some(count) {
            return Ok(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the stream did not get all {count} requests (published without acks)")
}

/// ricochet on the stream `stream`, replies counted on `{prefix}.replies`.
async fn drain_from(
    args: &Args,
    base_url: &str,
    prefix: &str,
    stream: &str,
    keys: &str,
) -> anyhow::Result<(ChildProcess, async_nats::Subscriber, async_nats::Client)> {
    let client = async_nats::connect(&args.nats_url).await.context("NATS")?;
    let replies = client.subscribe(format!("{prefix}.replies")).await?;
    client.flush().await?;
    let routes = format!(
        "{}\n[[routes]]\nname = \"adaptive\"\nsource = \"jetstream\"\nsubject = \"{prefix}.req.{{id}}\"\npath = \"/work\"\ntimeout = \"{}ms\"\n{keys}\n[routes.jetstream]\nstream = \"{stream}\"\n",
        upstream_section(args, base_url),
        TIMEOUT.as_millis()
    );
    let ricochet = start_ricochet(args, &routes).await?;
    Ok((ricochet, replies, client))
}

/// An error reply of ricochet's (the NATS service API's error header).
fn is_error(reply: &async_nats::Message) -> bool {
    (reply.headers.as_ref()).is_some_and(|h| h.get("Nats-Service-Error").is_some())
}

/// Waits for `count` replies (an error reply counts: it is answered).
async fn replies(replies: &mut async_nats::Subscriber, count: u64) -> anyhow::Result<u64> {
    let mut ok = 0;
    for n in 0..count {
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.next()).await;
        match reply {
            Ok(Some(reply)) => {
                ok += u64::from(!is_error(&reply));
            }
            _ => bail!("{n} of {count} replies, then none for 30 s"),
        }
    }
    Ok(ok)
}

/// Scenario 2: a JetStream backlog of `--duration` x capacity requests.
async fn backlog(
    args: &Args,
    service: &Service,
    base_url: &str,
    name: &'static str,
    keys: &str,
) -> anyhow::Result<Row> {
    eprintln!("== backlog on JetStream, {name}");
    let prefix = format!("bench.adaptive.js.{}", unique());
    let count = (service.capacity() * args.duration.as_secs_f64()) as u64;
    let client = async_nats::connect(&args.nats_url).await.context("NATS")?;
    let stream = fill_stream(&client, &prefix, count).await?;
    let _ = service.take();
    let start = Instant::now();
    let (ricochet, mut subscriber, _client) =
        drain_from(args, base_url, &prefix, &stream, keys).await?;
    let port = ricochet.admin.context("ricochet's admin port")?;
    let limits = LimitLog::start(port);
    let ok = replies(&mut subscriber, count).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let text = metrics(port).await;
    let limits = limits.stop();
    let (inside, late, calls) = service.take();
    drop(ricochet);
    let _ = client
        .request(format!("$JS.API.STREAM.DELETE.{stream}"), Bytes::new())
        .await;
    Ok(Row {
        scenario: "backlog, JetStream",
        limit: name,
        goodput: ok as f64 / elapsed,
        p50_ms: inside.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: inside.value_at_quantile(0.99) as f64 / 1e3,
        late,
        retries: metric(&text, "ricochet_retries_total"),
        refused: count - ok,
        calls,
        mean_limit: mean(&limits),
    })
}

/// Scenario 3: a JetStream backlog while K goes from `--workers` to 4 x that and back.
async fn capacity_change(args: &Args, service: &Service, base_url: &str) -> anyhow::Result<()> {
    let low = args.workers;
    let high = low * 4;
    let phase = args.duration / 2;
    let per_second = |k: usize| k as f64 / args.work.as_secs_f64();
    let count = ((per_second(low) * 2.0 + per_second(high)) * phase.as_secs_f64() * 1.1) as u64;
    eprintln!("== capacity change {low} -> {high} -> {low}, auto, {count} requests");
    let prefix = format!("bench.adaptive.cc.{}", unique());
    let client = async_nats::connect(&args.nats_url).await.context("NATS")?;
    let stream = fill_stream(&client, &prefix, count).await?;
    let (ricochet, mut subscriber, _client) =
        drain_from(args, base_url, &prefix, &stream, LIMITS[1].1).await?;
    let port = ricochet.admin.context("ricochet's admin port")?;
    let limits = LimitLog::start(port);
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    let counting = tokio::spawn(async move {
        while subscriber.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut phases = Vec::new();
    let mut boundaries = Vec::new();
    for k in [low, high, low] {
        service.set_workers(k).await;
        boundaries.push(format!(
            "K = {k} from {:.1}s",
            limits.started.elapsed().as_secs_f64()
        ));
        let before = answered.load(Ordering::SeqCst);
        tokio::time::sleep(phase).await;
        let done = answered.load(Ordering::SeqCst) - before;
        let (inside, _, _) = service.take();
        phases.push((k, done as f64 / phase.as_secs_f64(), inside));
    }
    let limits = limits.stop();
    counting.abort();
    drop(ricochet);
    let _ = client
        .request(format!("$JS.API.STREAM.DELETE.{stream}"), Bytes::new())
        .await;
    service.set_workers(low).await;
    println!("\nCapacity change (JetStream backlog, auto): K for {phase:?} each");
    println!("| K | capacity /s | goodput /s | p50 ms inside | p99 ms inside |");
    println!("|---|---|---|---|---|");
    for (k, goodput, inside) in &phases {
        println!(
            "| {k} | {:.0} | {goodput:.0} | {:.1} | {:.1} |",
            per_second(*k),
            inside.value_at_quantile(0.5) as f64 / 1e3,
            inside.value_at_quantile(0.99) as f64 / 1e3
        );
    }
    let line: Vec<String> = limits
        .iter()
        .step_by(2)
        .map(|(t, l)| format!("{t:.1}s:{l:.0}"))
        .collect();
    println!("{}", boundaries.join(", "));
    println!("limit over time (every 0.5 s): {}", line.join(" "));
    Ok(())
}
