//! `ricochet-bench`: what ricochet costs, measured against what the machine allows, in one
//! run on loopback, with the same payload, upstream and offered load for every leg:
//!
//! - L0 direct HTTP: a hyper client calling the upstream (a child process, as every leg's);
//! - L1 native NATS: requester -> nats-server -> an async-nats responder (a child process,
//!   measured like ricochet: the least a NATS responder costs) -> reply;
//! - L2 ricochet: requester -> nats-server -> ricochet -> upstream -> ricochet -> requester;
//! - U0, U2: L0 and L2 with the upstream on a Unix socket instead of TCP (the same upstream
//!   process listens on both);
//! - K1 native Kafka: consume -> produce passthrough in this process (no HTTP);
//! - K2 ricochet Kafka: request topic -> ricochet -> upstream -> reply topic;
//! - A1 native AMQP: requester -> RabbitMQ -> a lapin RPC responder (a child process) ->
//!   direct reply-to;
//! - A2 ricochet AMQP: requester -> RabbitMQ -> ricochet -> upstream -> ricochet ->
//!   direct reply-to.
//!
//! Per leg: closed-loop throughput at several concurrencies, open-loop latency at several
//! rates (each request timed from its scheduled start, so a stall counts against every
//! request it delays: no coordinated omission), and for ricochet (and L1's responder) the
//! CPU time per 1,000 requests and peak RSS from /proc. Prints a table and writes JSON.

mod adaptive;
mod amqp;
mod functions;
mod parts;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};
use tokio::sync::oneshot;

#[derive(Parser, Debug, Clone)]
#[command(about = "Measure ricochet against direct HTTP and native NATS/Kafka/AMQP on loopback")]
struct Args {
    /// Legs to run.
    #[arg(long, value_delimiter = ',', default_value = "L0,L1,L2,K1,K2,A1,A2")]
    legs: Vec<String>,
    /// Duration of each closed-loop and open-loop measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Request and response payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// A fixed delay the upstream adds to every answer.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Closed-loop concurrencies.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    concurrency: Vec<usize>,
    /// Open-loop rates in requests per second.
    #[arg(long, value_delimiter = ',', default_value = "200,1000,5000")]
    rates: Vec<u64>,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Start a fresh tansu (this binary) on a free port for each Kafka leg, instead of
    /// using --kafka-brokers: tansu's memory storage slows down as topics fill.
    #[arg(long)]
    tansu: Option<std::path::PathBuf>,
    /// The ricochet binary; default: next to this one.
    #[arg(long)]
    ricochet: Option<std::path::PathBuf>,
    /// With `--callgrind`: keep ricochet's callgrind dump at this path (for
    /// `callgrind_annotate`); with `--tracing`, tracing off's at this path plus `.off`.
    #[arg(long)]
    keep_dump: Option<std::path::PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// ricochet's `runtime.worker_threads` (default: its own default).
    #[arg(long)]
    ricochet_threads: Option<usize>,
    /// HTTP connection pool size for L0 and ricochet.
    #[arg(long, default_value_t = 128)]
    pool: usize,
    /// Instead of the legs: count the instructions ricochet executes per request (user
    /// space, all threads) with valgrind's callgrind, over an open loop at the first of
    /// `--rates` for `--duration`, then those of its parts (L1's responder, L0's HTTP
    /// client) and print ricochet's count as a ratio to their sum. Unlike times,
    /// instruction counts repeat exactly on a busy machine: the figure to compare before
    /// and after a change.
    #[arg(long)]
    callgrind: bool,
    /// With `--callgrind`: also where the instructions go, by group (crate, ricochet's
    /// modules, allocation) and by function: ricochet against its parts, or with
    /// `--tracing` tracing on against off.
    #[arg(long)]
    by_function: bool,
    /// With `--callgrind`: count twice with the same JSON payload of `--payload` bytes (an
    /// order with line items), on a route without validation and on one that validates it
    /// against a JSON Schema, and print both figures and their difference.
    #[arg(long)]
    validate_json: bool,
    /// With `--callgrind`: count twice, with tracing off (the default) and with tracing on
    /// (every message sampled, spans exported over OTLP/HTTP to a sink), and print both
    /// figures and their difference.
    #[arg(long)]
    tracing: bool,
    /// The route's `max_in_flight` in L2, U2 and `--callgrind`: a number, or `auto` (the
    /// adaptive limit, up to 1024).
    #[arg(long, default_value = "1024")]
    max_in_flight: String,
    /// Instead of the legs: the adaptive limit against a fixed `max_in_flight = 64` in
    /// front of a service of `--workers` workers taking `--work` per request (overload on
    /// core NATS, a JetStream backlog, the service's capacity changed mid-run), each
    /// scenario `--duration` long.
    #[arg(long)]
    adaptive: bool,
    /// With `--adaptive`: the service's workers (K).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// With `--adaptive`: each request's work.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    work: Duration,
    /// Internal: run as L1's native responder on this subject (a child process of the
    /// bench, so that its CPU and memory are measured like ricochet's).
    #[arg(long, hide = true)]
    respond: Option<String>,
    /// Internal: run as A1's native RPC responder on this queue.
    #[arg(long, hide = true)]
    amqp_respond: Option<String>,
    /// Internal: run as the upstream HTTP service (a child process, so that L0 measures the
    /// HTTP client alone).
    #[arg(long, hide = true)]
    serve_upstream: bool,
    /// Internal: the upstream's Unix socket (U0, U2), on which it listens besides TCP.
    #[arg(long, hide = true)]
    upstream_socket: Option<std::path::PathBuf>,
}

type CallFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
/// One request-reply round trip of a leg, checking the reply.
type Call = Arc<dyn Fn() -> CallFuture + Send + Sync>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(subject) = &args.respond {
        // One thread, like ricochet's default: the cheapest way to answer.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(respond(&args.nats_url, subject));
    }
    if let Some(queue) = &args.amqp_respond {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(amqp::respond(&args.amqp_url, queue));
    }
    if args.serve_upstream {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve_upstream(args.delay, args.upstream_socket));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.adaptive {
        return runtime.block_on(adaptive::run(&args));
    }
    runtime.block_on(run(args))
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    let payload = Bytes::from(vec![b'x'; args.payload]);
    // In a directory of its own, removed with the upstream process.
    let socket_dir = std::env::temp_dir().join(format!("ricochet-bench-{}", unique()));
    std::fs::create_dir_all(&socket_dir)?;
    let socket = socket_dir.join("upstream.sock");
    args.upstream_socket = Some(socket.clone());
    let (upstream, mut upstream_process) = start_upstream(&args).await?;
    upstream_process.dir = Some(socket_dir);
    let bench = ("bench", std::process::id());
    let upstream_pid = ("upstream", upstream_process.pid());
    let nats = local_process("nats-server").map(|pid| ("nats-server", pid));
    let rabbitmq = local_process("beam.smp").map(|pid| ("rabbitmq", pid));
    if args.callgrind && args.validate_json {
        return count_validation(&args, upstream).await;
    }
    if args.callgrind && args.tracing {
        return count_tracing(&args, upstream, payload).await;
    }
    if args.callgrind {
        let ricochet = count_instructions(&args, upstream, payload.clone(), "").await?;
        let rate = args.rates.first().copied().unwrap_or(100);
        println!(
            "ricochet under callgrind: {} requests at {rate}/s, {} instructions per request (user space, all threads)",
            ricochet.requests,
            ricochet.per_request()
        );
        return parts::report(&args, upstream, payload, &ricochet).await;
    }
    let mut results = Vec::new();
    for leg in &args.legs {
        let leg = leg.trim().to_uppercase();
        eprintln!("== {leg}");
        let result = match leg.as_str() {
            // The client and the load loop are all this process does in L0 (U0: the
            // upstream on its Unix socket).
            "L0" | "U0" => {
                let call = match leg.as_str() {
                    "L0" => l0(&args, upstream, payload.clone()),
                    _ => u0(&args, &socket, payload.clone()),
                };
                let processes = Processes {
                    measured: Some(("client", bench.1)),
                    others: vec![upstream_pid],
                };
                measure(&args, &leg, call, processes).await
            }
            "L1" => {
                let (call, responder) = l1(&args, payload.clone()).await?;
                let processes = Processes {
                    measured: Some(("responder", responder.pid())),
                    others: [Some(bench), nats].into_iter().flatten().collect(),
                };
                measure(&args, &leg, call, processes).await
            }
            // U2: L2 with the upstream on its Unix socket.
            "L2" | "U2" => {
                let (call, ricochet) = match leg.as_str() {
                    "L2" => l2(&args, upstream, payload.clone()).await?,
                    _ => u2(&args, &socket, payload.clone()).await?,
                };
                let processes = Processes {
                    measured: Some(("ricochet", ricochet.pid())),
                    others: [Some(bench), nats, Some(upstream_pid)]
                        .into_iter()
                        .flatten()
                        .collect(),
                };
                measure(&args, &leg, call, processes).await
            }
            "K1" => {
                let (args, broker) = with_fresh_broker(&args).await?;
                let (call, _passthrough) = k1(&args, payload.clone()).await?;
                let processes = Processes {
                    measured: None,
                    others: [Some(bench), broker.pid().map(|pid| ("tansu", pid))]
                        .into_iter()
                        .flatten()
                        .collect(),
                };
                measure(&args, &leg, call, processes).await
            }
            "K2" => {
                let (args, broker) = with_fresh_broker(&args).await?;
                let (call, ricochet) = k2(&args, upstream, payload.clone()).await?;
                let processes = Processes {
                    measured: Some(("ricochet", ricochet.pid())),
                    others: [
                        Some(bench),
                        broker.pid().map(|pid| ("tansu", pid)),
                        Some(upstream_pid),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                };
                measure(&args, &leg, call, processes).await
            }
            "A1" => {
                let (call, responder, _queue) = a1(&args, payload.clone()).await?;
                let processes = Processes {
                    measured: Some(("responder", responder.pid())),
                    others: [Some(bench), rabbitmq].into_iter().flatten().collect(),
                };
                measure(&args, &leg, call, processes).await
            }
            "A2" => {
                let (call, ricochet, cleanup) = a2(&args, upstream, payload.clone()).await?;
                let processes = Processes {
                    measured: Some(("ricochet", ricochet.pid())),
                    others: [Some(bench), rabbitmq, Some(upstream_pid)]
                        .into_iter()
                        .flatten()
                        .collect(),
                };
                let result = measure(&args, &leg, call, processes).await;
                drop(ricochet);
                cleanup.await;
                result
            }
            other => bail!("unknown leg {other}: use L0, L1, L2, U0, U2, K1, K2, A1, A2"),
        };
        results.push(result);
    }
    let report = report(&args, &results);
    print_table(&args, &results, &report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("results written to {}", path.display());
    }
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    if errors > 0 {
        bail!("{errors} requests failed or got a wrong reply");
    }
    Ok(())
}

// ---------- measurements ----------

struct LegResult {
    leg: String,
    closed: Vec<ClosedResult>,
    open: Vec<OpenResult>,
    errors: u64,
}

struct ClosedResult {
    concurrency: usize,
    req_per_s: f64,
    /// CPU ms per 1,000 requests of the leg's measured process (ricochet, the responder).
    cpu_ms_per_1000: Option<f64>,
    /// Peak RSS of the leg's measured process over this closed loop.
    peak_rss_mb: Option<f64>,
    /// CPU ms per 1,000 requests of every process on the path: where the machine's time
    /// went, so that legs can be compared process by process.
    by_process: Vec<(&'static str, f64)>,
}

/// The processes on a leg's path: the measured one (if any) and the others.
struct Processes {
    measured: Option<(&'static str, u32)>,
    others: Vec<(&'static str, u32)>,
}

impl Processes {
    fn all(&self) -> Vec<(&'static str, u32)> {
        self.measured.iter().chain(&self.others).copied().collect()
    }
}

/// A local process by its command name (nats-server, tansu), if there is one.
fn local_process(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

struct OpenResult {
    rate: u64,
    achieved: f64,
    /// Requests without a reply within 30 s: the rate was not sustained.
    unanswered: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    cpu_ms_per_1000: Option<f64>,
    peak_rss_mb: Option<f64>,
}

async fn measure(args: &Args, leg: &str, call: Call, processes: Processes) -> LegResult {
    let pid = processes.measured.map(|(_, pid)| pid);
    let errors = Arc::new(AtomicU64::new(0));
    // Warm up connections and pools.
    closed_loop(&call, 16, Duration::from_millis(300), &errors).await;
    errors.store(0, Ordering::SeqCst);
    let mut open = Vec::new();
    // Open loop first, so the peak RSS of each rate is not that of a heavier run before it.
    for &rate in &args.rates {
        let usage = pid.map(Usage::start);
        let unanswered = Arc::new(AtomicU64::new(0));
        let (histogram, achieved, count) =
            open_loop(&call, rate, args.duration, &errors, &unanswered).await;
        let unanswered = unanswered.load(Ordering::SeqCst);
        let (cpu, rss) = usage.map(|u| u.finish(count)).unwrap_or((None, None));
        if unanswered > 0 {
            drain(&call).await;
        }
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        eprintln!(
            "  open {rate:>5}/s: achieved {achieved:>8.0}/s{}  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms{}",
            if unanswered > 0 { format!(" ({unanswered} unanswered in 30 s: not sustained)") } else { String::new() },
            ms(0.5),
            ms(0.99),
            ms(0.999),
            cpu.map(|c| format!("  cpu {c:.1} ms/1k  rss {:.1} MB", rss.unwrap_or(0.0))).unwrap_or_default()
        );
        open.push(OpenResult {
            rate,
            achieved,
            unanswered,
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            cpu_ms_per_1000: cpu,
            peak_rss_mb: rss,
        });
    }
    let mut closed = Vec::new();
    for &concurrency in &args.concurrency {
        let usages: Vec<(&'static str, Usage)> = (processes.all().into_iter())
            .map(|(name, pid)| (name, Usage::start(pid)))
            .collect();
        let count = closed_loop(&call, concurrency, args.duration, &errors).await;
        let throughput = count as f64 / args.duration.as_secs_f64();
        let measured = processes.measured.map(|(name, _)| name);
        let mut peak_rss = None;
        let by_process: Vec<(&'static str, f64)> = (usages.into_iter())
            .filter_map(|(name, usage)| {
                let (cpu, rss) = usage.finish(count);
                if Some(name) == measured {
                    peak_rss = rss;
                }
                Some((name, cpu?))
            })
            .collect();
        let cpu = processes
            .measured
            .and_then(|(name, _)| by_process.iter().find(|(n, _)| *n == name))
            .map(|(_, cpu)| *cpu);
        eprintln!(
            "  closed c={concurrency:<4} {throughput:>9.0} req/s{}",
            cpu.map(|c| format!("  cpu {c:.1} ms/1k  rss {:.1} MB", peak_rss.unwrap_or(0.0)))
                .unwrap_or_default()
        );
        closed.push(ClosedResult {
            concurrency,
            req_per_s: throughput,
            cpu_ms_per_1000: cpu,
            peak_rss_mb: peak_rss,
            by_process,
        });
    }
    LegResult {
        leg: leg.to_string(),
        closed,
        open,
        errors: errors.load(Ordering::SeqCst),
    }
}

/// After a rate that was not sustained, the requests still queued (in the broker, in
/// ricochet) would compete with the next measurement: wait until a request is answered
/// within a second again (at most two minutes).
async fn drain(call: &Call) {
    eprintln!("  draining the backlog of the rate not sustained");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), call()).await {
            return;
        }
    }
    eprintln!("  the backlog did not drain in two minutes");
}

/// `concurrency` workers calling back to back for `duration`; returns the successes.
async fn closed_loop(
    call: &Call,
    concurrency: usize,
    duration: Duration,
    errors: &Arc<AtomicU64>,
) -> u64 {
    let deadline = Instant::now() + duration;
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, done, errors) = (call.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match call().await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    done.load(Ordering::SeqCst)
}

/// Requests started at `rate` per second on schedule, whatever earlier ones do; each is
/// timed from its scheduled start, so stalls count against every request they delay (no
/// coordinated omission). The schedule runs on its own thread with the OS's sleep, which is
/// far finer than the async timer's millisecond. Returns the latency histogram (µs), the
/// achieved rate of completions and their count.
async fn open_loop(
    call: &Call,
    rate: u64,
    duration: Duration,
    errors: &Arc<AtomicU64>,
    unanswered: &Arc<AtomicU64>,
) -> (Histogram<u64>, f64, u64) {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let runtime = tokio::runtime::Handle::current();
    let (call, task_histogram, task_errors) = (call.clone(), histogram.clone(), errors.clone());
    let task_unanswered = unanswered.clone();
    let start = Instant::now();
    let scheduler = std::thread::spawn(move || {
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = start + interval.mul_f64(i as f64);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (call, histogram, errors) =
                (call.clone(), task_histogram.clone(), task_errors.clone());
            let unanswered = task_unanswered.clone();
            tasks.push(runtime.spawn(async move {
                match tokio::time::timeout(Duration::from_secs(30), call()).await {
                    Ok(Ok(())) => {
                        let micros = scheduled.elapsed().as_micros() as u64;
                        let _ = histogram
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record(micros.max(1));
                    }
                    Ok(Err(_)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tasks
    });
    let tasks = tokio::task::spawn_blocking(move || scheduler.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let count = histogram.len();
    (histogram, count as f64 / elapsed, count)
}

/// CPU time and peak RSS of a process over one measurement, from /proc.
struct Usage {
    pid: u32,
    ticks: u64,
}

impl Usage {
    fn start(pid: u32) -> Self {
        // Reset the peak RSS (VmHWM) so this measurement reports its own.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        Self {
            pid,
            ticks: cpu_ticks(pid),
        }
    }

    /// (CPU ms per 1,000 requests, peak RSS in MB)
    fn finish(self, requests: u64) -> (Option<f64>, Option<f64>) {
        let ticks = cpu_ticks(self.pid).saturating_sub(self.ticks);
        // Linux reports CPU time in USER_HZ, 100 per second.
        let cpu_ms = ticks as f64 * 10.0;
        let per_1000 = (requests > 0).then(|| cpu_ms / (requests as f64 / 1000.0));
        (per_1000, peak_rss_mb(self.pid))
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A tansu broker of this run, stopped on drop.
struct Broker(Option<Child>);

impl Broker {
    /// This run's tansu, else a local one.
    fn pid(&self) -> Option<u32> {
        match &self.0 {
            Some(child) => Some(child.id()),
            None => local_process("tansu"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// With `--tansu`, a fresh broker on a free port, and args pointing at it.
async fn with_fresh_broker(args: &Args) -> anyhow::Result<(Args, Broker)> {
    let Some(tansu) = &args.tansu else {
        return Ok((args.clone(), Broker(None)));
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", tansu.display()))?;
    let broker = Broker(Some(child));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let mut args = args.clone();
            args.kafka_brokers = format!("127.0.0.1:{port}");
            return Ok((args, broker));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("tansu did not start")
}

// ---------- the upstream ----------

/// The upstream as a child process; returns its address.
async fn start_upstream(args: &Args) -> anyhow::Result<(SocketAddr, ChildProcess)> {
    let delay = humantime::format_duration(args.delay).to_string();
    let mut role = vec!["--serve-upstream", "--delay", &delay];
    let socket = args.upstream_socket.as_ref().map(|s| s.to_string_lossy());
    if let Some(socket) = &socket {
        role.extend(["--upstream-socket", socket.as_ref()]);
    }
    let (process, line) = start_role(&role).await?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("the upstream printed {line:?}, not its address"))?;
    Ok((addr, process))
}

/// The upstream: echoes the request body, after `delay`. Listens on TCP and, with
/// `socket`, on that Unix socket too; prints its TCP address once both listen.
async fn serve_upstream(delay: Duration, socket: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    if let Some(path) = socket {
        let _ = std::fs::remove_file(&path);
        let unix = tokio::net::UnixListener::bind(&path)?;
        tokio::spawn(async move {
            loop {
                if let Ok((stream, _)) = unix.accept().await {
                    tokio::spawn(serve_http(stream, delay));
                }
            }
        });
    }
    println!("{}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_http(stream, delay));
    }
}

/// One connection of the upstream, TCP or Unix.
async fn serve_http<S>(stream: S, delay: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<Incoming>| async move {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// This binary in another role (upstream, responder) as a child process, and the first
/// line it prints (its address, or that it is ready).
async fn start_role(role: &[&str]) -> anyhow::Result<(ChildProcess, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {role:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let process = ChildProcess {
        child,
        dir: None,
        admin: None,
    };
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    })
    .await??;
    Ok((process, line))
}

// ---------- legs ----------

fn l0(args: &Args, upstream: SocketAddr, payload: Bytes) -> Call {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let uri = format!("http://{upstream}/echo").parse().expect("uri");
    echo_client(args, connector, uri, payload)
}

/// L0 with the upstream on its Unix socket.
fn u0(args: &Args, socket: &std::path::Path, payload: Bytes) -> Call {
    let uri = "http://localhost/echo".parse().expect("uri");
    echo_client(args, UnixConnector(Arc::from(socket)), uri, payload)
}

/// The direct HTTP leg's call through `connector`: POST the payload to `uri`, check the echo.
fn echo_client<C>(args: &Args, connector: C, uri: hyper::Uri, payload: Bytes) -> Call
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client: Client<C, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.pool)
        .build(connector);
    Arc::new(move || {
        let (client, uri, payload) = (client.clone(), uri.clone(), payload.clone());
        Box::pin(async move {
            let request = hyper::Request::post(uri).body(Full::new(payload.clone()))?;
            let response = client.request(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            check(&body, &payload)
        })
    })
}

/// Connects every URI to one Unix socket (hyper-util has no such connector of its own).
#[derive(Clone)]
struct UnixConnector(Arc<std::path::Path>);

impl tower_service::Service<hyper::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(&*path).await?)) })
    }
}

/// The native NATS responder, as a child process; returns the call and the process.
async fn l1(args: &Args, payload: Bytes) -> anyhow::Result<(Call, ChildProcess)> {
    let subject = format!("bench.l1.{}", unique());
    let (responder, line) =
        start_role(&["--respond", &subject, "--nats-url", &args.nats_url]).await?;
    // It prints a line once its subscription is confirmed by the server.
    if line.trim() != "ready" {
        bail!("the responder did not start");
    }
    Ok((nats_call(args, subject, payload).await?, responder))
}

/// L1's responder: answers every request with its payload.
async fn respond(nats_url: &str, subject: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await.context("NATS")?;
    let mut subscription = client.subscribe(subject.to_string()).await?;
    client.flush().await?;
    println!("ready");
    while let Some(message) = subscription.next().await {
        if let Some(reply) = message.reply {
            client.publish(reply, message.payload).await?;
        }
    }
    Ok(())
}

async fn nats_call(args: &Args, subject: String, payload: Bytes) -> anyhow::Result<Call> {
    let requester = async_nats::connect(&args.nats_url).await.context("NATS")?;
    Ok(Arc::new(move || {
        let (requester, subject, payload) = (requester.clone(), subject.clone(), payload.clone());
        Box::pin(async move {
            let reply = requester.request(subject, payload.clone()).await?;
            check(&reply.payload, &payload)
        })
    }))
}

/// ricochet or the native responder as a child process, killed on drop (with its
/// configuration directory).
struct ChildProcess {
    child: Child,
    dir: Option<std::path::PathBuf>,
    /// ricochet's admin port.
    admin: Option<u16>,
}

impl ChildProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn start_ricochet(args: &Args, routes: &str) -> anyhow::Result<ChildProcess> {
    start_ricochet_with(args, routes, &[]).await
}

/// ricochet, started by `launcher` (e.g. valgrind and its options) when not empty.
async fn start_ricochet_with(
    args: &Args,
    routes: &str,
    launcher: &[String],
) -> anyhow::Result<ChildProcess> {
    let binary = match &args.ricochet {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ricochet"),
    };
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("ricochet-bench-{}", unique()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[log]\nlevel = \"warn\"\n\n{threads}{routes}",
            args.nats_url,
            threads = args
                .ricochet_threads
                .map(|n| format!("[runtime]\nworker_threads = {n}\n\n"))
                .unwrap_or_default()
        ),
    )?;
    let mut command = match launcher.split_first() {
        Some((program, options)) => {
            let mut command = Command::new(program);
            command.args(options).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let child = command
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let process = ChildProcess {
        child,
        dir: Some(dir),
        admin: Some(admin),
    };
    for _ in 0..600 {
        if http_status(admin, "/readyz").await == Some(200) {
            return Ok(process);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("ricochet did not become ready")
}

fn upstream_section(args: &Args, base_url: &str) -> String {
    format!(
        "[upstream]\nbase_url = \"{base_url}\"\nrequest_timeout = \"10s\"\npool_max_idle = {}\n",
        args.pool
    )
}

/// The route's `max_in_flight` line (`--max-in-flight`).
fn max_in_flight(args: &Args) -> String {
    match args.max_in_flight.as_str() {
        "auto" => "max_in_flight = \"auto\"\nconcurrency = { max = 1024 }\n".into(),
        n => format!("max_in_flight = {n}\n"),
    }
}

async fn l2(
    args: &Args,
    upstream: SocketAddr,
    payload: Bytes,
) -> anyhow::Result<(Call, ChildProcess)> {
    ricochet_leg(args, "l2", &format!("http://{upstream}"), payload).await
}

/// L2 with the upstream on its Unix socket.
async fn u2(
    args: &Args,
    socket: &std::path::Path,
    payload: Bytes,
) -> anyhow::Result<(Call, ChildProcess)> {
    let base_url = format!("unix://{}", socket.display());
    ricochet_leg(args, "u2", &base_url, payload).await
}

/// ricochet in front of the upstream at `base_url`, and the NATS call through it.
async fn ricochet_leg(
    args: &Args,
    leg: &str,
    base_url: &str,
    payload: Bytes,
) -> anyhow::Result<(Call, ChildProcess)> {
    let subject = format!("bench.{leg}.{}", unique());
    let routes = format!(
        "{}\n[[routes]]\nname = \"bench\"\nsubject = \"{subject}\"\nmethod = \"POST\"\npath = \"/echo\"\n{}",
        upstream_section(args, base_url),
        max_in_flight(args)
    );
    let ricochet = start_ricochet(args, &routes).await?;
    Ok((nats_call(args, subject, payload).await?, ricochet))
}

/// The JSON Schema of `--validate-json`'s payload: what a real order route would check.
const ORDER_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "items"],
  "properties": {
    "id": {"type": "string", "pattern": "^o-[0-9]+$"},
    "items": {"type": "array", "maxItems": 100, "items": {
      "type": "object", "required": ["sku", "qty"],
      "properties": {"sku": {"type": "string", "minLength": 1}, "qty": {"type": "integer", "minimum": 1}}
    }},
    "note": {"type": "string"}
  }
}"#;

/// An order with line items, padded with a note to exactly `size` bytes (at least ~60).
fn json_order(size: usize) -> Bytes {
    let mut items = Vec::new();
    loop {
        let n = items.len() + 1;
        items.push(json!({"sku": format!("sku-{n:04}"), "qty": n}));
        let text = json!({"id": "o-42", "items": items, "note": ""}).to_string();
        if text.len() + 40 > size {
            items.pop();
            break;
        }
    }
    let text = json!({"id": "o-42", "items": items, "note": ""}).to_string();
    let note = "n".repeat(size.saturating_sub(text.len()));
    Bytes::from(json!({"id": "o-42", "items": items, "note": note}).to_string())
}

/// `--callgrind --validate-json`: instructions per request without and with the route's
/// JSON Schema, the same payload both times.
async fn count_validation(args: &Args, upstream: SocketAddr) -> anyhow::Result<()> {
    let payload = json_order(args.payload);
    let dir = std::env::temp_dir().join(format!("ricochet-bench-schema-{}", unique()));
    std::fs::create_dir_all(&dir)?;
    let schema = dir.join("order.schema.json");
    std::fs::write(&schema, ORDER_SCHEMA)?;
    // Both runs send the same Content-Type, so that the difference is the validation's.
    let content_type = "content_type = \"application/json\"\n";
    let validate = format!(
        "{content_type}[routes.validate]\nformat = \"json_schema\"\nschema = \"{}\"\ncontent_types = [\"application/json\"]\n",
        schema.display()
    );
    let plain = count_instructions(args, upstream, payload.clone(), content_type).await?;
    let checked = count_instructions(args, upstream, payload.clone(), &validate).await?;
    let (plain_count, plain) = (plain.requests, plain.per_request());
    let (checked_count, checked) = (checked.requests, checked.per_request());
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "ricochet under callgrind, {} byte JSON payload: {plain} instructions per request without validation ({plain_count} requests), \
         {checked} with JSON Schema validation ({checked_count} requests): +{} per request (+{:.1}%)",
        payload.len(),
        checked as i64 - plain as i64,
        (checked as f64 / plain as f64 - 1.0) * 100.0
    );
    Ok(())
}

/// `--callgrind --tracing`: instructions per request with tracing off and on. The spans go
/// to the bench's upstream, which answers every POST with 200 like a collector.
async fn count_tracing(args: &Args, upstream: SocketAddr, payload: Bytes) -> anyhow::Result<()> {
    let off_dump = count_instructions(args, upstream, payload.clone(), "").await?;
    let tracing = format!(
        "\n[tracing]\nenabled = true\nsample_ratio = 1.0\nendpoint = \"http://{upstream}/v1/traces\"\n"
    );
    let on_dump = count_instructions(args, upstream, payload, &tracing).await?;
    let (off_count, off) = (off_dump.requests, off_dump.per_request());
    let (on_count, on) = (on_dump.requests, on_dump.per_request());
    println!(
        "ricochet under callgrind: {off} instructions per request with tracing off ({off_count} requests), \
         {on} with tracing on, every message sampled and exported ({on_count} requests): +{} per request (+{:.1}%)",
        on as i64 - off as i64,
        (on as f64 / off as f64 - 1.0) * 100.0
    );
    if args.by_function {
        functions::print_tracing(&off_dump, &on_dump);
    }
    Ok(())
}

/// `--callgrind`: ricochet under callgrind; counters are zeroed after the warm-up and
/// dumped after an open loop, so the dump holds exactly that loop's requests. `route_extra`
/// is added after the route (e.g. a `[routes.validate]` or a `[tracing]` table). Returns the requests counted
/// and the dump. With `--keep-dump F`, the dump is kept at F (with `--tracing`, tracing
/// off's at F.off).
async fn count_instructions(
    args: &Args,
    upstream: SocketAddr,
    payload: Bytes,
    route_extra: &str,
) -> anyhow::Result<parts::Count> {
    let rate = args.rates.first().copied().unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("ricochet-callgrind-{}", unique()));
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("callgrind.out");
    let launcher = [
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
        "--log-file=/dev/null".to_string(),
    ];
    let subject = format!("bench.callgrind.{}", unique());
    let routes = format!(
        "{}\n[[routes]]\nname = \"bench\"\nsubject = \"{subject}\"\nmethod = \"POST\"\npath = \"/echo\"\n{}{route_extra}",
        upstream_section(args, &format!("http://{upstream}")),
        max_in_flight(args)
    );
    let ricochet = start_ricochet_with(args, &routes, &launcher)
        .await
        .context("ricochet under valgrind (is valgrind installed?)")?;
    let call = nats_call(args, subject, payload).await?;
    let errors = Arc::new(AtomicU64::new(0));
    // With tracing, spans are exported in batches (every 5 s by default), so a count would
    // hold a varying share of exports: wait for the warm-up's spans to leave before the
    // counters are zeroed, and for the loop's to leave before the dump.
    let exported = || async {
        if route_extra.contains("[tracing]") {
            tokio::time::sleep(Duration::from_secs(9)).await;
        }
    };
    closed_loop(&call, 4, Duration::from_millis(500), &errors).await;
    exported().await;
    callgrind_control("--zero", ricochet.pid())?;
    let unanswered = Arc::new(AtomicU64::new(0));
    let (_, _, count) = open_loop(&call, rate, args.duration, &errors, &unanswered).await;
    exported().await;
    callgrind_control("--dump", ricochet.pid())?;
    drop(ricochet);
    let dump =
        std::fs::read_to_string(dir.join("callgrind.out.1")).context("callgrind wrote no dump")?;
    if let Some(keep) = &args.keep_dump {
        // `--tracing` counts twice: the first (off) goes to F.off, so both stay.
        let keep = match args.tracing && route_extra.is_empty() {
            true => {
                let mut off = keep.clone().into_os_string();
                off.push(".off");
                off.into()
            }
            false => keep.clone(),
        };
        std::fs::write(&keep, &dump).with_context(|| format!("writing {}", keep.display()))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let failed = errors.load(Ordering::SeqCst) + unanswered.load(Ordering::SeqCst);
    if failed > 0 || count == 0 {
        bail!("{failed} requests failed under callgrind");
    }
    parts::Count::new(count, dump)
}

fn callgrind_control(action: &str, pid: u32) -> anyhow::Result<()> {
    let output = Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .output()
        .context("callgrind_control")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {action} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Kafka requester: produces requests with a correlation id and waits for the reply with
/// the same id on the reply topic.
struct KafkaRequester {
    producer: FutureProducer,
    request_topic: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>,
    next: AtomicU64,
}

impl KafkaRequester {
    async fn new(args: &Args, request_topic: &str, reply_topic: &str) -> anyhow::Result<Arc<Self>> {
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>> = Arc::default();
        let consumer: StreamConsumer = kafka_client(args)
            .set("group.id", format!("bench-replies-{}", unique()))
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[reply_topic])?;
        wait_assigned(&consumer).await;
        let map = waiting.clone();
        tokio::spawn(async move {
            loop {
                let Ok(message) = consumer.recv().await else {
                    continue;
                };
                let Some(id) = header(&message, "correlation-id") else {
                    continue;
                };
                if let Some(sender) = map.lock().unwrap().remove(&id) {
                    let _ = sender.send(Bytes::copy_from_slice(
                        message.payload().unwrap_or_default(),
                    ));
                }
            }
        });
        Ok(Arc::new(Self {
            producer: kafka_client(args).set("linger.ms", "0").create()?,
            request_topic: request_topic.to_string(),
            waiting,
            next: AtomicU64::new(0),
        }))
    }

    async fn call(&self, payload: &Bytes) -> anyhow::Result<()> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (sender, receiver) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id.clone(), sender);
        let headers = OwnedHeaders::new().insert(Header {
            key: "correlation-id",
            value: Some(&id),
        });
        let record = FutureRecord::to(&self.request_topic)
            .key(&id)
            .payload(payload.as_ref())
            .headers(headers);
        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(10)).await {
            self.waiting.lock().unwrap().remove(&id);
            return Err(e.into());
        }
        let reply = tokio::time::timeout(Duration::from_secs(30), receiver).await??;
        check(&reply, payload)
    }
}

fn kafka_client(args: &Args) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.kafka_brokers)
        // tansu answers a fetch only after fetch.wait.max.ms: keep hops short here (not in
        // ricochet's defaults).
        .set("fetch.wait.max.ms", "2");
    config
}

async fn create_topics(args: &Args, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_client(args).create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 4, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        result.map_err(|(topic, e)| anyhow::anyhow!("cannot create {topic}: {e}"))?;
    }
    Ok(())
}

async fn wait_assigned(consumer: &StreamConsumer) {
    for _ in 0..300 {
        // Polling drives the group join.
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        if consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false)
        {
            return;
        }
    }
}

/// Native passthrough: consume requests, produce them unchanged as replies.
async fn k1(args: &Args, payload: Bytes) -> anyhow::Result<(Call, tokio::task::JoinHandle<()>)> {
    let (requests, replies) = (
        format!("bench-k1-req-{}", unique()),
        format!("bench-k1-rep-{}", unique()),
    );
    create_topics(args, &[&requests, &replies]).await?;
    let consumer: StreamConsumer = kafka_client(args)
        .set("group.id", format!("bench-k1-{}", unique()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&requests])?;
    wait_assigned(&consumer).await;
    let producer: FutureProducer = kafka_client(args)
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()?;
    let reply_topic = replies.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok(message) = consumer.recv().await else {
                continue;
            };
            let mut headers = OwnedHeaders::new();
            if let Some(id) = header(&message, "correlation-id") {
                headers = headers.insert(Header {
                    key: "correlation-id",
                    value: Some(&id),
                });
            }
            let payload = message.payload().unwrap_or_default().to_vec();
            let key = message.key().map(<[u8]>::to_vec);
            let producer = producer.clone();
            let topic = reply_topic.clone();
            tokio::spawn(async move {
                let mut record = FutureRecord::to(&topic).payload(&payload).headers(headers);
                if let Some(key) = &key {
                    record = record.key(key);
                }
                let _ = producer.send(record, Duration::from_secs(10)).await;
            });
        }
    });
    let requester = KafkaRequester::new(args, &requests, &replies).await?;
    let call: Call = Arc::new(move || {
        let (requester, payload) = (requester.clone(), payload.clone());
        Box::pin(async move { requester.call(&payload).await })
    });
    Ok((call, task))
}

async fn k2(
    args: &Args,
    upstream: SocketAddr,
    payload: Bytes,
) -> anyhow::Result<(Call, ChildProcess)> {
    let (requests, replies) = (
        format!("bench-k2-req-{}", unique()),
        format!("bench-k2-rep-{}", unique()),
    );
    create_topics(args, &[&requests, &replies]).await?;
    let routes = format!(
        "{}\n[[routes]]\nname = \"bench-kafka\"\nsource = \"kafka\"\nsubject = \"{requests}\"\nmethod = \"POST\"\npath = \"/echo\"\nmax_in_flight = 1024\n\n[routes.kafka]\nbrokers = \"{}\"\nreply_topic = \"{replies}\"\nordering = \"unordered\"\n\n[routes.kafka.consumer]\n\"fetch.wait.max.ms\" = \"2\"\n",
        upstream_section(args, &format!("http://{upstream}")),
        args.kafka_brokers
    );
    let ricochet = start_ricochet(args, &routes).await?;
    let requester = KafkaRequester::new(args, &requests, &replies).await?;
    let call: Call = Arc::new(move || {
        let (requester, payload) = (requester.clone(), payload.clone());
        Box::pin(async move { requester.call(&payload).await })
    });
    Ok((call, ricochet))
}

/// A1: the native RPC responder as a child process.
async fn a1(args: &Args, payload: Bytes) -> anyhow::Result<(Call, ChildProcess, String)> {
    let queue = format!("bench.a1.{}", unique());
    let (responder, line) =
        start_role(&["--amqp-respond", &queue, "--amqp-url", &args.amqp_url]).await?;
    if line.trim() != "ready" {
        bail!("the AMQP responder did not start");
    }
    let requester = amqp::AmqpRequester::new(&args.amqp_url, &queue).await?;
    let call: Call = Arc::new(move || {
        let (requester, payload) = (requester.clone(), payload.clone());
        Box::pin(async move { requester.call(&payload).await })
    });
    Ok((call, responder, queue))
}

/// A2: ricochet consuming a queue; the returned future deletes the queues it declared.
async fn a2(
    args: &Args,
    upstream: SocketAddr,
    payload: Bytes,
) -> anyhow::Result<(Call, ChildProcess, impl Future<Output = ()>)> {
    let queue = format!("bench.a2.{}", unique());
    let routes = format!(
        "{}\n[[routes]]\nname = \"bench-amqp\"\nsource = \"amqp\"\nsubject = \"{queue}\"\nmethod = \"POST\"\npath = \"/echo\"\nmax_in_flight = 1024\n\n[routes.amqp]\nurl = \"{}\"\nredelivery_backoff = [\"1s\"]\n",
        upstream_section(args, &format!("http://{upstream}")),
        args.amqp_url
    );
    let ricochet = start_ricochet(args, &routes).await?;
    let requester = amqp::AmqpRequester::new(&args.amqp_url, &queue).await?;
    let caller = requester.clone();
    let call: Call = Arc::new(move || {
        let (requester, payload) = (caller.clone(), payload.clone());
        Box::pin(async move { requester.call(&payload).await })
    });
    let cleanup = async move {
        let retry = format!("{queue}.ricochet-retry.1000ms");
        requester.delete(&[queue, retry]).await;
    };
    Ok((call, ricochet, cleanup))
}

// ---------- helpers ----------

fn check(reply: &[u8], payload: &[u8]) -> anyhow::Result<()> {
    if reply == payload {
        Ok(())
    } else {
        bail!(
            "wrong reply: {} bytes instead of {}",
            reply.len(),
            payload.len()
        )
    }
}

fn header<M: Message>(message: &M, name: &str) -> Option<String> {
    message.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

// ---------- report ----------

fn report(args: &Args, results: &[LegResult]) -> Value {
    let leg = |name: &str| results.iter().find(|r| r.leg == name);
    let closed_at = |name: &str, c: usize| {
        leg(name).and_then(|r| {
            (r.closed.iter())
                .find(|x| x.concurrency == c)
                .map(|x| x.req_per_s)
        })
    };
    let open_at =
        |name: &str, rate: u64| leg(name).and_then(|r| r.open.iter().find(|x| x.rate == rate));
    let top = args.concurrency.iter().copied().max().unwrap_or(128);
    let efficiency = match (
        closed_at("L0", top),
        closed_at("L1", top),
        closed_at("L2", top),
    ) {
        (Some(l0), Some(l1), Some(l2)) => Some(l2 / (1.0 / (1.0 / l0 + 1.0 / l1))),
        _ => None,
    };
    let added = match (open_at("L1", 1000), open_at("L2", 1000)) {
        (Some(l1), Some(l2)) => Some(json!({"p50_ms": l2.p50 - l1.p50, "p99_ms": l2.p99 - l1.p99})),
        _ => None,
    };
    let kafka_ratio = match (closed_at("K1", top), closed_at("K2", top)) {
        (Some(k1), Some(k2)) => Some(k2 / k1),
        _ => None,
    };
    let amqp_ratio = match (closed_at("A1", top), closed_at("A2", top)) {
        (Some(a1), Some(a2)) => Some(a2 / a1),
        _ => None,
    };
    // Throughput over the Unix socket against TCP, for the client alone and for ricochet.
    let ratio = |unix: &str, tcp: &str| match (closed_at(unix, top), closed_at(tcp, top)) {
        (Some(unix), Some(tcp)) => Some(unix / tcp),
        _ => None,
    };
    let unix_ratios = json!({"u0_over_l0": ratio("U0", "L0"), "u2_over_l2": ratio("U2", "L2")});
    json!({
        "machine": machine(),
        "payload_bytes": args.payload,
        "upstream_delay_ms": args.delay.as_secs_f64() * 1000.0,
        "duration_s": args.duration.as_secs_f64(),
        "legs": results.iter().map(|r| json!({
            "leg": r.leg,
            "measured_process": measured_process(&r.leg),
            "errors": r.errors,
            "closed_loop": r.closed.iter().map(|c| json!({
                "concurrency": c.concurrency, "req_per_s": c.req_per_s, "cpu_ms_per_1000": c.cpu_ms_per_1000, "peak_rss_mb": c.peak_rss_mb,
                "cpu_ms_per_1000_by_process": c.by_process.iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "open_loop": r.open.iter().map(|o| json!({
                "rate": o.rate, "achieved": o.achieved, "unanswered": o.unanswered,
                "p50_ms": o.p50, "p90_ms": o.p90, "p99_ms": o.p99, "p999_ms": o.p999,
                "cpu_ms_per_1000": o.cpu_ms_per_1000, "peak_rss_mb": o.peak_rss_mb,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "derived": {
            "efficiency": efficiency,
            "added_latency_at_1000": added,
            "kafka_ratio": kafka_ratio,
            "amqp_ratio": amqp_ratio,
            "unix_over_tcp": unix_ratios,
            "concurrency_for_ratios": top,
        },
    })
}

/// Whose CPU and memory a leg reports.
fn measured_process(leg: &str) -> Option<&'static str> {
    match leg {
        "L0" | "U0" => Some("HTTP client and load loop (the bench)"),
        "L1" | "A1" => Some("native responder"),
        "L2" | "U2" | "K2" | "A2" => Some("ricochet"),
        _ => None,
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": (memory * 10.0).round() / 10.0,
    })
}

fn print_table(args: &Args, results: &[LegResult], report: &Value) {
    println!();
    println!(
        "payload {} B, upstream delay {:?}, {:?} per measurement",
        args.payload, args.delay, args.duration
    );
    print!("{:<4}", "leg");
    for c in &args.concurrency {
        print!(" {:>11}", format!("c={c} req/s"));
    }
    for rate in &args.rates {
        print!(" {:>24}", format!("{rate}/s p50/p99/p99.9 ms"));
    }
    println!(
        " cpu ms/1k, rss MB (L0, U0: client and load loop; L1, A1: responder; L2, U2, K2, A2: ricochet)"
    );
    for r in results {
        print!("{:<4}", r.leg);
        for c in &r.closed {
            print!(" {:>11.0}", c.req_per_s);
        }
        for o in &r.open {
            print!(
                " {:>24}",
                format!("{:.2}/{:.2}/{:.2}", o.p50, o.p99, o.p999)
            );
        }
        let usage: Vec<String> = r
            .open
            .iter()
            .filter_map(|o| {
                Some(format!(
                    "{}/s: {:.1}, {:.1}",
                    o.rate, o.cpu_ms_per_1000?, o.peak_rss_mb?
                ))
            })
            .chain(r.closed.iter().filter_map(|c| {
                Some(format!(
                    "c={}: {:.1}, {:.1}",
                    c.concurrency, c.cpu_ms_per_1000?, c.peak_rss_mb?
                ))
            }))
            .collect();
        println!(" {}", usage.join("; "));
    }
    let top = args.concurrency.iter().copied().max().unwrap_or(128);
    println!();
    println!("CPU ms per 1,000 requests by process at c={top} (where the machine's time went):");
    for r in results {
        if let Some(c) = r.closed.iter().find(|c| c.concurrency == top) {
            let parts: Vec<String> = (c.by_process.iter())
                .map(|(name, cpu)| format!("{name} {cpu:.1}"))
                .collect();
            let total: f64 = c.by_process.iter().map(|(_, cpu)| cpu).sum();
            println!("{:<4} {} = {total:.1}", r.leg, parts.join(" + "));
        }
    }
    let derived = &report["derived"];
    println!();
    println!(
        "efficiency (L2 / (1/(1/L0 + 1/L1)) at c={}): {}",
        derived["concurrency_for_ratios"],
        fmt(&derived["efficiency"])
    );
    println!(
        "added latency at 1,000 req/s (L2 - L1): {}",
        derived["added_latency_at_1000"]
    );
    println!("Kafka ratio (K2 / K1): {}", fmt(&derived["kafka_ratio"]));
    println!("AMQP ratio (A2 / A1): {}", fmt(&derived["amqp_ratio"]));
    let unix = &derived["unix_over_tcp"];
    println!(
        "Unix socket over TCP (U0 / L0, U2 / L2): {}, {}",
        fmt(&unix["u0_over_l0"]),
        fmt(&unix["u2_over_l2"])
    );
}

fn fmt(value: &Value) -> String {
    value
        .as_f64()
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "-".into())
}
