//! The HTTP client: HTTP/1.1 keep-alive connections to the one upstream service, one timeout
//! per call covering the request and the whole response body, a cap on the body size, and
//! no redirects followed.
//!
//! ricochet talks to exactly one service (`upstream.base_url`), so the pool is a stack of
//! idle connections to it, without the per-host bookkeeping of a general-purpose client
//! (which cost about a tenth of ricochet's instructions per request). Each connection is
//! hyper's HTTP/1 connection, driven by a task of its own.
//!
//! - A call takes the most recently used idle connection (the one least likely to have been
//!   closed by the service), else connects.
//! - A connection goes back to the pool only after its response body was read in full.
//! - A pooled connection that turns out closed before the request was written (the service
//!   closed it while idle) is dropped and the request goes on another: that is not a
//!   failed attempt.
//! - Idle connections are closed after `upstream.pool_idle_timeout`; at most
//!   `upstream.pool_max_idle` are kept.
//! - An `https` base URL wraps each new connection in TLS (`tls.rs`) before the HTTP/1
//!   handshake.
//! - A `unix://` base URL connects to the service's Unix socket instead (plain HTTP/1.1,
//!   `Host: localhost`); the pool, timeouts and errors are the same as over TCP: a socket
//!   that is missing or that nobody listens on is a [`ConnectError`] like a refused TCP
//!   connection, retried and counted by the breaker as one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tracing::{debug, info};

use super::error::{innermost, ConnectError, InvokeError};
use super::tls::{TlsError, UpstreamTls};
use crate::config::{BaseUrl, UpstreamConfig, SOCKET_HOST};

/// The service's answer, fully read.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pool: Arc<Pool>,
    max_response_size: usize,
}

#[derive(Debug)]
struct Pool {
    address: Address,
    host: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Idle>,
    /// `Some` for an `https` base URL.
    tls: Option<UpstreamTls>,
}

/// Where new connections go.
#[derive(Debug)]
enum Address {
    /// `host:port` of `upstream.base_url`, resolved at each connect (it may be a name).
    Tcp(String),
    /// The socket of a `unix://` base URL.
    Unix(PathBuf),
}

#[derive(Debug, Default)]
struct Idle {
    /// Most recently used last.
    connections: Vec<(SendRequest<Full<Bytes>>, Instant)>,
    /// Whether the task closing expired idle connections runs.
    reaper: bool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, TlsError> {
        // Validation checked the URL: http or https with a host, or unix with a socket path.
        // One it refused anyway (credentials in it, say) is used as it parses, credentials
        // never sent.
        let base = BaseUrl::parse(&config.base_url)
            .unwrap_or_else(|_| BaseUrl::Tcp(config.base_url.parse().unwrap_or_default()));
        let (address, host_header, tls) = match base {
            BaseUrl::Unix { socket, .. } => {
                if !socket.exists() {
                    // Not an error: the service may create it later (see config/validate.rs).
                    info!(socket = %socket.display(), "the upstream's socket does not exist yet: calls fail with upstream_unavailable until the service creates it");
                }
                (Address::Unix(socket), SOCKET_HOST.to_string(), None)
            }
            BaseUrl::Tcp(uri) => {
                let host = uri.host().unwrap_or("localhost");
                let https = uri.scheme_str() == Some("https");
                let tls = match https {
                    true => Some(UpstreamTls::new(&config.tls, host)?),
                    false => None,
                };
                // Host and port only: credentials in the URL never reach the service.
                let host_header = match uri.port_u16() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_string(),
                };
                let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
                (Address::Tcp(format!("{host}:{port}")), host_header, tls)
            }
        };
        Ok(Self {
            pool: Arc::new(Pool {
                address,
                host: HeaderValue::from_str(&host_header)
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                connect_timeout: config.connect_timeout,
                idle_timeout: config.pool_idle_timeout,
                max_idle: config.pool_max_idle,
                idle: Mutex::default(),
                tls,
            }),
            max_response_size: usize::try_from(config.max_response_size.bytes())
                .unwrap_or(usize::MAX),
        })
    }

    /// One attempt: send, read the body, all within `timeout`.
    pub async fn call(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, InvokeError> {
        tokio::time::timeout(timeout, self.call_inner(request))
            .await
            .unwrap_or(Err(InvokeError::Timeout(timeout)))
    }

    async fn call_inner(&self, request: Request<Bytes>) -> Result<UpstreamResponse, InvokeError> {
        let mut request = self.on_the_wire(request);
        let response = loop {
            let (mut connection, reused) = self.pool.checkout().await?;
            match connection.try_send_request(request).await {
                Ok(response) => break (response, connection),
                Err(mut e) => match e.take_message() {
                    // Closed while idle, before a byte of this request was written.
                    Some(unsent) if reused => {
                        debug!(error = %e.error(), "pooled connection was closed; using another");
                        request = unsent;
                    }
                    _ => return Err(InvokeError::Connection(innermost(e.error()))),
                },
            }
        };
        let (response, connection) = response;
        let (parts, body) = response.into_parts();
        let limit = self.max_response_size;
        let body = Limited::new(body, limit).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                InvokeError::ResponseTooLarge(limit as u64)
            } else {
                InvokeError::Connection(e.to_string())
            }
        })?;
        self.pool.checkin(connection);
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }

    /// Origin-form target (`/path?query`) and the `Host` header, as HTTP/1.1 sends them.
    fn on_the_wire(&self, request: Request<Bytes>) -> Request<Full<Bytes>> {
        let (mut parts, body) = request.into_parts();
        let mut target = http::uri::Parts::default();
        target.path_and_query = parts.uri.path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(target) {
            parts.uri = uri;
        }
        parts.headers.insert(HOST, self.pool.host.clone());
        Request::from_parts(parts, Full::new(body))
    }
}

impl Pool {
    /// An idle connection (and `true`), else a new one (and `false`).
    async fn checkout(self: &Arc<Self>) -> Result<(SendRequest<Full<Bytes>>, bool), InvokeError> {
        loop {
            let candidate = self.lock().connections.pop();
            let Some((mut connection, since)) = candidate else {
                break;
            };
            if connection.is_closed() || since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Ready as soon as its connection task has finished the previous exchange.
            if connection.ready().await.is_ok() {
                return Ok((connection, true));
            }
        }
        // Boxed: connecting (TCP, TLS, the HTTP/1 handshake) is a future of about 3.6 KB,
        // and every message in flight would carry room for it in its own future (the
        // pipeline's: 7,984 bytes instead of 4,464) though few messages ever connect.
        Ok((Box::pin(self.connect()).await?, false))
    }

    fn checkin(self: &Arc<Self>, connection: SendRequest<Full<Bytes>>) {
        if connection.is_closed() {
            return;
        }
        let start_reaper = {
            let mut idle = self.lock();
            if idle.connections.len() >= self.max_idle {
                return;
            }
            idle.connections.push((connection, Instant::now()));
            !std::mem::replace(&mut idle.reaper, true)
        };
        if start_reaper {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, InvokeError> {
        match &self.address {
            Address::Tcp(address) => self.connect_tcp(address).await,
            Address::Unix(socket) => {
                let stream =
                    tokio::time::timeout(self.connect_timeout, UnixStream::connect(socket))
                        .await
                        .map_err(|_| ConnectError::TimedOut(self.connect_timeout))?
                        .map_err(ConnectError::Socket)?;
                handshake(stream).await
            }
        }
    }

    /// TCP, then TLS for an `https` base URL.
    async fn connect_tcp(&self, address: &str) -> Result<SendRequest<Full<Bytes>>, InvokeError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ConnectError::TimedOut(self.connect_timeout))?
            .map_err(ConnectError::Tcp)?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        match &self.tls {
            None => handshake(stream).await,
            Some(tls) => {
                let stream = tokio::time::timeout(self.connect_timeout, tls.wrap(stream))
                    .await
                    .map_err(|_| ConnectError::TlsTimedOut(self.connect_timeout))?
                    .map_err(ConnectError::Tls)?;
                handshake(stream).await
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The HTTP/1 handshake on a (plain or TLS) stream; the connection runs on a task of its own.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, InvokeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Closes idle connections past the idle timeout, until the pool is gone.
async fn reap(pool: Weak<Pool>) {
    loop {
        let Some(period) = pool.upgrade().map(|p| (p.idle_timeout / 2).max(MIN_REAP)) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.idle_timeout;
        // Dropping a connection's sender closes the connection.
        pool.lock()
            .connections
            .retain(|(c, since)| !c.is_closed() && since.elapsed() < timeout);
    }
}

const MIN_REAP: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A service that answers every GET with "ok" and keeps the connection open unless
    /// `close_after` is set, when it closes the connection silently (no `Connection:
    /// close`) that long after each answer. Counts connections accepted and ended.
    struct Service {
        port: u16,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    }

    async fn service(close_after: Option<Duration>) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                break;
                            }
                            if let Some(delay) = close_after {
                                tokio::time::sleep(delay).await;
                                e.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Service {
            port,
            accepted,
            ended,
        }
    }

    fn upstream(port: u16, extra: &str) -> Upstream {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:{port}\"\n{extra}\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/\"\n"
        );
        let config = crate::settings::load_str(&text, Vec::new()).unwrap().config;
        Upstream::new(&config.upstream).unwrap()
    }

    fn get(port: u16) -> Request<Bytes> {
        Request::get(format!("http://127.0.0.1:{port}/x"))
            .body(Bytes::new())
            .unwrap()
    }

    async fn call(upstream: &Upstream, port: u16) -> UpstreamResponse {
        upstream
            .call(get(port), Duration::from_secs(5))
            .await
            .unwrap()
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn sequential_calls_share_one_connection() {
        let service = service(None).await;
        let upstream = upstream(service.port, "");
        for _ in 0..5 {
            let response = call(&upstream, service.port).await;
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.body.as_ref(), b"ok");
        }
        assert_eq!(service.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_service_closed_while_idle_is_not_used() {
        let service = service(Some(Duration::from_millis(20))).await;
        let upstream = upstream(service.port, "");
        call(&upstream, service.port).await;
        eventually("the service closes its connection", || {
            service.ended.load(Ordering::SeqCst) == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Goes on a new connection instead of failing on the closed one.
        assert_eq!(call(&upstream, service.port).await.body.as_ref(), b"ok");
        assert_eq!(service.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let service = service(None).await;
        let upstream = upstream(service.port, "pool_idle_timeout = \"200ms\"");
        call(&upstream, service.port).await;
        eventually("the idle connection is closed", || {
            service.ended.load(Ordering::SeqCst) == 1
        })
        .await;
        call(&upstream, service.port).await;
        assert_eq!(service.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_pool_max_idle_connections_stay_open() {
        let service = service(None).await;
        let upstream = upstream(service.port, "pool_max_idle = 1");
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (upstream, port) = (upstream.clone(), service.port);
                tokio::spawn(async move { call(&upstream, port).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        let accepted = service.accepted.load(Ordering::SeqCst);
        assert!(accepted > 1, "the calls ran one after another");
        eventually("connections beyond pool_max_idle are closed", || {
            service.ended.load(Ordering::SeqCst) == accepted - 1
        })
        .await;
    }

    #[tokio::test]
    async fn the_service_sees_origin_form_and_host_without_credentials() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                head.extend_from_slice(&chunk[..n]);
            }
            let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
            stream.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:{port}/api\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/\"\n"
        );
        let mut config = crate::settings::load_str(&text, Vec::new()).unwrap().config;
        // `check` refuses credentials in base_url; were they there anyway, never sent.
        config.upstream.base_url = format!("http://user:secret@127.0.0.1:{port}/api");
        let upstream = Upstream::new(&config.upstream).unwrap();
        let request = Request::get(format!("http://127.0.0.1:{port}/api/x?y=1"))
            .body(Bytes::new())
            .unwrap();
        let response = upstream
            .call(request, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::NO_CONTENT);
        let head = seen.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /api/x?y=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(!head.contains("secret"), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let upstream = upstream(port, "");
        match upstream.call(get(port), Duration::from_secs(5)).await {
            Err(InvokeError::Connect(ConnectError::Tcp(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn on_socket(base_url: &str) -> Upstream {
        let text = format!(
            "[upstream]\nbase_url = \"{base_url}\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/\"\n"
        );
        let config = crate::settings::load_str(&text, Vec::new()).unwrap().config;
        Upstream::new(&config.upstream).unwrap()
    }

    #[tokio::test]
    async fn over_a_unix_socket_the_service_sees_localhost_and_one_kept_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("svc.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let seen = tokio::spawn(async move {
            // One connection for both calls: the pool keeps it as over TCP.
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 1024];
            while heads.len() < 2 {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection was closed");
                buffer.extend_from_slice(&chunk[..n]);
                while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    heads.push(String::from_utf8(buffer.drain(..end + 4).collect()).unwrap());
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    stream.write_all(answer).await.unwrap();
                }
            }
            heads
        });
        let upstream = on_socket(&format!("unix://{}:/api", socket.display()));
        for _ in 0..2 {
            let request = Request::get("http://localhost/api/x?y=1")
                .body(Bytes::new())
                .unwrap();
            let response = upstream
                .call(request, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.body.as_ref(), b"ok");
        }
        for head in seen.await.unwrap() {
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("get /api/x?y=1 http/1.1\r\n"), "{head}");
            assert!(head.contains("host: localhost\r\n"), "{head}");
        }
    }

    #[tokio::test]
    async fn a_missing_or_dead_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("svc.sock");
        let upstream = on_socket(&format!("unix://{}", socket.display()));
        let call = || {
            let request = Request::get("http://localhost/x")
                .body(Bytes::new())
                .unwrap();
            upstream.call(request, Duration::from_secs(5))
        };
        match call().await {
            Err(InvokeError::Connect(ConnectError::Socket(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}")
            }
            other => panic!("{other:?}"),
        }
        // A socket file left behind by a service that is gone: nobody listens.
        drop(tokio::net::UnixListener::bind(&socket).unwrap());
        match call().await {
            Err(InvokeError::Connect(ConnectError::Socket(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
