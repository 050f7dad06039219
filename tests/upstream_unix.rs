//! A service on a Unix domain socket (`upstream.base_url = "unix:///path.sock[:/base]"`):
//! a small HTTP/1.1 service on a tokio `UnixListener` in a temporary directory, called
//! through ricochet by NATS requests; the service restarted on the same path; the socket
//! missing; and `ricochet check` on the URL's forms.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

use common::*;

/// An HTTP/1.1 service on a Unix socket that records every request and echoes its body
/// with `x-echo-path` and `x-generation` headers. Dropping it stops it like a killed
/// process: its listener and every open connection close (the socket file stays behind).
struct SocketService {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SocketService {
    /// Listens on `path` (removing a socket file a previous service left there).
    fn start(path: &Path, generation: &'static str) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it aborts every connection too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap();
                        let path = (parts.uri.path_and_query())
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        record.lock().unwrap().push(Seen {
                            method: parts.method,
                            path_and_query: path.clone(),
                            headers: parts.headers,
                            body: body.clone(),
                        });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-echo-path", path)
                                .header("x-generation", generation)
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for SocketService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// ricochet with one core route `{prefix}.orders.{id}.update` -> `PUT /orders/{id}?full=1`
/// on `base_url`; `extra` adds route keys.
async fn ricochet(base_url: &str, extra: &str) -> (Ricochet, String) {
    let admin = free_port();
    let prefix = unique("unix.");
    let routes = format!(
        "[[routes]]\nname = \"orders\"\nsubject = \"{prefix}.orders.{{id}}.update\"\nmethod = \"PUT\"\npath = \"/orders/{{id}}?full=1\"\n{extra}\n"
    );
    let toml = config(base_url, admin, &routes);
    (Ricochet::start(&toml, admin).await, prefix)
}

async fn request(subject: String, headers: HeaderMap, body: &'static str) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        nats()
            .await
            .request_with_headers(subject, headers, Bytes::from_static(body.as_bytes())),
    )
    .await
    .expect("a reply within 10 s")
    .expect("a reply")
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("orders.sock")
}

#[tokio::test]
async fn a_request_goes_through_the_socket_with_method_path_query_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let service = SocketService::start(&socket, "1");
    let (ricochet, prefix) = ricochet(&format!("unix://{}:/api", socket.display()), "").await;

    let mut headers = HeaderMap::new();
    headers.insert("X-Custom", "abc");
    headers.insert("Content-Type", "application/json");
    headers.insert("Host", "evil.example");
    let reply = request(
        format!("{prefix}.orders.a-42.update"),
        headers,
        "{\"qty\":2}",
    )
    .await;

    assert_eq!(reply.payload.as_ref(), b"{\"qty\":2}", "{reply:?}");
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(
        header(&reply, "x-echo-path").as_deref(),
        Some("/api/orders/a-42?full=1")
    );
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, http::Method::PUT);
    assert_eq!(seen.path_and_query, "/api/orders/a-42?full=1");
    assert_eq!(
        seen.headers["host"], "localhost",
        "never the message's Host"
    );
    assert_eq!(seen.headers["x-custom"], "abc");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.body.as_ref(), b"{\"qty\":2}");

    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ricochet_http_responses_total",
            &["route=\"orders\"", "class=\"2xx\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_service_restarted_on_the_same_path_is_called_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let first = SocketService::start(&socket, "1");
    // One attempt: the restart must not need a retry to be noticed.
    let (_ricochet, prefix) = ricochet(
        &format!("unix://{}", socket.display()),
        "[routes.retry]\nmax_attempts = 1\n",
    )
    .await;
    let subject = format!("{prefix}.orders.1.update");
    for _ in 0..3 {
        let reply = request(subject.clone(), HeaderMap::new(), "a").await;
        assert_eq!(header(&reply, "x-generation").as_deref(), Some("1"));
    }
    assert_eq!(first.seen().len(), 3);

    // The service dies (its connections with it) and a new one binds the same path.
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = SocketService::start(&socket, "2");
    for _ in 0..3 {
        let reply = request(subject.clone(), HeaderMap::new(), "b").await;
        assert_eq!(
            header(&reply, "x-generation").as_deref(),
            Some("2"),
            "{reply:?}"
        );
        assert_eq!(reply.payload.as_ref(), b"b");
    }
    assert_eq!(second.seen().len(), 3);
}

#[tokio::test]
async fn a_missing_socket_is_a_retried_502_upstream_unavailable_without_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let retries = "[routes.retry]\nmax_attempts = 3\ninitial_interval = \"10ms\"\nmax_interval = \"20ms\"\njitter = 0.0\n";
    let (ricochet, prefix) = ricochet(&format!("unix://{}:/api", socket.display()), retries).await;
    let subject = format!("{prefix}.orders.1.update");

    let reply = request(subject.clone(), HeaderMap::new(), "a").await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("502"),
        "{reply:?}"
    );
    assert_eq!(
        header(&reply, "Ricochet-Error").as_deref(),
        Some("upstream_unavailable")
    );
    // Retried like a refused TCP connect: nothing was sent, so even a PUT may go again.
    assert_eq!(header(&reply, "Ricochet-Attempts").as_deref(), Some("3"));
    let body = String::from_utf8_lossy(&reply.payload).to_string();
    assert!(body.contains("cannot be reached"), "{body}");
    // The caller learns that the service is unreachable, not where ricochet looked.
    let dir_name = dir.path().to_string_lossy().to_string();
    assert!(
        !body.contains(&dir_name) && !body.contains("orders.sock"),
        "{body}"
    );
    for (name, value) in reply.headers.iter().flat_map(|h| h.iter()) {
        for value in value {
            assert!(
                !value.as_str().contains("orders.sock"),
                "{name:?}: {value:?}"
            );
        }
    }

    // The service comes up: the next request reaches it.
    let service = SocketService::start(&socket, "1");
    let reply = request(subject, HeaderMap::new(), "b").await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));
    assert_eq!(service.seen()[0].path_and_query, "/api/orders/1?full=1");
    let metrics = ricochet.metrics().await;
    assert_eq!(
        metric(&metrics, "ricochet_retries_total", &["route=\"orders\""]),
        2.0
    );
}

/// `ricochet check` on a configuration whose upstream is `base_url`.
fn check(base_url: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ricochet.toml");
    let toml = format!(
        "[upstream]\nbase_url = \"{base_url}\"\n\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/s\"\n"
    );
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ricochet"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    code_and_printed(&out)
}

#[tokio::test]
async fn check_accepts_the_socket_forms_and_refuses_malformed_ones_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    // A socket that does not exist yet: the service may create it after ricochet starts.
    for url in [
        format!("unix://{}", socket.display()),
        format!("unix://{}:/api/v1", socket.display()),
    ] {
        let (code, printed) = check(&url);
        assert_eq!(code, Some(0), "{url}: {printed}");
    }
    let _service = SocketService::start(&socket, "1");
    let (code, printed) = check(&format!("unix://{}:/api", socket.display()));
    assert_eq!(code, Some(0), "{printed}");

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "").unwrap();
    let not_a_socket = format!("unix://{}", file.display());
    let cases = [
        ("unix://run/orders.sock", "unix:// and its absolute path"),
        ("unix:/run/orders.sock", "unix:// and its absolute path"),
        ("unix:///run/orders.sock:api", "begins with '/'"),
        ("unix:///run/orders.sock?x=1", "must not have a query"),
        (not_a_socket.as_str(), "exists and is not a socket"),
        ("ftp://h", "must start with http://, https:// or unix://"),
    ];
    for (url, expected) in cases {
        let (code, printed) = check(url);
        assert_eq!(code, Some(64), "{url}: {printed}");
        assert!(printed.contains("upstream.base_url: "), "{url}: {printed}");
        assert!(printed.contains(expected), "{url}: {printed}");
    }
}
