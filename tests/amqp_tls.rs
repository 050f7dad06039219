//! AMQP over TLS: the local RabbitMQ has no TLS listener, so this test puts a TLS proxy of
//! its own (tokio-rustls, certificates made by the test) in front of it and points an
//! `amqps://` route with `amqp.tls.ca_file` at the proxy. Requests sent to RabbitMQ
//! directly (by the independent pika client) are answered through ricochet's TLS
//! connection; with another CA, ricochet never connects.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use common::amqp::client;
use common::*;
use pki::{toml_path, Ca};

/// A TLS proxy on a free port to RabbitMQ at 127.0.0.1:5672; counts handshakes completed.
async fn tls_proxy(ca: &Ca) -> (u16, Arc<AtomicUsize>) {
    let server = ca.server("rabbitmq");
    let acceptor = pki::acceptor(&server, None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (port, handshakes)
}

fn route(queue: &str, port: u16, ca_file: &std::path::Path) -> String {
    format!(
        r#"
[[routes]]
name = "amqps"
source = "amqp"
subject = "{queue}"
path = "/work"

[routes.amqp]
url = "amqps://127.0.0.1:{port}/%2f"
user = "guest"
password = "guest"
queue = "{queue}"
redelivery_backoff = ["100ms"]

[routes.amqp.tls]
ca_file = {ca_file}
"#,
        ca_file = toml_path(ca_file)
    )
}

#[tokio::test]
async fn an_amqps_route_with_a_custom_ca_is_served_through_tls() {
    let ca = Ca::new("amqp");
    let (port, handshakes) = tls_proxy(&ca).await;
    let queue = unique("ricochet.test.amqps.");
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let toml = config(
        &upstream.base_url(),
        admin,
        &route(&queue, port, &ca.cert_file),
    );
    let _ricochet = Ricochet::start(&toml, admin).await;
    assert!(handshakes.load(Ordering::SeqCst) >= 1);

    let answer = client(json!({
        "op": "rpc", "routing_key": queue, "count": 1, "timeout": 30, "body": "over amqps"
    }))
    .await;
    assert_eq!(answer["answered"], 1, "{answer}");
    assert_eq!(answer["replies"][0]["body"], "over amqps");
    client(json!({"op": "delete", "queues": [queue, format!("{queue}.ricochet-retry.100ms")], "exchanges": []})).await;
}

#[tokio::test]
async fn an_amqps_server_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("amqp-real");
    let other = Ca::new("amqp-other");
    let (port, handshakes) = tls_proxy(&ca).await;
    let queue = unique("ricochet.test.amqps-bad.");
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let toml = config(
        &upstream.base_url(),
        admin,
        &route(&queue, port, &other.cert_file),
    );
    let ricochet = Ricochet::spawn(&toml, admin);
    eventually(Duration::from_secs(10), "the refusal logged", || async {
        let logs = ricochet.logs();
        holds(
            logs.contains("cannot set up the AMQP consumer") && logs.contains("UnknownIssuer"),
            logs,
        )
    })
    .await;
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    let (status, _) = ricochet.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 503);
}
