//! Reloading the configuration of a running ricochet: SIGHUP and the watched file. Under
//! load, a reload applies a new rate limit and a new route, and every request sent across
//! it is answered exactly once (core NATS and JetStream); an invalid file is refused with
//! every problem and the running configuration goes on.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use common::jetstream::Stream;
use common::*;
use futures::StreamExt;

/// Asks `subject` and asserts the service's 200 came back; the reply.
async fn answered(
    client: &async_nats::Client,
    subject: String,
    payload: &'static str,
) -> async_nats::Message {
    let reply = client
        .request(subject.clone(), payload.into())
        .await
        .unwrap_or_else(|e| panic!("{subject} answers: {e}"));
    assert_eq!(
        header(&reply, "Ricochet-Status").as_deref(),
        Some("200"),
        "{subject}"
    );
    reply
}

/// A core NATS route answering `{prefix}.{name}.{id}` with POST /{name}/{id}.
fn core_route(prefix: &str, name: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsubject = \"{prefix}.{name}.{{id}}\"\nmethod = \"POST\"\npath = \"/{name}/{{id}}\"\n{extra}\n"
    )
}

/// A JetStream route on `stream`, replying where each message's `reply-to` header says.
fn jetstream_route(prefix: &str, stream: &str) -> String {
    format!(
        r#"
[[routes]]
name = "js"
source = "jetstream"
subject = "{prefix}.js.{{id}}"
method = "POST"
path = "/js/{{id}}"

[routes.jetstream]
stream = "{stream}"
durable = "reload-test"
ack_wait = "5s"
"#
    )
}

/// Rate limited to 20 messages per second, refusing the excess with 429.
const TIGHT: &str =
    "[routes.rate_limit]\nmessages_per_second = 20\nburst_messages = 20\nmode = \"reject\"\n";
/// The same limit raised far above the load.
const LOOSE: &str =
    "[routes.rate_limit]\nmessages_per_second = 100000\nburst_messages = 100000\nmode = \"reject\"\n";

/// What the callers of the core route got, by the phase they sent in.
#[derive(Default)]
struct Answers {
    /// Status of each request by its id.
    status: Mutex<BTreeMap<u64, String>>,
    /// Requests that got no answer at all (timeout, no responders), with the error.
    unanswered: Mutex<Vec<(u64, String)>>,
}

/// Eight callers asking `{subject}.{id}` with fresh ids until `stop`, `pause` between
/// requests; each one's answer, or its absence, goes to `answers`.
fn spawn_callers(
    client: &async_nats::Client,
    subject: String,
    pause: Duration,
    answers: &Arc<Answers>,
    next_id: &Arc<AtomicUsize>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|_| {
            let (client, answers, next_id, stop, subject) = (
                client.clone(),
                answers.clone(),
                next_id.clone(),
                stop.clone(),
                subject.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let id = next_id.fetch_add(1, Ordering::SeqCst) as u64;
                    let request = client.request(format!("{subject}.{id}"), id.to_string().into());
                    let answer = tokio::time::timeout(Duration::from_secs(10), request).await;
                    match answer {
                        Ok(Ok(reply)) => {
                            let status = header(&reply, "Ricochet-Status").unwrap_or_default();
                            answers.status.lock().unwrap().insert(id, status);
                        }
                        Ok(Err(e)) => {
                            (answers.unanswered.lock().unwrap()).push((id, e.to_string()))
                        }
                        Err(_) => (answers.unanswered.lock().unwrap()).push((id, "timeout".into())),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn a_reload_under_load_applies_a_new_rate_limit_and_route_and_answers_every_request_once() {
    let prefix = unique("reload");
    let upstream = Upstream::slow_echo(Duration::from_millis(20)).await;
    let client = nats().await;
    let stream = Stream::create_with(jetstream::new(client.clone()), &prefix, |config| {
        config.subjects = vec![format!("{prefix}.js.>")];
    })
    .await;
    let (js, stream_name) = (&stream.js, &stream.name);
    let replies_subject = format!("{prefix}.replies");
    let mut js_replies = client.subscribe(replies_subject.clone()).await.unwrap();
    client.flush().await.unwrap();

    let admin = free_port();
    let routes = |limit: &str, added: bool| {
        let mut routes = core_route(&prefix, "orders", limit);
        routes.push_str(&jetstream_route(&prefix, stream_name));
        if added {
            routes.push_str(&core_route(&prefix, "added", ""));
        }
        routes
    };
    let ricochet = Ricochet::start(
        &config(&upstream.base_url(), admin, &routes(TIGHT, false)),
        admin,
    )
    .await;
    // Not there yet: nobody answers the route to be added.
    let before = client
        .request(format!("{prefix}.added.0"), Bytes::new())
        .await;
    assert!(before.is_err(), "no route answers yet: {before:?}");

    // Load: 8 callers on the core route, one publisher on the stream, until told to stop.
    let answers = Arc::new(Answers::default());
    let next_id = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers = spawn_callers(
        &client,
        format!("{prefix}.orders"),
        Duration::from_millis(10),
        &answers,
        &next_id,
        &stop,
    );
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (js, prefix, replies_subject, published, stop) = (
            js.clone(),
            prefix.clone(),
            replies_subject.clone(),
            published.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let id = published.load(Ordering::SeqCst);
                let mut headers = HeaderMap::new();
                headers.insert("reply-to", replies_subject.as_str());
                headers.insert("correlation-id", id.to_string().as_str());
                let subject = format!("{prefix}.js.{id}");
                let ack = js
                    .publish_with_headers(subject, headers, id.to_string().into())
                    .await
                    .unwrap();
                ack.await.unwrap();
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Phase 1: the tight limit refuses most of the core requests.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused_before = (answers.status.lock().unwrap().values())
        .filter(|s| *s == "429")
        .count();
    assert!(
        refused_before > 0,
        "the 20/s limit refuses some of the load"
    );

    // The reload, under load: a looser limit and one more route.
    let looser = config(&upstream.base_url(), admin, &routes(LOOSE, true));
    ricochet.reload(&looser, "applied").await;
    let first_after = next_id.load(Ordering::SeqCst) as u64 + 8;

    // Phase 2: the new limit and the new route are in force.
    answered(&client, format!("{prefix}.added.1"), "new").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    publisher.await.unwrap();

    // Every core request got exactly one answer; none after the reload was refused.
    let unanswered = answers.unanswered.lock().unwrap().clone();
    assert!(
        unanswered.is_empty(),
        "requests without an answer: {unanswered:?}"
    );
    let status = answers.status.lock().unwrap().clone();
    let sent = next_id.load(Ordering::SeqCst);
    assert_eq!(status.len(), sent, "one answer per request");
    let refused_after: Vec<_> = (status.range(first_after..))
        .filter(|(_, s)| *s == "429")
        .collect();
    assert!(
        refused_after.is_empty(),
        "refused after the reload: {refused_after:?}"
    );
    let answered_after = status.range(first_after..).count();
    assert!(
        answered_after > 100,
        "{answered_after} requests after the reload"
    );

    // Every stream message answered exactly once, and the service called once for each.
    let published = published.load(Ordering::SeqCst);
    let mut replied = BTreeMap::<String, usize>::new();
    while replied.len() < published {
        let reply = tokio::time::timeout(Duration::from_secs(20), js_replies.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {published} stream messages answered; logs:\n{}",
                    replied.len(),
                    ricochet.logs()
                )
            })
            .unwrap();
        let correlation = header(&reply, "correlation-id").unwrap_or_default();
        *replied.entry(correlation).or_default() += 1;
    }
    // Any duplicate still on its way arrives within a second.
    while let Ok(Some(reply)) =
        tokio::time::timeout(Duration::from_secs(1), js_replies.next()).await
    {
        let correlation = header(&reply, "correlation-id").unwrap_or_default();
        *replied.entry(correlation).or_default() += 1;
    }
    let twice: Vec<_> = replied.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    let mut calls = BTreeMap::<String, usize>::new();
    for seen in upstream.seen() {
        *calls.entry(seen.path_and_query).or_default() += 1;
    }
    let called_twice: Vec<_> = calls.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        called_twice.is_empty(),
        "the service was called twice for: {called_twice:?}"
    );
    let js_calls = calls.keys().filter(|p| p.starts_with("/js/")).count();
    assert_eq!(js_calls, published, "one call per stream message");
    eprintln!(
        "reload under load: {sent} core requests ({refused_before} refused by the old limit before the reload, {answered_after} sent after it, none refused), {published} stream messages, each answered once"
    );
    let logs = ricochet.logs();
    assert!(logs.contains("configuration reloaded"), "{logs}");
    stream.delete().await;
}

/// Ten reloads in a row under steady request-reply load: the route's subscription is kept
/// across each (the server never sees it end), and every request is answered exactly once.
/// Before subscriptions were kept, each reload drained the old one, and async-nats drops a
/// request the server routed to a draining subscription before its unsubscribe arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_keep_the_core_subscription_and_lose_no_request() {
    let prefix = unique("reloadkeep");
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let admin = free_port();
    // Each reload changes the route (its rate limit), so the route is rebuilt every time.
    let toml = |n: usize| {
        let limit = format!(
            "[routes.rate_limit]\nmessages_per_second = {}\nburst_messages = 100000\nmode = \"reject\"\n",
            100_000 + n
        );
        config(
            &upstream.base_url(),
            admin,
            &core_route(&prefix, "orders", &limit),
        )
    };
    let ricochet = Ricochet::start(&toml(0), admin).await;

    let answers = Arc::new(Answers::default());
    let next_id = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers = spawn_callers(
        &client,
        format!("{prefix}.orders"),
        Duration::ZERO,
        &answers,
        &next_id,
        &stop,
    );
    let reloads = 10;
    for n in 1..=reloads {
        let before = next_id.load(Ordering::SeqCst);
        ricochet.reload(&toml(n), "applied").await;
        // Load went on across this reload before the next.
        eventually(Duration::from_secs(10), "requests after the reload", || {
            let sent = next_id.load(Ordering::SeqCst);
            async move { holds(sent > before + 50, sent) }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }

    let unanswered = answers.unanswered.lock().unwrap().clone();
    assert!(
        unanswered.is_empty(),
        "requests without an answer across {reloads} reloads: {unanswered:?}"
    );
    let status = answers.status.lock().unwrap().clone();
    let sent = next_id.load(Ordering::SeqCst);
    assert_eq!(status.len(), sent, "one answer per request");
    let not_ok: Vec<_> = status.iter().filter(|(_, s)| *s != "200").collect();
    assert!(not_ok.is_empty(), "answered with an error: {not_ok:?}");
    assert_eq!(upstream.calls(), sent, "one service call per request");
    let logs = ricochet.logs();
    assert_eq!(
        logs.matches("subscription kept from the previous configuration")
            .count(),
        reloads,
        "{logs}"
    );
    let subscribed = (logs.lines())
        .filter(|line| line.contains("subscribed") && !line.contains("kept"))
        .count();
    assert_eq!(subscribed, 1, "subscribed once, at the start: {logs}");
    eprintln!("{reloads} reloads under load: {sent} requests, each answered once");
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_every_problem_and_the_running_configuration_stays() {
    let prefix = unique("reloadbad");
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let admin = free_port();
    let good = config(
        &upstream.base_url(),
        admin,
        &core_route(&prefix, "orders", ""),
    );
    let ricochet = Ricochet::start(&good, admin).await;

    // Two problems in one file: a misspelt route key and a timeout that is no duration.
    let bad = good
        .replace("method = \"POST\"", "method = \"POST\"\nmax_inflight = 4")
        .replace("request_timeout = \"5s\"", "request_timeout = \"soon\"");
    ricochet.reload(&bad, "refused").await;
    let logs = ricochet.logs();
    for key in ["routes[0].max_inflight", "upstream.request_timeout"] {
        assert!(logs.contains(key), "the log names {key}:\n{logs}");
    }
    // The log is a file, so plain text that grep finds as docs/operations.md shows it: no
    // colour codes.
    assert!(
        logs.contains("key=routes[0].max_inflight problem="),
        "{logs:?}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "escape bytes in a log file: {logs:?}"
    );
    assert_eq!(ricochet.reloads("applied").await, 0.0);
    // The running configuration still answers, and ricochet stays ready.
    let reply = answered(&client, format!("{prefix}.orders.7"), "still").await;
    assert_eq!(reply.payload.as_ref(), b"still");
    let (status, _) = ricochet.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 200);

    // Fixed, it applies.
    ricochet.reload(&good, "applied").await;
}

#[tokio::test]
async fn a_watched_file_reloads_by_itself_and_a_removed_route_stops_answering() {
    let prefix = unique("reloadwatch");
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let admin = free_port();
    let watch = "[reload]\nwatch = true\nwatch_interval = \"200ms\"\n";
    let both = format!(
        "{watch}{}{}",
        core_route(&prefix, "kept", ""),
        core_route(&prefix, "removed", "")
    );
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &both), admin).await;
    for name in ["kept", "removed"] {
        answered(&client, format!("{prefix}.{name}.1"), "").await;
    }

    // No signal: the file's change is the trigger. The admin port cannot move while
    // running: that change is reported and the running listener kept.
    let one = format!("{watch}{}", core_route(&prefix, "kept", ""));
    let moved = config(&upstream.base_url(), free_port(), &one);
    std::fs::write(ricochet.config_path(), moved).unwrap();
    ricochet.wait_for_reloads("applied", 1.0).await;
    let gone = client
        .request(format!("{prefix}.removed.2"), Bytes::new())
        .await;
    assert!(
        gone.is_err(),
        "the removed route no longer answers: {gone:?}"
    );
    answered(&client, format!("{prefix}.kept.2"), "").await;
    let logs = ricochet.logs();
    assert!(
        logs.contains("change only with a restart") && logs.contains("admin"),
        "{logs}"
    );
    assert!(logs.contains("file changed"), "{logs}");
}

#[tokio::test]
async fn a_changed_queue_group_drains_the_old_subscription_first_and_answers_once() {
    let prefix = unique("reloadgroup");
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let admin = free_port();
    let route = core_route(&prefix, "orders", "");
    let toml = config(&upstream.base_url(), admin, &route);
    let ricochet = Ricochet::start(&toml, admin).await;
    answered(&client, format!("{prefix}.orders.1"), "before").await;

    // Both groups would each get every request: the old subscription goes first.
    let regrouped = toml.replace("[upstream]", "queue_group = \"orders-team\"\n\n[upstream]");
    assert_ne!(regrouped, toml);
    ricochet.reload(&regrouped, "applied").await;
    assert!(
        ricochet.logs().contains("queue group changed"),
        "{}",
        ricochet.logs()
    );
    let calls = upstream.calls();
    for i in 2..12 {
        answered(&client, format!("{prefix}.orders.{i}"), "after").await;
    }
    assert_eq!(
        upstream.calls(),
        calls + 10,
        "one service call per request: no second subscription"
    );
}

/// A route's schema file rewritten under the same path: a reload applies the new schema
/// and its log names the route as changed (before: `changed=[]`).
#[tokio::test]
async fn a_changed_schema_file_is_applied_and_its_route_named_in_the_reload_log() {
    let prefix = unique("reloadschema");
    let upstream = Upstream::echo().await;
    let client = nats().await;
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    let requires = |field: &str| format!(r#"{{"type": "object", "required": ["{field}"]}}"#);
    std::fs::write(&schema, requires("id")).unwrap();
    let validate = format!(
        "[routes.validate]\nformat = \"json_schema\"\nschema = \"{}\"",
        schema.display()
    );
    let toml = config(
        &upstream.base_url(),
        admin,
        &format!(
            "{}{}",
            core_route(&prefix, "orders", &validate),
            core_route(&prefix, "plain", "")
        ),
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    let status = |reply: &async_nats::Message| header(reply, "Ricochet-Status");
    let ask = |body: &'static str| {
        let (client, subject) = (client.clone(), format!("{prefix}.orders.1"));
        async move { client.request(subject, body.into()).await.unwrap() }
    };
    assert_eq!(status(&ask(r#"{"id": 1}"#).await).as_deref(), Some("200"));
    assert_eq!(status(&ask(r#"{"sku": 1}"#).await).as_deref(), Some("400"));

    // Same configuration file, same path; only the schema's content changes.
    std::fs::write(&schema, requires("sku")).unwrap();
    ricochet.reload(&toml, "applied").await;
    assert_eq!(status(&ask(r#"{"sku": 1}"#).await).as_deref(), Some("200"));
    assert_eq!(status(&ask(r#"{"id": 1}"#).await).as_deref(), Some("400"));
    let logs = ricochet.logs();
    let reloaded = (logs.lines())
        .find(|line| line.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload line:\n{logs}"));
    assert!(
        reloaded.contains(r#"changed=["orders"]"#),
        "the reload names the route whose schema changed, and only it: {reloaded}"
    );
}
