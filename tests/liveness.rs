//! Liveness tells the truth: when the machinery that serves messages is gone for good,
//! `/healthz` answers 503 with the reasons within seconds, so an orchestrator restarts
//! ricochet. The machinery is killed from inside, in this process: a generation of ricochet
//! runs here with its admin server, then its NATS client is closed under it (its connection
//! task ends and the core route's subscription with it), then a task panics, as async-nats
//! 0.51's connection task did on a CR in a header value.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ricochet::generation::{Generation, KeptSubscriptions, Nats};
use ricochet::telemetry::{liveness, HealthSlot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let ask = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_with_the_reasons_once_the_machinery_is_gone() {
    liveness::watch_panics();
    let metrics = ricochet::telemetry::metrics::install().unwrap();
    let slot = Arc::new(HealthSlot::default());
    let listen = "127.0.0.1:0".parse().unwrap();
    let admin = ricochet::telemetry::admin::serve(listen, metrics.clone(), slot.clone())
        .await
        .unwrap()
        .port();

    let upstream = Upstream::echo().await;
    let prefix = unique("live");
    let toml = format!(
        "[nats]\nurl = \"{}\"\n[upstream]\nbase_url = \"{}\"\n[[routes]]\nname = \"echo\"\nsubject = \"{prefix}.echo\"\npath = \"/echo\"\n",
        nats_url(),
        upstream.base_url()
    );
    let settings = ricochet::settings::load_str(&toml, Vec::new()).unwrap();
    let connected = ricochet::source::nats::connect(&settings.config.nats)
        .await
        .unwrap();
    let bridge = Nats::new(connected);
    let mut running = Generation::new(settings, Some(bridge.clone())).unwrap();
    slot.set(running.health.clone());
    running
        .start_core(&mut KeptSubscriptions::default())
        .await
        .unwrap();
    running.start_durable().await.unwrap();
    assert!(running.wait_ready(Duration::from_secs(10)).await);
    let caller = nats().await;
    let reply = caller
        .request(format!("{prefix}.echo"), "hi".into())
        .await
        .unwrap();
    assert_eq!(reply.payload, "hi");
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));

    // The client's connection task ends: every subscription of it ends too.
    bridge.client.drain().await.unwrap();
    let body = eventually(Duration::from_secs(5), "healthz 503", || async {
        let (status, text) = get(admin, "/healthz").await;
        let both = text.contains("core NATS route echo") && text.contains("connection task");
        holds(status == 503 && both, format!("{status} {text}"))?;
        Ok(text)
    })
    .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "failed: restart ricochet", "{body}");
    assert!(lines.contains(&"the intake of core NATS route echo ended while ricochet was running"));

    // A panic anywhere is a failure of its own, with where it happened.
    let task = tokio::spawn(async { panic!("injected: the machinery is gone") });
    assert!(task.await.unwrap_err().is_panic());
    let (status, text) = get(admin, "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        text.lines()
            .any(|l| l.contains("panicked at tests/liveness.rs:")
                && l.ends_with("injected: the machinery is gone")),
        "{text}"
    );

    let rendered = metrics.render();
    for (cause, count) in [
        ("intake_ended", 1.0),
        ("nats_client_ended", 1.0),
        ("panic", 1.0),
    ] {
        let labels = [format!("cause=\"{cause}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            metric(&rendered, "ricochet_liveness_failures_total", &labels),
            count,
            "{rendered}"
        );
    }
}
