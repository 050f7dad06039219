//! The toy source through a whole generation: configuration, intake, admission, the
//! pipeline and its policy, against a scripted service; nothing of it lives outside its
//! folder but its line in `sources!`.

use std::time::Duration;

use super::{events, publish};
use crate::generation::{Generation, KeptSubscriptions};
use crate::settings::load_str;

/// A service answering `GET /ok/<x>` with 200 and `<x>`, anything else with 500.
async fn service() -> u16 {
    crate::pipeline::scripted::service(|head| {
        let path = head.split(' ').nth(1).unwrap_or("/");
        match path.strip_prefix("/ok/") {
            Some(what) => format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{what}",
                what.len()
            ),
            None => "HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n".to_string(),
        }
    })
    .await
}

async fn eventually(queue: &str, wanted: usize) -> Vec<String> {
    for _ in 0..500 {
        let seen = events(queue);
        if seen.len() >= wanted {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{queue}: only {:?}", events(queue));
}

#[tokio::test]
async fn a_toy_source_is_a_folder_and_one_line() {
    let port = service().await;
    let text = format!(
        r#"
        [upstream]
        base_url = "http://127.0.0.1:{port}"
        [[routes]]
        name = "toy"
        source = "memory"
        subject = "toy.{{outcome}}.{{id}}"
        path = "/{{outcome}}/{{id}}"
        retry = {{ max_attempts = 1 }}
        [routes.memory]
        queue = "toy-queue"
        max_deliver = 2
        "#
    );
    let settings = load_str(&text, Vec::new()).unwrap();
    // Printed and read back as the same, like every source's settings.
    let printed = settings.printable().unwrap();
    assert!(printed.contains("source = \"memory\""), "{printed}");
    assert_eq!(
        load_str(&printed, Vec::new()).unwrap().printable().unwrap(),
        printed
    );

    let mut generation = Generation::new(settings, None).unwrap();
    generation
        .start_core(&mut KeptSubscriptions::default())
        .await
        .unwrap();
    generation.start_durable().await.unwrap();
    assert!(generation.wait_ready(Duration::from_secs(5)).await);

    publish("toy-queue", "toy.ok.1", Some("inbox.1"), b"");
    let answered = eventually("toy-queue", 2).await;
    assert_eq!(answered, ["reply inbox.1 200 1", "ack"]);

    // A failing request: redelivered by the policy, then dead-lettered and terminated on
    // its last delivery, with the error reply.
    publish("toy-queue", "toy.fail.2", Some("inbox.2"), b"");
    let failed = eventually("toy-queue", 6).await;
    assert_eq!(
        failed[2..],
        [
            "redeliver 0ns",
            "dead_letter max_deliver 2",
            "reply inbox.2 500 ",
            "term"
        ]
    );
    let (drained, _) = generation.stop(Duration::from_secs(5)).await;
    assert!(drained);
}

#[test]
fn a_toy_route_without_its_table_is_told_what_it_needs() {
    let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"t\"\nsource = \"memory\"\nsubject = \"t\"\npath = \"/\"\n[routes.kafka]\nbrokers = \"h:9092\"\n";
    let errors: Vec<String> = (load_str(text, Vec::new()).unwrap_err().0.iter())
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.contains(
            &"routes[0].kafka: not a key of a route with source = \"memory\" (its keys: memory)"
                .to_string()
        ),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"routes[0].memory: a [routes.memory] table with `queue`".to_string()),
        "{errors:?}"
    );
}
