//! Test harness: a scripted upstream HTTP server on port 0, the ricochet binary started as
//! a child process with a generated config, and helpers for NATS and the admin endpoints.
#![allow(dead_code)]

pub mod brokers;
pub mod faults;
pub mod jetstream;
pub mod raw_nats;
pub mod registry;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

// Not every test binary starts servers of its own.
#[allow(unused_imports)]
pub use brokers::{nats_server_bin, nats_url};

/// A finished command's exit code and everything it printed (stdout, then stderr).
pub fn code_and_printed(out: &std::process::Output) -> (Option<i32>, String) {
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

/// A subject prefix no other test run uses: a NUID, lowercased, then a counter of this
/// process. Lowercasing alone loses uniqueness: two NUIDs a case apart (a sequence 26 x 62^k
/// apart, which a few calls in between can make) became one name, and two concurrent tests
/// once shared an AMQP queue that way.
pub fn unique(prefix: &str) -> String {
    static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{}{n}", nuid::next().to_string().to_lowercase())
}

pub async fn nats() -> async_nats::Client {
    async_nats::connect(nats_url())
        .await
        .expect("NATS is running (see docs/development.md)")
}

/// Polls `check` every 10 ms until it answers `Ok`, and returns what it answered; panics
/// after `within`, naming what was awaited and, through `check`'s last answer, what was
/// seen instead.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    wait_until(within, check)
        .await
        .unwrap_or_else(|seen| panic!("waited {within:?} for {what}; last seen: {seen}"))
}

/// [`eventually`] for a wait whose timeout is an outcome rather than a failure (how long a
/// restarted server took, if it came back at all): `check`'s last `Err` after `within`.
pub async fn wait_until<T, F, Fut>(within: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `read` every `every` until two readings in a row agree, and returns that reading:
/// for a value that something already gone may still move for a moment (the offsets a
/// killed consumer's last commit moves), read once it stands still. Panics after `within`.
pub async fn steady<T, F, Fut>(every: Duration, within: Duration, what: &str, read: F) -> T
where
    T: PartialEq + std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let last = Mutex::new(read().await);
    let what = format!("{what} to stand still for {every:?}");
    eventually(within, &what, || async {
        tokio::time::sleep(every).await;
        let again = read().await;
        let mut last = last.lock().unwrap();
        if *last == again {
            return Ok(again);
        }
        let seen = format!("{:?}, then {again:?}", *last);
        *last = again;
        Err(seen)
    })
    .await
}

/// `Ok` when `condition`, else `Err(seen)`: the answer [`eventually`] expects.
pub fn holds(condition: bool, seen: impl std::fmt::Display) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(seen.to_string())
    }
}

/// Resident memory of process `pid`, in KiB (0 once it has gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gate a test opens once: whatever waits at it passes then, and whatever comes later
/// passes at once.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Returns once the gate is open.
    pub async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`: the wait ends only when the gate opens.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Reply = Response<Full<Bytes>>;
type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// How many requests a service is handling at once, and the most it handled at once.
#[derive(Debug, Clone, Default)]
pub struct Concurrency(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    active: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.0.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// The most requests handled at the same time so far.
    pub fn peak(&self) -> usize {
        self.0.peak.load(Ordering::SeqCst)
    }
}

/// A scripted HTTP service that records every request it gets and how many it handles at
/// once.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    concurrency: Concurrency,
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        Self::start_with(Concurrency::default(), handler).await
    }

    /// Like [`Self::start`], counting concurrency in `concurrency` (which a handler may read).
    pub async fn start_with<F, Fut>(concurrency: Concurrency, handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let counter = concurrency.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let record = record.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let record = record.clone();
                        let counter = counter.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method,
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            record.lock().unwrap().push(seen.clone());
                            counter.enter();
                            let reply = handler(seen).await;
                            counter.leave();
                            Ok::<_, Infallible>(reply)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            concurrency,
        }
    }

    /// The most requests this service handled at the same time.
    pub fn peak(&self) -> usize {
        self.concurrency.peak()
    }

    /// Answers 200 with the request body and an `x-echo-path` header.
    pub async fn echo() -> Self {
        Self::start(|seen| async move {
            Response::builder()
                .header("x-echo-path", seen.path_and_query.clone())
                .header("content-type", "text/plain")
                .body(Full::new(seen.body))
                .unwrap()
        })
        .await
    }

    /// Answers 200 with the request body and two response headers that are not ASCII:
    /// UTF-8 `café` (`x-name`) and the raw bytes ff fe (`x-raw`).
    pub async fn non_ascii_echo() -> Self {
        Self::start(|seen| async move {
            Response::builder()
                .header("x-name", &b"caf\xc3\xa9"[..])
                .header("x-raw", &b"\xff\xfe"[..])
                .body(Full::new(seen.body))
                .unwrap()
        })
        .await
    }

    /// Answers 200 with the request body after `delay`.
    pub async fn slow_echo(delay: Duration) -> Self {
        Self::start(move |seen| async move {
            tokio::time::sleep(delay).await;
            Response::new(Full::new(seen.body))
        })
        .await
    }

    /// Holds every call until the returned gate opens, then answers 200 "ok".
    pub async fn gated() -> (Self, Gate) {
        let gate = Gate::default();
        let held = gate.clone();
        let upstream = Self::start(move |_| {
            let held = held.clone();
            async move {
                held.passed().await;
                respond(200, "ok")
            }
        })
        .await;
        (upstream, gate)
    }

    /// Answers 503 "down" until the returned flag is set, then 200 "ok".
    pub async fn down_until_healthy() -> (Self, Arc<AtomicBool>) {
        let healthy = Arc::new(AtomicBool::new(false));
        let flag = healthy.clone();
        let upstream = Self::start(move |_| {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    respond(200, "ok")
                } else {
                    respond(503, "down")
                }
            }
        })
        .await;
        (upstream, healthy)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until the upstream has seen `count` requests, or panics after 10 s.
    pub async fn wait_for_calls(&self, count: usize) {
        self.wait_for_calls_within(count, Duration::from_secs(10))
            .await
    }

    pub async fn wait_for_calls_within(&self, count: usize, limit: Duration) {
        let what = format!("{count} calls at the upstream");
        eventually(limit, &what, || async {
            holds(self.calls() >= count, format!("{} calls", self.calls()))
        })
        .await;
    }
}

pub fn respond(status: u16, body: &'static str) -> Reply {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// A config with the given upstream, a free admin port and `routes` (TOML text).
pub fn config(base_url: &str, admin_port: u16, extra: &str) -> String {
    format!(
        r#"
[nats]
url = "{nats}"

[upstream]
base_url = "{base_url}"
request_timeout = "5s"

[admin]
listen = "127.0.0.1:{admin_port}"

{extra}
"#,
        nats = nats_url()
    )
}

/// The ricochet binary running as a child process.
pub struct Ricochet {
    child: Child,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

impl Ricochet {
    /// Starts ricochet with `toml` (which must use `admin_port`) and waits until `/readyz`.
    pub async fn start(toml: &str, admin_port: u16) -> Self {
        let ricochet = Self::spawn(toml, admin_port);
        ricochet.wait_ready().await;
        ricochet
    }

    /// Starts ricochet without waiting for readiness.
    pub fn spawn(toml: &str, admin_port: u16) -> Self {
        Self::spawn_with_env(toml, admin_port, &[])
    }

    /// Like [`Self::spawn`], with these environment variables set (`RICOCHET__...`).
    pub fn spawn_with_env(toml: &str, admin_port: u16, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ricochet.toml");
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("ricochet.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ricochet"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("RICOCHET_TEST_LOG").unwrap_or_else(|_| "ricochet=debug,info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            child,
            admin_port,
            dir,
        }
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ricochet.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ricochet.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(10), "ricochet ready", || async {
            match self.admin_get("/readyz").await {
                Ok((status, body)) => holds(status == 200, format!("{status} {body}")),
                Err(e) => Err(format!("{e}; logs:\n{}", self.logs())),
            }
        })
        .await;
    }

    /// Waits until `/readyz` answers 503 and returns why it says it is not ready.
    pub async fn wait_unready(&self, within: Duration) -> String {
        eventually(within, "readiness 503", || async {
            let (status, body) = self.admin_get("/readyz").await.unwrap();
            match status {
                503 => Ok(body),
                _ => Err(format!("{status} {body}")),
            }
        })
        .await
    }

    /// GET on the admin server: status code and body.
    pub async fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.unwrap().1
    }

    /// The configuration reloads counted with `result` (`applied`, `refused`).
    pub async fn reloads(&self, result: &str) -> f64 {
        let label = format!("result=\"{result}\"");
        metric(
            &self.metrics().await,
            "ricochet_config_reloads_total",
            &[&label],
        )
    }

    /// Waits until `count` reloads have been counted with `result`.
    pub async fn wait_for_reloads(&self, result: &str, count: f64) {
        let what = format!("{count} reloads {result}");
        eventually(Duration::from_secs(30), &what, || async {
            let seen = self.reloads(result).await;
            holds(seen == count, format!("{seen}; logs:\n{}", self.logs()))
        })
        .await;
    }

    /// Writes `toml` as the configuration file, sends SIGHUP and waits until the reload is
    /// counted with `result`.
    pub async fn reload(&self, toml: &str, result: &str) {
        let before = self.reloads(result).await;
        std::fs::write(self.config_path(), toml).unwrap();
        self.signal("-HUP");
        self.wait_for_reloads(result, before + 1.0).await;
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("ricochet did not exit; logs:\n{}", self.logs()))
            .unwrap()
    }
}

impl Drop for Ricochet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ricochet logs ---\n{}", self.logs());
        }
    }
}

/// Header value of a NATS reply, if present.
pub fn header(message: &async_nats::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// Sum of the samples of `name` whose labels contain every `label="value"` in `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Kafka helpers: the broker of [`brokers::kafka_brokers`], topics created per test.
pub mod kafka {
    use std::time::Duration;

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;

    pub fn brokers() -> String {
        super::brokers::kafka_brokers()
    }

    /// ricochet in front of `upstream` with `routes`, once `route` has partitions.
    pub async fn start(upstream: &super::Upstream, routes: &str, route: &str) -> super::Ricochet {
        let admin = super::free_port();
        let toml = super::config(&upstream.base_url(), admin, routes);
        let ricochet = super::Ricochet::start(&toml, admin).await;
        wait_assigned(&ricochet, route).await;
        ricochet
    }

    /// Waits until ricochet reports assigned partitions for `route`.
    pub async fn wait_assigned(ricochet: &super::Ricochet, route: &str) {
        let label = format!("route=\"{route}\"");
        super::eventually(Duration::from_secs(20), "partitions assigned", || async {
            let metrics = ricochet.metrics().await;
            let assigned = super::metric(&metrics, "ricochet_kafka_assigned_partitions", &[&label]);
            super::holds(assigned > 0.0, ricochet.logs())
        })
        .await;
    }

    /// Creates a fresh topic with `partitions` partitions.
    pub async fn topic(prefix: &str, partitions: i32) -> String {
        topic_on(&brokers(), prefix, partitions).await
    }

    /// Like [`topic`], on the cluster at `brokers`.
    pub async fn topic_on(brokers: &str, prefix: &str, partitions: i32) -> String {
        let name = super::unique(prefix);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap_or_else(|e| panic!("the Kafka broker at {brokers} answers: {e}"));
        for result in results {
            result.expect("topic created");
        }
        name
    }

    pub fn producer() -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "0")
            .create()
            .expect("producer")
    }

    /// Record headers from name-value pairs.
    pub fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
        pairs
            .iter()
            .fold(OwnedHeaders::new(), |headers, (name, value)| {
                headers.insert(Header {
                    key: name,
                    value: Some(*value),
                })
            })
    }

    pub async fn produce(
        producer: &FutureProducer,
        topic: &str,
        key: Option<&str>,
        pairs: &[(&str, &str)],
        payload: &[u8],
    ) {
        let mut record = FutureRecord::to(topic)
            .payload(payload)
            .headers(headers(pairs));
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("request produced");
    }

    /// A plain consumer of `topic` from the beginning, as any caller would use.
    pub fn consumer(topic: &str) -> StreamConsumer {
        consumer_on(&brokers(), topic)
    }

    /// Like [`consumer`], on the cluster at `brokers`.
    pub fn consumer_on(brokers: &str, topic: &str) -> StreamConsumer {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", super::unique("test-reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            // tansu answers a fetch only after fetch.wait.max.ms.
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        consumer
    }

    pub async fn next(consumer: &StreamConsumer, within: Duration) -> OwnedMessage {
        tokio::time::timeout(within, consumer.recv())
            .await
            .expect("a record in time")
            .expect("no consumer error")
            .detach()
    }

    pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
        message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    }

    pub fn key(message: &OwnedMessage) -> Option<String> {
        message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// A Kafka route on `topic`; `extra` adds route keys, `kafka_extra` keys of
    /// `[routes.kafka]`.
    pub fn route(name: &str, topic: &str, extra: &str, kafka_extra: &str) -> String {
        route_on(&brokers(), name, topic, extra, kafka_extra)
    }

    /// Like [`route`], on the cluster at `brokers` (librdkafka's mock cluster, say).
    pub fn route_on(
        brokers: &str,
        name: &str,
        topic: &str,
        extra: &str,
        kafka_extra: &str,
    ) -> String {
        format!(
            r#"
[[routes]]
name = "{name}"
source = "kafka"
subject = "{topic}"
method = "POST"
path = "/work"
{extra}

[routes.kafka]
brokers = "{brokers}"
retry_backoff = ["100ms"]
{kafka_extra}

[routes.kafka.consumer]
"fetch.wait.max.ms" = "10"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#
        )
    }
}

/// AMQP helpers: the RabbitMQ at `AMQP_URL` (default the local one, guest/guest), driven by
/// an independent client (`amqp_client.py`, Python's pika) so that a bug shared by
/// ricochet's publisher and consumer cannot hide.
pub mod amqp {
    use serde_json::{json, Value};

    pub fn url() -> String {
        std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    /// The connection of ricochet's route `route`, as `rabbitmqctl` names it (its pid).
    pub fn connection_of(route: &str) -> Option<String> {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["list_connections", "pid", "client_properties", "-q"])
            .output()
            .expect("rabbitmqctl runs");
        let wanted = format!("\"ricochet {route}\"");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().find(|l| l.contains(&wanted))?;
        line.split_whitespace().next().map(str::to_string)
    }

    /// Runs one command of `amqp_client.py` (see its doc) and returns its JSON answer.
    pub async fn client(command: Value) -> Value {
        client_at(&url(), command).await
    }

    /// [`client`] against the broker at `url`.
    pub async fn client_at(url: &str, mut command: Value) -> Value {
        command["url"] = json!(url);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/amqp_client.py");
        let output = tokio::process::Command::new("python3")
            .arg(script)
            .arg(command.to_string())
            .kill_on_drop(true)
            .output()
            .await
            .expect("python3 runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "amqp_client.py {} failed (RabbitMQ running? pika installed: `pip install pika`?):\n{stderr}",
            command["op"]
        );
        serde_json::from_slice(&output.stdout).expect("amqp_client.py prints JSON")
    }

    /// An AMQP route consuming `queue`; `extra` adds route keys, `amqp_extra` keys of
    /// `[routes.amqp]`.
    pub fn route(name: &str, subject: &str, queue: &str, extra: &str, amqp_extra: &str) -> String {
        route_at(&url(), name, subject, queue, extra, amqp_extra)
    }

    /// [`route`] on the broker at `url`.
    pub fn route_at(
        url: &str,
        name: &str,
        subject: &str,
        queue: &str,
        extra: &str,
        amqp_extra: &str,
    ) -> String {
        format!(
            r#"
[[routes]]
name = "{name}"
source = "amqp"
subject = "{subject}"
method = "POST"
path = "/work"
{extra}

[routes.amqp]
url = "{url}"
queue = "{queue}"
redelivery_backoff = ["100ms"]
{amqp_extra}
"#
        )
    }
}
