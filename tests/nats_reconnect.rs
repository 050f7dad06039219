//! Broker outages: this test runs its own nats-server on a free port (never the shared one),
//! starts ricochet before the server exists, then restarts the server under it.

mod common;

use std::time::Duration;

use common::brokers::OwnBroker;
use common::*;

/// A nats-server of the test's own, without JetStream, not started yet; and its port.
fn own_server() -> (OwnBroker, u16) {
    let server = OwnBroker::nats_server(|_| String::new());
    let port = server.port();
    (server, port)
}

/// A client of the test's own server at `port`, once it takes connections.
async fn connect(port: u16) -> async_nats::Client {
    let url = format!("nats://127.0.0.1:{port}");
    eventually(Duration::from_secs(5), "own nats-server", || async {
        async_nats::connect(&url).await.map_err(|e| e.to_string())
    })
    .await
}

/// ricochet on the test's own nats-server at `port`, with a `ping` route and `extra`.
fn own_server_config(port: u16, admin: u16, upstream: &Upstream, extra: &str) -> String {
    format!(
        "[nats]\nurl = \"nats://127.0.0.1:{port}\"\nconnect_timeout = \"500ms\"\n\n\
         [upstream]\nbase_url = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [[routes]]\nname = \"ping\"\nsubject = \"ping\"\npath = \"/ping\"\n\n{extra}",
        upstream.base_url()
    )
}

#[tokio::test]
async fn survives_a_missing_then_restarted_nats_server() {
    let upstream = Upstream::echo().await;
    let (mut server, port) = own_server();
    let admin = free_port();
    let toml = own_server_config(port, admin, &upstream, "");

    // No server yet: ricochet runs, keeps retrying, and says it is not ready.
    let ricochet = Ricochet::spawn(&toml, admin);
    eventually(
        Duration::from_secs(10),
        "alive while NATS is unreachable",
        || async {
            match ricochet.admin_get("/healthz").await {
                Ok((status, body)) => holds(status == 200, format!("{status} {body}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    let why = ricochet.wait_unready(Duration::from_secs(10)).await;
    assert!(why.contains("not connected"), "{why}");

    server.start();
    ricochet.wait_ready().await;
    let client = connect(port).await;
    let reply = client
        .request("ping", "one".into())
        .await
        .expect("reply after late start");
    assert_eq!(reply.payload.as_ref(), b"one");
    drop(client);

    // The server goes away and comes back on the same port.
    server.kill();
    ricochet.wait_unready(Duration::from_secs(10)).await;
    server.start();
    ricochet.wait_ready().await;
    let client = connect(port).await;
    // The re-subscription may trail readiness of a fresh client by a moment.
    let answered = eventually(
        Duration::from_secs(5),
        "a reply after the restart",
        || async { (client.request("ping", "two".into()).await).map_err(|e| e.to_string()) },
    )
    .await;
    assert_eq!(answered.payload.as_ref(), b"two");
    let logs = ricochet.logs();
    assert!(logs.contains("disconnected from NATS"), "{logs}");
    assert!(logs.matches("connected to NATS").count() >= 2, "{logs}");
    let metrics = ricochet.metrics().await;
    assert_eq!(metric(&metrics, "ricochet_nats_connected", &[]), 1.0);
    assert!(
        metric(
            &metrics,
            "ricochet_nats_connection_events_total",
            &["event=\"disconnected\""]
        ) >= 1.0
    );
}

/// With the NATS server gone and nothing in flight, SIGTERM ends the process at once: a
/// drain the server can never confirm is not waited for, nor a flush of replies that cannot
/// go anywhere (before: the whole grace period, then 5 s more for the flush).
#[tokio::test]
async fn sigterm_with_nats_unreachable_and_nothing_in_flight_exits_at_once() {
    let upstream = Upstream::echo().await;
    let (mut server, port) = own_server();
    let admin = free_port();
    let extra = "[shutdown]\ngrace_period = \"10s\"\n\n[[routes]]\nname = \"pong\"\nsubject = \"pong.>\"\npath = \"/pong\"\n";
    let toml = own_server_config(port, admin, &upstream, extra);
    server.start();
    let mut ricochet = Ricochet::spawn(&toml, admin);
    ricochet.wait_ready().await;
    let client = connect(port).await;
    let reply = client.request("ping", "one".into()).await.expect("reply");
    assert_eq!(reply.payload.as_ref(), b"one");
    drop(client);

    server.kill();
    let why = ricochet.wait_unready(Duration::from_secs(10)).await;
    assert!(why.contains("not connected"), "{why}");
    let asked = std::time::Instant::now();
    ricochet.signal("-TERM");
    // Well within the grace period (10 s): the original waited 10 s + 5 s.
    let status = ricochet.wait_exit(Duration::from_secs(9)).await;
    let took = asked.elapsed();
    println!("exit after SIGTERM with NATS unreachable took {took:?}");
    assert!(status.success(), "{status:?}; logs:\n{}", ricochet.logs());
    let logs = ricochet.logs();
    assert!(!logs.contains("grace period over"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}
