//! Kafka end to end against a real Kafka-protocol broker (tansu in CI, `KAFKA_BROKERS`),
//! each test with fresh topics.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::{self, header, key, next, produce};
use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::Message;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn request_reply_carries_key_correlation_and_status() {
    let requests = kafka::topic("kreq", 3).await;
    let replies = kafka::topic("krep", 1).await;
    let default_replies = kafka::topic("kdef", 1).await;
    let upstream = Upstream::echo().await;
    let _ricochet = kafka::start(
        &upstream,
        &kafka::route(
            "k",
            &requests,
            "",
            &format!("reply_topic = \"{default_replies}\""),
        ),
        "k",
    )
    .await;
    let producer = kafka::producer();
    let reader = kafka::consumer(&replies);

    produce(
        &producer,
        &requests,
        Some("order-1"),
        &[("reply-to", &replies), ("correlation-id", "c-1")],
        b"hello",
    )
    .await;
    let reply = next(&reader, WAIT).await;
    assert_eq!(reply.payload(), Some(&b"hello"[..]));
    assert_eq!(key(&reply).as_deref(), Some("order-1"));
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("c-1"));
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("200"));

    // Without reply-to: the route's reply_topic; without correlation-id: one is generated.
    produce(&producer, &requests, Some("order-2"), &[], b"second").await;
    let default_reader = kafka::consumer(&default_replies);
    let reply = next(&default_reader, WAIT).await;
    assert_eq!(reply.payload(), Some(&b"second"[..]));
    let correlation = header(&reply, "correlation-id").unwrap();
    assert!(
        correlation.starts_with(&format!("{requests}-")),
        "{correlation}"
    );

    let seen = upstream.seen();
    let key = seen[1].headers["idempotency-key"].to_str().unwrap();
    assert_eq!(key, correlation, "Idempotency-Key = topic-partition-offset");
    assert_eq!(seen[0].path_and_query, "/work");
}

#[tokio::test]
async fn compressed_replies_are_readable_by_a_stock_consumer() {
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let mut routes = String::new();
    let mut topics = Vec::new();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let requests = kafka::topic("kcmp", 1).await;
        let replies = kafka::topic("kcmprep", 1).await;
        routes.push_str(&kafka::route(
            codec,
            &requests,
            "",
            &format!("reply_topic = \"{replies}\"\ncompression = \"{codec}\""),
        ));
        topics.push((codec, requests, replies));
    }
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let producer = kafka::producer();
    let body = "a compressible body ".repeat(200);
    for (codec, requests, replies) in &topics {
        kafka::wait_assigned(&ricochet, codec).await;
        produce(&producer, requests, Some("k"), &[], body.as_bytes()).await;
        let reply = next(&kafka::consumer(replies), WAIT).await;
        assert_eq!(reply.payload(), Some(body.as_bytes()), "{codec}");
    }
}

#[tokio::test]
async fn records_with_the_same_key_are_processed_in_order() {
    const RECORDS: usize = 1000;
    const KEYS: usize = 20;
    let requests = kafka::topic("kord", 4).await;
    let replies = kafka::topic("kordrep", 4).await;
    let seen_order: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let order = seen_order.clone();
    let upstream = Upstream::start(move |seen| {
        let body = String::from_utf8(seen.body.to_vec()).unwrap();
        let (key, seq) = body.split_once(':').unwrap();
        order
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push(seq.parse().unwrap());
        async move {
            let jitter = nuid::next().as_bytes()[0] % 4;
            tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
            respond(200, "ok")
        }
    })
    .await;
    let _ricochet = kafka::start(
        &upstream,
        &kafka::route(
            "ordered",
            &requests,
            "max_in_flight = 64",
            &format!("reply_topic = \"{replies}\"\nordering = \"key\""),
        ),
        "ordered",
    )
    .await;
    let producer = kafka::producer();
    // One at a time, so each key's records reach the broker in order.
    for i in 0..RECORDS {
        let key = format!("key-{}", i % KEYS);
        produce(
            &producer,
            &requests,
            Some(&key),
            &[],
            format!("{key}:{}", i / KEYS).as_bytes(),
        )
        .await;
    }
    // tansu's memory storage slows down as topics fill: allow it time.
    upstream
        .wait_for_calls_within(RECORDS, Duration::from_secs(60))
        .await;
    let order = seen_order.lock().unwrap().clone();
    assert_eq!(order.len(), KEYS);
    for (key, seqs) in order {
        assert_eq!(
            seqs,
            (0..RECORDS / KEYS).collect::<Vec<_>>(),
            "{key} out of order"
        );
    }
    assert!(upstream.peak() > 1, "different keys ran in parallel");
}

#[tokio::test]
async fn two_instances_split_the_partitions_and_answer_everything_once() {
    const RECORDS: usize = 200;
    let requests = kafka::topic("ksplit", 4).await;
    let replies = kafka::topic("ksplitrep", 1).await;
    let first_upstream = Upstream::echo().await;
    let second_upstream = Upstream::echo().await;
    let group = unique("group");
    let kafka_extra = format!("reply_topic = \"{replies}\"\ngroup_id = \"{group}\"");
    let routes = kafka::route("split", &requests, "", &kafka_extra);
    let (a, b) = (free_port(), free_port());
    let first = Ricochet::start(&config(&first_upstream.base_url(), a, &routes), a).await;
    let second = Ricochet::start(&config(&second_upstream.base_url(), b, &routes), b).await;
    kafka::wait_assigned(&first, "split").await;
    kafka::wait_assigned(&second, "split").await;
    // Both members hold partitions: the group has settled.
    let assigned = |m: &str| metric(m, "ricochet_kafka_assigned_partitions", &[]);
    eventually(
        Duration::from_secs(10),
        "all 4 partitions assigned",
        || async {
            let total = assigned(&first.metrics().await) + assigned(&second.metrics().await);
            holds(total == 4.0, format!("{total} assigned"))
        },
    )
    .await;

    let producer = kafka::producer();
    for i in 0..RECORDS {
        produce(
            &producer,
            &requests,
            Some(&format!("k{i}")),
            &[("correlation-id", &i.to_string())],
            b"x",
        )
        .await;
    }
    let reader = kafka::consumer(&replies);
    let mut answered: HashMap<String, usize> = HashMap::new();
    while answered.values().sum::<usize>() < RECORDS {
        let reply = next(&reader, WAIT).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    assert_eq!(answered.len(), RECORDS, "every request answered");
    assert!(
        first_upstream.calls() > 0 && second_upstream.calls() > 0,
        "both instances worked"
    );
    assert_eq!(
        first_upstream.calls() + second_upstream.calls(),
        RECORDS,
        "none twice"
    );
}

#[tokio::test]
async fn a_killed_instance_loses_no_request() {
    const TOTAL: usize = 2000;
    let requests = kafka::topic("kkill", 4).await;
    let replies = kafka::topic("kkillrep", 1).await;
    let upstream = Upstream::slow_echo(Duration::from_millis(1)).await;
    let admin = free_port();
    let routes = kafka::route(
        "kill",
        &requests,
        "max_in_flight = 64",
        &format!("reply_topic = \"{replies}\"\nordering = \"unordered\""),
    );
    let toml = config(&upstream.base_url(), admin, &routes);
    let mut first = Ricochet::start(&toml, admin).await;
    kafka::wait_assigned(&first, "kill").await;
    let reader = kafka::consumer(&replies);

    let produced = Arc::new(AtomicUsize::new(0));
    let killing = Arc::new(tokio::sync::Notify::new());
    let publisher = {
        let requests = requests.clone();
        let produced = produced.clone();
        let killing = killing.clone();
        tokio::spawn(async move {
            let producer = kafka::producer();
            for i in 0..TOTAL {
                if i == TOTAL / 2 {
                    // The second half goes out while ricochet is killed and restarted.
                    killing.notified().await;
                }
                produce(
                    &producer,
                    &requests,
                    Some(&format!("k{i}")),
                    &[("correlation-id", &i.to_string())],
                    b"x",
                )
                .await;
                produced.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut answered: HashMap<String, usize> = HashMap::new();
    while answered.values().sum::<usize>() < TOTAL / 10 {
        let reply = next(&reader, WAIT).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    killing.notify_one();
    first.signal("-KILL");
    let produced_at_kill = produced.load(Ordering::SeqCst);
    let unanswered_at_kill = TOTAL - answered.len();
    first.wait_exit(Duration::from_secs(10)).await;
    drop(first);
    println!("kafka kill test: at the kill {produced_at_kill} of {TOTAL} produced, {unanswered_at_kill} unanswered");
    assert!(
        produced_at_kill < TOTAL && unanswered_at_kill >= TOTAL / 3,
        "a real share of the requests is in flight or not yet taken at the kill"
    );
    let _second = Ricochet::start(&toml, admin).await;
    publisher.await.unwrap();
    while answered.len() < TOTAL {
        let reply = next(&reader, Duration::from_secs(60)).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    let duplicates: usize = answered.values().map(|n| n - 1).sum();
    println!(
        "kafka kill test: {TOTAL} requests, all answered, {duplicates} answered more than once"
    );
    assert_eq!(answered.len(), TOTAL);
}

#[tokio::test]
async fn a_reload_mid_run_hands_the_partitions_over_without_losing_or_repeating() {
    const TOTAL: usize = 2000;
    let requests = kafka::topic("kreload", 4).await;
    let replies = kafka::topic("kreloadrep", 1).await;
    let upstream = Upstream::slow_echo(Duration::from_millis(1)).await;
    let admin = free_port();
    let routes = |window: usize| {
        kafka::route(
            "reload",
            &requests,
            &format!("max_in_flight = {window}"),
            &format!("reply_topic = \"{replies}\"\nordering = \"unordered\""),
        )
    };
    let ricochet = kafka::start(&upstream, &routes(64), "reload").await;
    let reader = kafka::consumer(&replies);
    let publisher = {
        let requests = requests.clone();
        tokio::spawn(async move {
            let producer = kafka::producer();
            for i in 0..TOTAL {
                let correlation = i.to_string();
                produce(
                    &producer,
                    &requests,
                    Some(&format!("k{i}")),
                    &[("correlation-id", &correlation)],
                    correlation.as_bytes(),
                )
                .await;
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    let mut answered: HashMap<String, usize> = HashMap::new();
    while answered.len() < TOTAL / 5 {
        let reply = next(&reader, WAIT).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    // The route changes (a smaller window): its consumer leaves the group and a new one
    // joins, while records keep coming.
    let at_reload = answered.len();
    let reloading = std::time::Instant::now();
    ricochet
        .reload(&config(&upstream.base_url(), admin, &routes(16)), "applied")
        .await;
    let reload_took = reloading.elapsed();
    publisher.await.unwrap();
    while answered.len() < TOTAL {
        let reply = next(&reader, Duration::from_secs(60)).await;
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    // A repeat still on its way arrives within a few seconds.
    while let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(3), reader.recv()).await {
        let reply = reply.detach();
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    let repeated: Vec<_> = answered.iter().filter(|(_, n)| **n > 1).collect();
    println!("kafka reload: {TOTAL} requests, {at_reload} answered at the reload, which took {reload_took:?}; all answered, {} repeated", repeated.len());
    assert!(repeated.is_empty(), "answered more than once: {repeated:?}");
    assert_eq!(
        upstream.calls(),
        TOTAL,
        "the service is called once per record"
    );
    assert!(ricochet.logs().contains("Kafka intake stopped"));
}

#[tokio::test]
async fn undeliverable_records_go_to_the_dead_letter_topic() {
    let requests = kafka::topic("kdlq", 1).await;
    let replies = kafka::topic("kdlqrep", 1).await;
    let dead = kafka::topic("kdlqdead", 1).await;
    let upstream = Upstream::echo().await;
    let _ricochet = kafka::start(
        &upstream,
        &kafka::route(
            "dlq",
            &requests,
            "max_payload = 8",
            &format!("reply_topic = \"{replies}\"\ndead_letter_topic = \"{dead}\""),
        ),
        "dlq",
    )
    .await;
    let producer = kafka::producer();
    produce(
        &producer,
        &requests,
        Some("big-one"),
        &[("x-tenant", "acme"), ("correlation-id", "c-big")],
        b"far too large",
    )
    .await;

    let letter = next(&kafka::consumer(&dead), WAIT).await;
    assert_eq!(letter.payload(), Some(&b"far too large"[..]));
    assert_eq!(key(&letter).as_deref(), Some("big-one"));
    assert_eq!(header(&letter, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(
        header(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
        Some("payload_too_large")
    );
    assert_eq!(
        header(&letter, "Ricochet-Last-Status").as_deref(),
        Some("413")
    );
    assert_eq!(
        header(&letter, "Ricochet-Original-Topic").as_deref(),
        Some(requests.as_str())
    );
    assert_eq!(
        header(&letter, "Ricochet-Original-Partition").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&letter, "Ricochet-Original-Offset").as_deref(),
        Some("0")
    );
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("413"));
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("c-big"));
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn a_reply_to_that_is_not_a_topic_is_refused_and_dead_lettered_unanswered() {
    let requests = kafka::topic("kbadrep", 1).await;
    let replies = kafka::topic("kbadreprep", 1).await;
    let dead = kafka::topic("kbadrepdead", 1).await;
    let upstream = Upstream::echo().await;
    let extra = format!("reply_topic = \"{replies}\"\ndead_letter_topic = \"{dead}\"");
    let _ricochet = kafka::start(
        &upstream,
        &kafka::route("badrep", &requests, "", &extra),
        "badrep",
    )
    .await;
    let producer = kafka::producer();
    let bad = [("reply-to", "not a topic"), ("correlation-id", "c-bad")];
    produce(&producer, &requests, Some("k"), &bad, b"x").await;
    // A good request after it: answered on the route's reply topic.
    let good = [("correlation-id", "c-good")];
    produce(&producer, &requests, Some("k"), &good, b"y").await;

    let letter = next(&kafka::consumer(&dead), WAIT).await;
    assert_eq!(
        header(&letter, "Ricochet-Dead-Letter-Reason").as_deref(),
        Some("bad_request")
    );
    assert_eq!(header(&letter, "correlation-id").as_deref(), Some("c-bad"));
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(
        header(&reply, "correlation-id").as_deref(),
        Some("c-good"),
        "the refused request got no reply, not even on the route's reply topic"
    );
    assert_eq!(upstream.calls(), 1, "the service saw only the good request");
}

#[tokio::test]
async fn partitions_pause_while_the_circuit_is_open_and_resume_after() {
    let requests = kafka::topic("kbrk", 2).await;
    let replies = kafka::topic("kbrkrep", 1).await;
    let (upstream, healthy) = Upstream::down_until_healthy().await;
    let ricochet = kafka::start(&upstream, &kafka::route(
        "brk",
        &requests,
        "[routes.retry]\nmax_attempts = 1\n[routes.circuit_breaker]\nconsecutive_failures = 3\nbreak_duration = \"1s\"",
        &format!("reply_topic = \"{replies}\""),
    ), "brk").await;
    let producer = kafka::producer();
    for i in 0..10 {
        produce(
            &producer,
            &requests,
            Some(&format!("k{i}")),
            &[("correlation-id", &i.to_string())],
            b"x",
        )
        .await;
    }
    eventually(Duration::from_secs(5), "the breaker open", || async {
        let state = metric(&ricochet.metrics().await, "ricochet_circuit_state", &[]);
        holds(state == 1.0, format!("state {state}"))
    })
    .await;
    let calls = upstream.calls();
    assert!(calls >= 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        upstream.calls(),
        calls,
        "no calls while the circuit is open"
    );

    healthy.store(true, Ordering::SeqCst);
    let reader = kafka::consumer(&replies);
    let mut answered: HashMap<String, usize> = HashMap::new();
    while answered.len() < 10 {
        let reply = next(&reader, WAIT).await;
        assert_eq!(
            header(&reply, "Ricochet-Status").as_deref(),
            Some("200"),
            "retried, never skipped"
        );
        *answered
            .entry(header(&reply, "correlation-id").unwrap())
            .or_default() += 1;
    }
    assert!(answered.values().all(|n| *n == 1));
}

#[tokio::test]
async fn sigterm_drains_commits_and_exits_zero() {
    sigterm_drains_and_commits("").await;
}

/// The default runtime is single-threaded for Kafka routes too (the consumer polls on its
/// own thread); the multi-thread runtime drains and commits the same way.
#[tokio::test]
async fn sigterm_drains_commits_and_exits_zero_on_the_multi_thread_runtime() {
    sigterm_drains_and_commits("\n[runtime]\nworker_threads = 2\n").await;
}

async fn sigterm_drains_and_commits(runtime: &str) {
    let requests = kafka::topic("kterm", 1).await;
    let replies = kafka::topic("ktermrep", 1).await;
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        respond(200, "done")
    })
    .await;
    let admin = free_port();
    let group = unique("termgroup");
    let routes = kafka::route(
        "term",
        &requests,
        "",
        &format!("reply_topic = \"{replies}\"\ngroup_id = \"{group}\"\nordering = \"unordered\""),
    );
    let toml = config(&upstream.base_url(), admin, &routes) + runtime;
    let mut ricochet = Ricochet::start(&toml, admin).await;
    kafka::wait_assigned(&ricochet, "term").await;
    let producer = kafka::producer();
    for i in 0..5 {
        produce(&producer, &requests, Some(&format!("k{i}")), &[], b"x").await;
    }
    upstream.wait_for_calls(5).await;
    ricochet.signal("-TERM");
    let reader = kafka::consumer(&replies);
    for _ in 0..5 {
        assert_eq!(next(&reader, WAIT).await.payload(), Some(&b"done"[..]));
    }
    assert_eq!(
        ricochet.wait_exit(Duration::from_secs(30)).await.code(),
        Some(0)
    );
    drop(ricochet);

    // The offsets were committed: a restart in the same group does not repeat them.
    let again = Ricochet::start(&toml, admin).await;
    kafka::wait_assigned(&again, "term").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.calls(), 5);
    reader.unsubscribe();
}

#[tokio::test]
async fn a_reply_too_large_for_kafka_becomes_a_502_error_reply() {
    let requests = kafka::topic("kbig", 1).await;
    let replies = kafka::topic("kbigrep", 1).await;
    let upstream =
        Upstream::start(|_| async { respond(200, Box::leak("x".repeat(20_000).into_boxed_str())) })
            .await;
    let _ricochet = kafka::start(&upstream, &kafka::route(
        "big",
        &requests,
        "",
        &format!("reply_topic = \"{replies}\"\n[routes.kafka.producer]\n\"message.max.bytes\" = \"10000\""),
    ), "big").await;
    produce(
        &kafka::producer(),
        &requests,
        Some("k"),
        &[("correlation-id", "c-big")],
        b"x",
    )
    .await;
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("502"));
    assert_eq!(header(&reply, "correlation-id").as_deref(), Some("c-big"));
    let body = String::from_utf8_lossy(reply.payload().unwrap()).into_owned();
    assert!(body.contains("message.max.bytes"), "{body}");
}

#[tokio::test]
async fn kafka_only_routes_need_no_nats_server() {
    let requests = kafka::topic("knonats", 1).await;
    let replies = kafka::topic("knonatsrep", 1).await;
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let nowhere = free_port();
    let toml = format!(
        "[nats]\nurl = \"nats://127.0.0.1:{nowhere}\"\n\n[upstream]\nbase_url = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
        upstream.base_url(),
        kafka::route("solo", &requests, "", &format!("reply_topic = \"{replies}\""))
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    kafka::wait_assigned(&ricochet, "solo").await;
    produce(
        &kafka::producer(),
        &requests,
        Some("k"),
        &[],
        b"no nats needed",
    )
    .await;
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(reply.payload(), Some(&b"no nats needed"[..]));
    assert!(
        !ricochet.logs().contains("NATS connection"),
        "{}",
        ricochet.logs()
    );
}

#[tokio::test]
async fn partition_ordering_runs_one_record_at_a_time_per_partition() {
    const RECORDS: usize = 30;
    let requests = kafka::topic("kpart", 1).await;
    let replies = kafka::topic("kpartrep", 1).await;
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let order = seen.clone();
    let upstream = Upstream::start(move |request| {
        order
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request.body).parse().unwrap());
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            respond(200, "ok")
        }
    })
    .await;
    let extra = format!("reply_topic = \"{replies}\"\nordering = \"partition\"");
    let _ricochet = kafka::start(
        &upstream,
        &kafka::route("part", &requests, "max_in_flight = 16", &extra),
        "part",
    )
    .await;
    let producer = kafka::producer();
    for i in 0..RECORDS {
        // Different keys: only the partition orders them.
        produce(
            &producer,
            &requests,
            Some(&format!("key-{i}")),
            &[],
            i.to_string().as_bytes(),
        )
        .await;
    }
    upstream
        .wait_for_calls_within(RECORDS, Duration::from_secs(30))
        .await;
    assert_eq!(*seen.lock().unwrap(), (0..RECORDS).collect::<Vec<_>>());
    assert_eq!(upstream.peak(), 1, "one at a time on the partition");
}

#[tokio::test]
async fn at_most_once_never_retries_and_answers_the_failure() {
    let requests = kafka::topic("kamo", 1).await;
    let replies = kafka::topic("kamorep", 1).await;
    let (upstream, _healthy) = Upstream::down_until_healthy().await;
    let ricochet = kafka::start(
        &upstream,
        &kafka::route(
            "amo",
            &requests,
            "delivery = \"at_most_once\"\n[routes.retry]\nmax_attempts = 1",
            &format!("reply_topic = \"{replies}\""),
        ),
        "amo",
    )
    .await;
    produce(
        &kafka::producer(),
        &requests,
        Some("k"),
        &[("correlation-id", "c-amo")],
        b"x",
    )
    .await;
    let reply = next(&kafka::consumer(&replies), WAIT).await;
    assert_eq!(header(&reply, "Ricochet-Status").as_deref(), Some("503"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.calls(), 1, "no local retry, no redelivery");
    // Settled on receipt, as JetStream and AMQP count it: one ack, nothing else.
    let metrics = ricochet.metrics().await;
    let settled = |action: &str| {
        let action = format!("action=\"{action}\"");
        metric(
            &metrics,
            "ricochet_settlements_total",
            &["route=\"amo\"", &action],
        )
    };
    assert_eq!(
        ["ack", "nak", "term"].map(settled),
        [1.0, 0.0, 0.0],
        "{metrics}"
    );
}

#[tokio::test]
async fn consumer_lag_and_committed_offset_follow_the_work_left() {
    let requests = kafka::topic("klag", 1).await;
    let replies = kafka::topic("klagrep", 1).await;
    // The first call is answered at once; the others wait until the test opens the gate.
    let open = Gate::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, counter) = (open.clone(), calls.clone());
    let upstream = Upstream::start(move |_| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        let gate = gate.clone();
        async move {
            if !first {
                gate.passed().await;
            }
            respond(200, "ok")
        }
    })
    .await;
    let routes = kafka::route(
        "lag",
        &requests,
        "max_in_flight = 1\ntimeout = \"60s\"\ntotal_timeout = \"60s\"\n[routes.retry]\nmax_attempts = 1",
        &format!("reply_topic = \"{replies}\"\nordering = \"partition\""),
    );
    let ricochet = kafka::start(&upstream, &routes, "lag").await;
    let producer = kafka::producer();
    for i in 0..10 {
        produce(&producer, &requests, None, &[], format!("r{i}").as_bytes()).await;
    }
    let labels = [
        format!("topic=\"{requests}\""),
        "partition=\"0\"".to_string(),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let gauges = || async {
        let metrics = ricochet.metrics().await;
        (
            metric(&metrics, "ricochet_kafka_consumer_lag_messages", &labels),
            metric(&metrics, "ricochet_kafka_committed_offset", &labels),
        )
    };
    // One record finished and committed, nine to go.
    eventually(
        Duration::from_secs(30),
        "lag 9 at committed offset 1",
        || async {
            let seen = gauges().await;
            holds(seen == (9.0, 1.0), format!("lag, committed: {seen:?}"))
        },
    )
    .await;
    open.open();
    eventually(
        Duration::from_secs(30),
        "lag 0 at committed offset 10",
        || async {
            let seen = gauges().await;
            holds(seen == (0.0, 10.0), format!("lag, committed: {seen:?}"))
        },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

/// Issue 23, item 9: a record that keeps failing waits out its backoff in its key's lane,
/// not with its partition paused. One key always answered 500 with a 30 s backoff; 20
/// records of other keys produced after it on the same partition are all answered before
/// its first retry, and its own later records wait behind it. Judged by events (all 20
/// answered, or the poison's retry came first), not by a timer, so a slow fetch cannot
/// decide it.
#[tokio::test]
async fn a_poison_key_waiting_for_its_retry_does_not_hold_up_other_keys() {
    const OTHERS: usize = 20;
    let requests = kafka::topic("kpoison", 1).await;
    let replies = kafka::topic("kpoisonrep", 1).await;
    let group = unique("kpoison-group");
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = calls.clone();
    let upstream = Upstream::start(move |request| {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        *seen.lock().unwrap().entry(body.clone()).or_default() += 1;
        async move {
            if body.starts_with("poison") {
                respond(500, "poison")
            } else {
                respond(200, "ok")
            }
        }
    })
    .await;
    let routes = kafka::route(
        "poison",
        &requests,
        "max_in_flight = 8\n[routes.retry]\nmax_attempts = 1",
        &format!("reply_topic = \"{replies}\"\nordering = \"key\"\ngroup_id = \"{group}\""),
    )
    .replace("retry_backoff = [\"100ms\"]", "retry_backoff = [\"30s\"]");
    let ricochet = kafka::start(&upstream, &routes, "poison").await;
    let answered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sink = answered.clone();
    let reader = kafka::consumer(&replies);
    tokio::spawn(async move {
        while let Ok(reply) = reader.recv().await {
            let id = header(&reply.detach(), "correlation-id").unwrap_or_default();
            *sink.lock().unwrap().entry(id).or_default() += 1;
        }
    });
    let producer = kafka::producer();
    let poison = |i: usize| format!("poison-{i}");
    produce(
        &producer,
        &requests,
        Some("poison"),
        &[],
        poison(0).as_bytes(),
    )
    .await;
    // Its first round failed: it now waits 30 s for its retry.
    eventually(WAIT, "the poison record failed once", || async {
        let text = ricochet.metrics().await;
        let redelivered = metric(&text, "ricochet_settlements_total", &["action=\"nak\""]);
        holds(redelivered >= 1.0, format!("redelivered {redelivered}"))
    })
    .await;
    // Two more of its key: they queue behind it.
    for i in 1..=2 {
        produce(
            &producer,
            &requests,
            Some("poison"),
            &[],
            poison(i).as_bytes(),
        )
        .await;
    }
    for i in 0..OTHERS {
        let id = i.to_string();
        let body = format!("other-{i}");
        produce(
            &producer,
            &requests,
            Some(&format!("k{i}")),
            &[("correlation-id", &id)],
            body.as_bytes(),
        )
        .await;
    }
    let state = || {
        let answered = answered.lock().unwrap();
        let others = (0..OTHERS)
            .filter(|i| answered.contains_key(&i.to_string()))
            .count();
        let poison_calls = calls.lock().unwrap().get(&poison(0)).copied().unwrap_or(0);
        (others, poison_calls)
    };
    // Generous: the decision is made by whichever comes first, the 20 answers or the
    // poison's retry 30 s after its first failure.
    eventually(
        Duration::from_secs(120),
        "the other keys answered, or the poison retried",
        || async {
            let (others, poison_calls) = state();
            holds(
                others == OTHERS || poison_calls > 1,
                format!("{others} of {OTHERS} answered, poison called {poison_calls} times"),
            )
        },
    )
    .await;
    let (others, poison_calls) = state();
    assert_eq!(
        (others, poison_calls),
        (OTHERS, 1),
        "all {OTHERS} other-key records answered while the poison record waited for its retry"
    );
    let calls = calls.lock().unwrap().clone();
    for i in 1..=2 {
        assert_eq!(
            calls.get(&poison(i)),
            None,
            "{} waits behind the poison record of its key",
            poison(i)
        );
    }
    for i in 0..OTHERS {
        assert_eq!(
            calls.get(&format!("other-{i}")),
            Some(&1),
            "other-{i} called once"
        );
    }
    // The commit stays at the waiting record (offset 0): a restart would take it again.
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::brokers())
        .set("group.id", &group)
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(&requests, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    let offset = committed.elements()[0].offset();
    assert!(
        matches!(
            offset,
            rdkafka::Offset::Offset(0) | rdkafka::Offset::Invalid
        ),
        "the commit never passes the waiting record: {offset:?}"
    );
}
