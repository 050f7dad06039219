//! No secret in the log of a whole run, in `/metrics`, or in `ricochet check --print`:
//! ricochet runs with a NATS password (through its own nats-server, which requires it), an
//! https upstream with a client certificate, a Kafka route with a SASL password and an AMQP
//! route with a password (both brokers unreachable, so their connection errors are logged
//! too, where URLs and credentials tend to leak). And credentials written into `nats.url`:
//! used to connect (by `run` and `ricochet request`), and in no log line even at `trace`,
//! where async-nats logs every server it tries.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::process::Command;
use std::time::Duration;

use async_nats::ConnectOptions;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::brokers::OwnBroker;
use common::*;
use pki::{toml_path, Ca};

/// An https echo server that requires a client certificate `ca` signed.
async fn mtls_upstream(ca: &Ca) -> u16 {
    let server = ca.server("upstream");
    let acceptor = pki::acceptor(&server, Some(ca));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|request: Request<Incoming>| async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn no_secret_appears_in_the_log_the_metrics_or_check_print() {
    let nats_password = unique("natspw");
    let kafka_password = unique("kafkapw");
    let amqp_password = unique("amqppw");

    // NATS that requires the password.
    let dir = tempfile::tempdir().unwrap();
    let (_nats, nats_port) = own_nats(&format!("user: svc, password: \"{nats_password}\""));

    let ca = Ca::new("secrets");
    let upstream_port = mtls_upstream(&ca).await;
    let client = ca.client("ricochet");
    let key_pem = std::fs::read_to_string(&client.key_file).unwrap();
    // A line of the key's base64 body: what a leaked key would show.
    let key_line = key_pem.lines().nth(1).unwrap().to_string();

    let kafka_password_file = dir.path().join("kafka-password");
    std::fs::write(&kafka_password_file, format!("{kafka_password}\n")).unwrap();
    let admin = free_port();
    let subject = unique("secrets.");
    let toml = format!(
        r#"
[nats]
url = "nats://127.0.0.1:{nats_port}"
user = "svc"
connect_timeout = "1s"

[upstream]
base_url = "https://127.0.0.1:{upstream_port}"

[upstream.tls]
ca_file = {ca_file}
cert_file = {cert_file}
key_file = {key_file}

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "core"
subject = "{subject}"
path = "/echo"

[[routes]]
name = "kafka"
source = "kafka"
subject = "{kafka_topic}"
path = "/k"
[routes.kafka]
brokers = "127.0.0.1:{kafka_port}"
reply_topic = "replies"
security_protocol = "sasl_plaintext"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "svc"
sasl_password_file = {kafka_password_file}

[[routes]]
name = "amqp"
source = "amqp"
subject = "{amqp_queue}"
path = "/a"
[routes.amqp]
url = "amqp://127.0.0.1:{amqp_port}/%2f"
user = "svc"
"#,
        ca_file = toml_path(&ca.cert_file),
        cert_file = toml_path(&client.cert_file),
        key_file = toml_path(&client.key_file),
        kafka_topic = unique("secrets-requests-"),
        kafka_port = free_port(),
        kafka_password_file = toml_path(&kafka_password_file),
        amqp_queue = unique("secrets-"),
        amqp_port = free_port(),
    );
    // The NATS and AMQP passwords come from the environment.
    let env = [
        ("RICOCHET__NATS__PASSWORD", nats_password.as_str()),
        (
            "RICOCHET__ROUTES__2__AMQP__PASSWORD",
            amqp_password.as_str(),
        ),
    ];
    let config_file = dir.path().join("ricochet.toml");
    std::fs::write(&config_file, &toml).unwrap();

    let ricochet = Ricochet::spawn_with_env(&toml, admin, &env);
    let client = eventually_connect(nats_port, &nats_password).await;
    eventually(
        Duration::from_secs(15),
        "a reply through mutual TLS",
        || {
            let client = client.clone();
            let subject = subject.clone();
            async move {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request(subject, "hi".into()),
                )
                .await
                {
                    Ok(Ok(reply)) if reply.payload.as_ref() == b"hi" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    // Kafka and AMQP keep failing to connect meanwhile; give them time to log it.
    eventually(
        Duration::from_secs(15),
        "Kafka and AMQP errors logged",
        || async {
            let logs = ricochet.logs();
            holds(
                logs.contains("sasl_plaintext://")
                    && logs.contains("cannot set up the AMQP consumer"),
                logs,
            )
        },
    )
    .await;
    let metrics = ricochet.metrics().await;

    let mut print = Command::new(env!("CARGO_BIN_EXE_ricochet"));
    print
        .args(["check", "--print", "--config"])
        .arg(&config_file);
    for (name, value) in env {
        print.env(name, value);
    }
    let printed = print.output().unwrap();
    assert_eq!(
        printed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&printed.stdout),
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(printed.contains("sasl_username = \"svc\""), "{printed}");

    let logs = ricochet.logs();
    for secret in [&nats_password, &kafka_password, &amqp_password, &key_line] {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} in the log:\n{logs}"
        );
        assert!(!metrics.contains(secret.as_str()), "{secret} in /metrics");
        assert!(
            !printed.contains(secret.as_str()),
            "{secret} in check --print:\n{printed}"
        );
    }
}

async fn eventually_connect(port: u16, password: &str) -> async_nats::Client {
    eventually_connect_as("svc", port, password).await
}

/// ricochet on the NATS at `url` (credentials and all), with one core route on `subject`
/// to `upstream`'s `/echo`.
fn echo_config(url: &str, upstream: &Upstream, admin: u16, subject: &str) -> String {
    format!(
        r#"
[nats]
url = "{url}"
connect_timeout = "1s"

[upstream]
base_url = "{base_url}"

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "core"
subject = "{subject}"
path = "/echo"
"#,
        base_url = upstream.base_url(),
    )
}

/// A nats-server of the test's own, started, with this `authorization` block
/// (`user: u, password: p`, `token: t`); and its port.
fn own_nats(authorization: &str) -> (OwnBroker, u16) {
    let mut server = OwnBroker::nats_server(|_| format!("authorization {{ {authorization} }}"));
    server.start();
    let port = server.port();
    (server, port)
}

/// `ricochet request` at `url` with the log at trace: its exit code and all it printed.
fn request(url: &str, subject: &str) -> (Option<i32>, String) {
    request_with(url, subject, std::path::Path::new("/nonexistent.toml"))
}

/// Like [`request`], with `--config config`.
fn request_with(url: &str, subject: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ricochet"))
        .args(["request", subject, "--data", "ping", "--timeout", "5s"])
        .args(["--nats-url", url, "--config"])
        .arg(config)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    code_and_printed(&out)
}

#[tokio::test]
async fn credentials_in_nats_url_connect_and_never_reach_a_log_even_at_trace() {
    let password = unique("urlpw");
    let (_nats, port) = own_nats(&format!("user: u, password: \"{password}\""));
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let subject = unique("urlcreds.");
    let url = format!("nats://u:{password}@127.0.0.1:{port}");
    let toml = echo_config(&url, &upstream, admin, &subject);
    // RUST_LOG=trace: every dependency's every line, async-nats' "attempting connection"
    // with the server it tries among them.
    let ricochet = Ricochet::spawn_with_env(&toml, admin, &[("RUST_LOG", "trace")]);
    let client = eventually_connect_as("u", port, &password).await;
    answered(&client, &subject, "a reply through the URL's credentials").await;
    // `ricochet request` with the same URL connects too (off the runtime: the upstream
    // runs on it).
    let (code, printed) = tokio::task::spawn_blocking(move || request(&url, &subject))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("ping"), "{printed}");
    assert!(!printed.contains(&password), "{printed}");

    let logs = ricochet.logs();
    // The capture is at trace: async-nats' own connection lines are in it.
    assert!(logs.contains("attempting connection"), "{logs}");
    assert!(
        !logs.contains(&password),
        "the password in the log:\n{logs}"
    );
}

#[tokio::test]
async fn a_token_in_nats_url_connects_ricochet_request() {
    let token = unique("urltoken");
    let (_nats, port) = own_nats(&format!("token: \"{token}\""));
    let subject = unique("urltoken.");
    let client = eventually_connect_with(port, || ConnectOptions::with_token(token.clone())).await;
    let mut requests = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let responder = tokio::spawn(async move {
        use futures::StreamExt;
        let request = requests.next().await.unwrap();
        client
            .publish(request.reply.unwrap(), "pong".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    // The configuration names other credentials: the URL's replace them.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ricochet.toml");
    std::fs::write(
        &config,
        "[nats]\nuser = \"someone\"\npassword = \"else\"\n[upstream]\nbase_url = \"http://127.0.0.1:1\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/s\"\n",
    )
    .unwrap();
    let url = format!("nats://{token}@127.0.0.1:{port}");
    let (code, printed) =
        tokio::task::spawn_blocking(move || request_with(&url, &subject, &config))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("pong"), "{printed}");
    assert!(!printed.contains(&token), "{printed}");
    responder.await.unwrap();
}

async fn eventually_connect_as(user: &str, port: u16, password: &str) -> async_nats::Client {
    eventually_connect_with(port, || {
        ConnectOptions::with_user_and_password(user.into(), password.into())
    })
    .await
}

/// A client of the test's server at `port` made with `options`, once the server takes it.
async fn eventually_connect_with(
    port: u16,
    options: impl Fn() -> ConnectOptions,
) -> async_nats::Client {
    let url = format!("nats://127.0.0.1:{port}");
    eventually(
        Duration::from_secs(10),
        "the test's NATS client connected",
        || async { options().connect(&url).await.map_err(|e| e.to_string()) },
    )
    .await
}

/// A list of servers: the credentials written in one URL are the connection's, so a server
/// of the list written without them is reached with them (here the first server is down).
#[tokio::test]
async fn a_server_list_connects_with_the_credentials_one_of_its_urls_carries() {
    let password = unique("listpw");
    let (_nats, port) = own_nats(&format!("user: u, password: \"{password}\""));
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let subject = unique("urllist.");
    let down = free_port();
    let url = format!("nats://u:{password}@127.0.0.1:{down}, nats://127.0.0.1:{port}");
    let toml = echo_config(&url, &upstream, admin, &subject);
    let ricochet = Ricochet::spawn_with_env(&toml, admin, &[("RUST_LOG", "trace")]);
    let client = eventually_connect_as("u", port, &password).await;
    answered(&client, &subject, "a reply through the second server").await;
    let logs = ricochet.logs();
    assert!(
        !logs.contains(&password),
        "the password in the log:\n{logs}"
    );
}

/// Waits until a request on `subject` through `client` is answered with its own payload.
async fn answered(client: &async_nats::Client, subject: &str, what: &str) {
    eventually(Duration::from_secs(15), what, || async {
        let asked = client.request(subject.to_string(), "hi".into());
        match tokio::time::timeout(Duration::from_secs(2), asked).await {
            Ok(Ok(reply)) if reply.payload.as_ref() == b"hi" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
