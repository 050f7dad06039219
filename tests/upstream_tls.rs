//! An `https` upstream: a TLS server in the test (tokio-rustls, certificates made by the
//! test) called through ricochet, with and without a client certificate it requires, and
//! with a certificate for another host name.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::*;
use pki::{toml_path, Ca, Issued};

/// An https server on a free port that echoes the request body; `client_ca` makes it
/// require a client certificate signed by that CA.
async fn https_echo(certificate: &Issued, client_ca: Option<&Ca>) -> u16 {
    let acceptor = pki::acceptor(certificate, client_ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake (no or wrong client certificate) ends here.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|request: Request<Incoming>| async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                        [b"tls:".as_slice(), &body].concat(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// ricochet with one core route to `base_url`, `tls` the keys of `[upstream.tls]`.
async fn ricochet(base_url: &str, tls: &str) -> (Ricochet, String) {
    let admin = free_port();
    let subject = unique("https.");
    let toml = format!(
        r#"
[nats]
url = "{nats}"

[upstream]
base_url = "{base_url}"
connect_timeout = "1s"

[upstream.tls]
{tls}

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "secure"
subject = "{subject}"
path = "/secure"
[routes.retry]
max_attempts = 1
"#,
        nats = nats_url()
    );
    (Ricochet::start(&toml, admin).await, subject)
}

async fn request(subject: &str) -> async_nats::Message {
    nats()
        .await
        .request(subject.to_string(), "hello".into())
        .await
        .expect("a reply")
}

#[tokio::test]
async fn an_https_upstream_with_a_custom_ca_is_called() {
    let ca = Ca::new("upstream");
    let port = https_echo(&ca.server("upstream"), None).await;
    let tls = format!("ca_file = {}", toml_path(&ca.cert_file));
    for host in ["127.0.0.1", "localhost"] {
        let (_ricochet, subject) = ricochet(&format!("https://{host}:{port}"), &tls).await;
        let reply = request(&subject).await;
        assert_eq!(reply.payload.as_ref(), b"tls:hello", "{reply:?}");
    }
}

#[tokio::test]
async fn a_client_certificate_the_upstream_requires_works_and_a_missing_one_is_a_502() {
    let ca = Ca::new("upstream-mtls");
    let port = https_echo(&ca.server("upstream"), Some(&ca)).await;
    let base_url = format!("https://127.0.0.1:{port}");
    let client = ca.client("ricochet");
    let tls = format!(
        "ca_file = {}\ncert_file = {}\nkey_file = {}",
        toml_path(&ca.cert_file),
        toml_path(&client.cert_file),
        toml_path(&client.key_file)
    );
    let (_with, subject) = ricochet(&base_url, &tls).await;
    assert_eq!(request(&subject).await.payload.as_ref(), b"tls:hello");

    let (without, subject) = ricochet(
        &base_url,
        &format!("ca_file = {}", toml_path(&ca.cert_file)),
    )
    .await;
    let reply = request(&subject).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("502"),
        "{reply:?}"
    );
    let body = String::from_utf8_lossy(&reply.payload).to_string();
    assert!(body.contains("CertificateRequired"), "{body}");
    eventually(Duration::from_secs(5), "the cause logged", || async {
        let logs = without.logs();
        holds(logs.contains("CertificateRequired"), logs)
    })
    .await;
}

#[tokio::test]
async fn a_certificate_for_another_host_or_from_another_ca_is_refused() {
    let ca = Ca::new("upstream-names");
    let port = https_echo(&ca.server_for("elsewhere", &["elsewhere.example"]), None).await;
    let tls = format!("ca_file = {}", toml_path(&ca.cert_file));
    let (_ricochet, subject) = ricochet(&format!("https://127.0.0.1:{port}"), &tls).await;
    let reply = request(&subject).await;
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code").as_deref(),
        Some("502")
    );
    let body = String::from_utf8_lossy(&reply.payload).to_string();
    assert!(body.contains("not valid for name"), "{body}");

    let other = Ca::new("upstream-other");
    let port = https_echo(&ca.server("upstream"), None).await;
    let tls = format!("ca_file = {}", toml_path(&other.cert_file));
    let (_ricochet, subject) = ricochet(&format!("https://127.0.0.1:{port}"), &tls).await;
    let body = String::from_utf8_lossy(&request(&subject).await.payload).to_string();
    assert!(body.contains("UnknownIssuer"), "{body}");
}
