//! The NATS micro services API end to end: ricochet with `[nats.service]` answers
//! `$SRV.PING|INFO|STATS` at all three subject levels, checked with nats-py's own micro
//! types (`common/micro_client.py`), an implementation independent of ricochet's.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::Value;

async fn micro(name: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/micro_client.py");
    let output = tokio::process::Command::new("python3")
        .args([script, &nats_url(), name])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "micro_client.py failed (nats-py installed? `pip install nats-py`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

#[tokio::test]
async fn the_service_answers_ping_info_and_stats_with_what_it_measured() {
    let prefix = unique("svc");
    let name = unique("orders-");
    let upstream = Upstream::start(|seen| async move {
        match seen.path_and_query.as_str() {
            "/orders/missing" => respond(404, "no such order"),
            _ => respond(200, "ok"),
        }
    })
    .await;
    let admin = free_port();
    let routes = format!(
        r#"
[[routes]]
name = "get-order"
subject = "{prefix}.orders.{{id}}.get"
method = "GET"
path = "/orders/{{id}}"

[[routes]]
name = "list-orders"
subject = "{prefix}.orders.list"
method = "GET"
path = "/orders"
queue_group = "listers"
"#
    );
    let toml = config(&upstream.base_url(), admin, &routes).replace(
        "[upstream]",
        &format!("[nats.service]\nname = \"{name}\"\nversion = \"1.4.0\"\ndescription = \"the orders REST service\"\nmetadata = {{ team = \"orders\" }}\n\n[upstream]"),
    );
    let _ricochet = Ricochet::start(&toml, admin).await;
    let client = nats().await;
    for id in ["1", "2", "missing"] {
        let subject = format!("{prefix}.orders.{id}.get");
        tokio::time::timeout(
            Duration::from_secs(10),
            client.request(subject, Bytes::new()),
        )
        .await
        .expect("a reply")
        .expect("a reply");
    }

    let answers = micro(&name).await;
    let id = answers["id"].as_str().unwrap().to_string();
    for verb in ["PING", "INFO", "STATS"] {
        for level in ["all", "name", "id"] {
            let found = answers[verb][level].as_array().unwrap();
            assert_eq!(found.len(), 1, "{verb} at level {level}: {answers}");
            assert_eq!(found[0]["id"], id.as_str());
            assert_eq!(found[0]["version"], "1.4.0");
            assert_eq!(found[0]["metadata"]["team"], "orders");
        }
    }
    let info = &answers["INFO"]["id"][0];
    assert_eq!(info["description"], "the orders REST service");
    let endpoints = info["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{info}");
    assert_eq!(endpoints[0]["name"], "get-order");
    assert_eq!(endpoints[0]["subject"], format!("{prefix}.orders.*.get"));
    assert_eq!(endpoints[0]["queue_group"], "ricochet");
    assert_eq!(endpoints[0]["metadata"]["http.method"], "GET");
    assert_eq!(endpoints[0]["metadata"]["http.path"], "/orders/{id}");
    assert_eq!(endpoints[1]["queue_group"], "listers");

    let stats = &answers["STATS"]["id"][0];
    let get = &stats["endpoints"][0];
    assert_eq!(get["name"], "get-order");
    assert_eq!(get["num_requests"], 3, "{stats}");
    assert_eq!(get["num_errors"], 1, "the 404");
    assert_eq!(get["last_error"], "404:Not Found");
    let total = get["processing_time"].as_u64().unwrap();
    assert!(total > 0);
    assert_eq!(get["average_processing_time"].as_u64().unwrap(), total / 3);
    let list = &stats["endpoints"][1];
    assert_eq!(
        (list["num_requests"].as_u64(), list["num_errors"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(list["last_error"], "");
}

#[tokio::test]
async fn without_a_service_table_the_routes_are_not_announced() {
    let name = unique("quiet-");
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let routes = format!("[[routes]]\nname = \"r\"\nsubject = \"{name}.x\"\npath = \"/x\"\n");
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let client = nats().await;
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.INFO", inbox, Bytes::new())
        .await
        .unwrap();
    let mut ours = 0;
    while let Ok(Some(answer)) = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut answers),
    )
    .await
    {
        let answer: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        ours += usize::from(answer["name"] == name.as_str());
    }
    assert_eq!(ours, 0);
}
