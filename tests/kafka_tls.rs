//! Kafka over TLS: tansu (the local Kafka broker) does not serve TLS (0.6 takes `--cert`
//! and `--key` but never wraps a connection in them), so these tests run a TLS listener of
//! their own where the broker would be and check what librdkafka, as ricochet configures
//! it from `security_protocol` and the `ssl_*` keys, does there: it completes a handshake
//! when the CA is the right one (and presents its client certificate), and refuses a
//! server whose certificate another CA signed or that names another host.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

use common::*;
use pki::{toml_path, Ca, Issued};

/// What the listener saw of each TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handshake {
    /// Completed; with the number of client certificates presented.
    Done {
        client_certificates: usize,
    },
    Failed(String),
}

/// A TLS listener on a free port with `certificate`; `client_ca` requires a client
/// certificate that CA signed. Returns the port and what it saw.
async fn tls_listener(
    certificate: &Issued,
    client_ca: Option<&Ca>,
) -> (u16, Arc<Mutex<Vec<Handshake>>>) {
    let acceptor = pki::acceptor(certificate, client_ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let outcome = match acceptor.accept(stream).await {
                Ok(tls) => Handshake::Done {
                    client_certificates: tls.get_ref().1.peer_certificates().map_or(0, |c| c.len()),
                },
                Err(e) => Handshake::Failed(e.to_string()),
            };
            // The connection is dropped: no Kafka is spoken here.
            record.lock().unwrap().push(outcome);
        }
    });
    (port, seen)
}

/// ricochet with one Kafka route to the listener on `port`; `security` holds the
/// `[routes.kafka]` security keys.
fn start(port: u16, security: &str) -> Ricochet {
    let upstream_port = free_port();
    let admin = free_port();
    let topic = unique("tls-requests-");
    let toml = format!(
        r#"
[upstream]
base_url = "http://127.0.0.1:{upstream_port}"

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "kafka-tls"
source = "kafka"
subject = "{topic}"
path = "/k"

[routes.kafka]
brokers = "127.0.0.1:{port}"
reply_topic = "replies"
{security}
"#
    );
    Ricochet::spawn(&toml, admin)
}

async fn wait_for(
    seen: &Arc<Mutex<Vec<Handshake>>>,
    what: &str,
    want: impl Fn(&Handshake) -> bool,
) {
    eventually(Duration::from_secs(15), what, || async {
        let seen = seen.lock().unwrap().clone();
        holds(seen.iter().any(&want), format!("{seen:?}"))
    })
    .await;
}

#[tokio::test]
async fn librdkafka_handshakes_with_the_configured_ca_and_presents_the_client_certificate() {
    let ca = Ca::new("kafka");
    let (port, seen) = tls_listener(&ca.server("broker"), None).await;
    let security = format!(
        "security_protocol = \"ssl\"\nssl_ca_file = {}",
        toml_path(&ca.cert_file)
    );
    let _ricochet = start(port, &security);
    wait_for(&seen, "a TLS handshake trusting the test CA", |h| {
        matches!(h, Handshake::Done { .. })
    })
    .await;

    let (port, seen) = tls_listener(&ca.server("broker"), Some(&ca)).await;
    let client = ca.client("ricochet");
    let security = format!(
        "security_protocol = \"ssl\"\nssl_ca_file = {}\nssl_cert_file = {}\nssl_key_file = {}",
        toml_path(&ca.cert_file),
        toml_path(&client.cert_file),
        toml_path(&client.key_file)
    );
    let _ricochet = start(port, &security);
    wait_for(
        &seen,
        "a mutual TLS handshake",
        |h| matches!(h, Handshake::Done { client_certificates } if *client_certificates >= 1),
    )
    .await;
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("kafka-real");
    let other = Ca::new("kafka-other");
    let (port, seen) = tls_listener(&ca.server("broker"), None).await;
    let security = format!(
        "security_protocol = \"ssl\"\nssl_ca_file = {}",
        toml_path(&other.cert_file)
    );
    let ricochet = start(port, &security);
    wait_for(&seen, "a refused handshake", |h| {
        matches!(h, Handshake::Failed(_))
    })
    .await;
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|h| matches!(h, Handshake::Done { .. })),
        "{:?}",
        seen.lock().unwrap()
    );
    eventually(
        Duration::from_secs(10),
        "librdkafka's reason logged",
        || async {
            let logs = ricochet.logs();
            holds(logs.contains("certificate verify failed"), logs)
        },
    )
    .await;
}

#[tokio::test]
async fn the_broker_host_name_is_verified_unless_turned_off() {
    let ca = Ca::new("kafka-names");
    let wrong_name = ca.server_for("elsewhere", &["elsewhere.example"]);
    let (port, seen) = tls_listener(&wrong_name, None).await;
    let security = format!(
        "security_protocol = \"ssl\"\nssl_ca_file = {}",
        toml_path(&ca.cert_file)
    );
    let _ricochet = start(port, &security);
    wait_for(&seen, "a refused handshake", |h| {
        matches!(h, Handshake::Failed(_))
    })
    .await;
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|h| matches!(h, Handshake::Done { .. })),
        "{:?}",
        seen.lock().unwrap()
    );

    let (port, seen) = tls_listener(&wrong_name, None).await;
    let _ricochet = start(
        port,
        &format!("{security}\nssl_hostname_verification = false"),
    );
    wait_for(&seen, "a handshake without host name verification", |h| {
        matches!(h, Handshake::Done { .. })
    })
    .await;
}
