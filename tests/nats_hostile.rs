//! Hostile core NATS messages, written as raw protocol bytes over TCP (a client library would
//! clean most of them before they reach the wire), against ricochet beside a service that
//! records what reaches it. Each message may cost at most itself: after each, the next good
//! request is answered and ricochet stays live and ready. docs/security.md ("Hostile
//! messages", NATS) states the contract these tests hold.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw_nats::{hpub, Raw};
use common::*;
use futures::StreamExt;

/// What one hostile message must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Answered by the service, which saw header `X-A` with exactly these values.
    Forwarded(&'static [&'static [u8]]),
    /// Answered 400 by ricochet; the service never saw it.
    Refused,
    /// The NATS client cannot parse it and drops its connection (no reply; the message is
    /// lost); the cause is logged and counted, the connection made again.
    DropsConnection,
}

struct Case {
    name: &'static str,
    headers: &'static [u8],
    expect: Expect,
    /// Other headers the service must see with exactly these values (none: absent).
    beside: &'static [(&'static str, Option<&'static [u8]>)],
}

const CASES: &[Case] = &[
    Case {
        name: "plain",
        headers: b"NATS/1.0\r\nX-A: a\r\n\r\n",
        beside: &[],
        expect: Expect::Forwarded(&[b"a"]),
    },
    Case {
        // async-nats 0.51 panicked its connection task on this one.
        name: "cr inside a value",
        headers: b"NATS/1.0\r\nX-A: a\rb\r\n\r\n",
        beside: &[],
        expect: Expect::Forwarded(&[b"a b"]),
    },
    Case {
        // The client reads a lone LF as a line end: two headers, each filtered as any.
        name: "lf inside a value",
        headers: b"NATS/1.0\r\nX-A: a\nX-Injected: 1\r\n\r\n",
        beside: &[("x-injected", Some(b"1"))],
        expect: Expect::Forwarded(&[b"a"]),
    },
    Case {
        name: "lf smuggling a reserved header",
        headers:
            b"NATS/1.0\r\nX-A: a\nHost: evil.example\nRicochet-Status: 200\nNats-Msg-Id: 1\r\n\r\n",
        // Dropped as any header of those names (Host comes from base_url, see client.rs).
        beside: &[("ricochet-status", None), ("nats-msg-id", None)],
        expect: Expect::Forwarded(&[b"a"]),
    },
    Case {
        name: "nul inside a value",
        headers: b"NATS/1.0\r\nX-A: a\0b\r\n\r\n",
        beside: &[],
        expect: Expect::Refused,
    },
    Case {
        name: "del inside a value",
        headers: b"NATS/1.0\r\nX-A: a\x7fb\r\n\r\n",
        beside: &[],
        expect: Expect::Refused,
    },
    Case {
        name: "utf-8 beyond ascii",
        headers: "NATS/1.0\r\nX-A: caf\u{e9}\r\n\r\n".as_bytes(),
        beside: &[],
        expect: Expect::Forwarded(&["caf\u{e9}".as_bytes()]),
    },
    Case {
        name: "a name repeated",
        headers: b"NATS/1.0\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        beside: &[],
        expect: Expect::Forwarded(&[b"1", b"2"]),
    },
    Case {
        name: "an empty value",
        headers: b"NATS/1.0\r\nX-A:\r\n\r\n",
        beside: &[],
        expect: Expect::Forwarded(&[b""]),
    },
    Case {
        name: "no header at all",
        headers: b"NATS/1.0\r\n\r\n",
        beside: &[],
        expect: Expect::Forwarded(&[]),
    },
    Case {
        name: "a long value (60 KiB)",
        headers: LONG,
        beside: &[],
        expect: Expect::Refused,
    },
    Case {
        name: "a space in a name",
        headers: b"NATS/1.0\r\nX Bad: 1\r\n\r\n",
        beside: &[],
        expect: Expect::DropsConnection,
    },
    Case {
        name: "a space before the colon",
        headers: b"NATS/1.0\r\nX-Bad : 1\r\n\r\n",
        beside: &[],
        expect: Expect::DropsConnection,
    },
    Case {
        name: "a cr inside a name",
        headers: b"NATS/1.0\r\nX\rBad: 1\r\n\r\n",
        beside: &[],
        expect: Expect::DropsConnection,
    },
    Case {
        name: "a line without a colon",
        headers: b"NATS/1.0\r\nX-Bad\r\n\r\n",
        beside: &[],
        expect: Expect::DropsConnection,
    },
    Case {
        name: "a status that is not a number",
        headers: b"NATS/1.0 abc\r\n\r\n",
        beside: &[],
        expect: Expect::DropsConnection,
    },
    Case {
        name: "a header block that is not utf-8",
        headers: b"NATS/1.0\r\nX-A: \xff\xfe\r\n\r\n",
        beside: &[],
        expect: Expect::DropsConnection,
    },
];

/// 60 KiB of value: under the server's max_payload, over the route's max_header_bytes.
const LONG: &[u8] = {
    const N: usize = 60 * 1024;
    const HEAD: &[u8] = b"NATS/1.0\r\nX-A: ";
    const TAIL: &[u8] = b"\r\n\r\n";
    static BYTES: [u8; HEAD.len() + N + TAIL.len()] = {
        let mut out = [b'v'; HEAD.len() + N + TAIL.len()];
        let mut i = 0;
        while i < HEAD.len() {
            out[i] = HEAD[i];
            i += 1;
        }
        let mut j = 0;
        while j < TAIL.len() {
            out[HEAD.len() + N + j] = TAIL[j];
            j += 1;
        }
        out
    };
    &BYTES
};

struct Bed {
    upstream: Upstream,
    ricochet: Ricochet,
    client: async_nats::Client,
    prefix: String,
}

impl Bed {
    async fn start() -> Self {
        let upstream = Upstream::echo().await;
        let prefix = unique("hostile");
        let admin = free_port();
        let routes = format!(
            "[[routes]]\nname = \"echo\"\nsubject = \"{prefix}.{{id}}\"\nmethod = \"POST\"\npath = \"/echo/{{id}}\"\n[routes.validate]\nmax_header_bytes = 8192\n"
        );
        let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
        Self {
            upstream,
            ricochet,
            client: nats().await,
            prefix,
        }
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&self.ricochet.metrics().await, name, labels)
    }

    async fn disconnects(&self) -> f64 {
        let labels = ["event=\"disconnected\""];
        self.metric("ricochet_nats_connection_events_total", &labels)
            .await
    }

    /// A good request is answered (after a reconnect, if one is under way).
    async fn answers_a_good_request(&self) {
        let subject = format!(
            "{}.good{}",
            self.prefix,
            nuid::next().to_string().to_lowercase()
        );
        eventually(Duration::from_secs(20), "a good request answered", || {
            let (client, subject) = (self.client.clone(), subject.clone());
            async move {
                let asked = client.request(subject, Bytes::from_static(b"ok"));
                match tokio::time::timeout(Duration::from_millis(500), asked).await {
                    Ok(Ok(reply)) => holds(reply.payload == "ok", format!("{reply:?}")),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }

    async fn live_and_ready(&self) {
        let (status, body) = self.ricochet.admin_get("/healthz").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        self.ricochet.wait_ready().await;
    }
}

#[tokio::test]
async fn each_hostile_header_block_costs_at_most_its_own_message() {
    let bed = Bed::start().await;
    let mut raw = Raw::connect().await;
    let inbox = format!("_INBOX.{}", nuid::next());
    let mut replies = bed.client.subscribe(format!("{inbox}.>")).await.unwrap();
    bed.client.flush().await.unwrap();
    let mut drops = 0.0;
    for (n, case) in CASES.iter().enumerate() {
        let subject = format!("{}.case{n}", bed.prefix);
        let reply_to = format!("{inbox}.{n}");
        let before = bed.disconnects().await;
        let said = raw
            .send(&hpub(subject.as_bytes(), &reply_to, case.headers, b"body"))
            .await;
        assert!(
            said.contains("PONG\r\n"),
            "{}: the server said {said}",
            case.name
        );
        assert!(
            !said.contains("-ERR"),
            "{}: the server said {said}",
            case.name
        );
        match case.expect {
            Expect::Forwarded(values) => {
                let reply = next(&mut replies, case.name).await;
                assert_eq!(reply.subject.as_str(), reply_to, "{}", case.name);
                assert_eq!(status(&reply), "200", "{}: {reply:?}", case.name);
                let path = format!("/echo/case{n}");
                let seen = (bed.upstream.seen().into_iter())
                    .find(|s| s.path_and_query == path)
                    .unwrap_or_else(|| panic!("{}: the service was called", case.name));
                let got: Vec<&[u8]> = (seen.headers.get_all("x-a").iter())
                    .map(|v| v.as_bytes())
                    .collect();
                assert_eq!(got, values, "{}", case.name);
                assert!(seen.headers.get("host").is_none_or(|h| h != "evil.example"));
                for (name, value) in case.beside {
                    let got = seen.headers.get(*name).map(|v| v.as_bytes());
                    assert_eq!(got, *value, "{}: {name}", case.name);
                }
            }
            Expect::Refused => {
                let reply = next(&mut replies, case.name).await;
                assert_eq!(reply.subject.as_str(), reply_to, "{}", case.name);
                assert_eq!(status(&reply), "400", "{}: {reply:?}", case.name);
                let path = format!("/echo/case{n}");
                assert!(
                    !bed.upstream.seen().iter().any(|s| s.path_and_query == path),
                    "{}: the service was not called",
                    case.name
                );
            }
            Expect::DropsConnection => {
                drops += 1.0;
                eventually(Duration::from_secs(10), "the drop counted", || async {
                    let now = bed.disconnects().await;
                    holds(
                        now == before + 1.0,
                        format!("{now} disconnects, {before} before"),
                    )
                })
                .await;
            }
        }
        bed.answers_a_good_request().await;
        if case.expect != Expect::DropsConnection {
            assert_eq!(
                bed.disconnects().await,
                before,
                "{}: no reconnect",
                case.name
            );
        }
        bed.live_and_ready().await;
    }
    // Only the messages that could not be parsed cost a connection, each one and only one,
    // each with its cause logged and counted; none was answered (nothing else came).
    assert_eq!(bed.disconnects().await, drops);
    let labels = ["event=\"protocol_error\""];
    let counted = bed
        .metric("ricochet_nats_connection_events_total", &labels)
        .await;
    assert_eq!(counted, drops);
    let logs = bed.ricochet.logs();
    let lines = logs
        .matches("the NATS client dropped its connection")
        .count();
    assert_eq!(lines as f64, drops, "{logs}");
    assert!(logs.contains("a header name it cannot parse"), "{logs}");
    assert!(
        !logs.contains("X Bad"),
        "the message's bytes are not logged"
    );
    let stray = tokio::time::timeout(Duration::from_millis(300), replies.next()).await;
    assert!(stray.is_err(), "no other reply: {stray:?}");
}

#[tokio::test]
async fn lying_lengths_and_oversize_blocks_cost_only_the_publisher() {
    let bed = Bed::start().await;
    let before = bed.disconnects().await;
    let subject = format!("{}.liar", bed.prefix);
    let header = b"NATS/1.0\r\nX-A: 1\r\n\r\n";
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "header length over the total",
            format!("HPUB {subject} _INBOX.x 40 20\r\n{}\r\n", "x".repeat(20)).into_bytes(),
        ),
        (
            "a header length that is not a number",
            format!("HPUB {subject} _INBOX.x ab 20\r\n").into_bytes(),
        ),
        (
            "a header block over max_payload",
            hpub(
                subject.as_bytes(),
                "_INBOX.x",
                &[
                    b"NATS/1.0\r\nX-A: ".as_slice(),
                    &vec![b'v'; 2 << 20],
                    b"\r\n\r\n",
                ]
                .concat(),
                b"",
            ),
        ),
        ("a header length that cuts the block short", {
            let mut out = format!("HPUB {subject} _INBOX.x 10 {}\r\n", header.len()).into_bytes();
            out.extend_from_slice(header);
            out.extend_from_slice(b"\r\n");
            out
        }),
    ];
    let mut outcomes = Vec::new();
    for (name, bytes) in attacks {
        let mut raw = Raw::connect().await;
        let said = raw.send(&bytes).await;
        let refused = said.contains("-ERR") || said.ends_with("closed");
        outcomes.push((name, refused));
        bed.answers_a_good_request().await;
        bed.live_and_ready().await;
    }
    // The server refuses the first three and closes the liar's connection; the last it
    // relays as a shorter header block and a longer body, an ordinary message to ricochet.
    // None reaches ricochet as anything it cannot parse: its connection stays.
    let refused: Vec<bool> = outcomes.iter().map(|(_, refused)| *refused).collect();
    assert_eq!(refused, [true, true, true, false], "{outcomes:?}");
    assert_eq!(bed.disconnects().await, before, "{outcomes:?}");
}

#[tokio::test]
async fn a_subject_that_is_not_utf8_drops_the_connection_once_and_nothing_else() {
    let bed = Bed::start().await;
    let before = bed.disconnects().await;
    let mut raw = Raw::connect().await;
    let subject = [bed.prefix.as_bytes(), b".\xff\xfe"].concat();
    let said = raw
        .send(&hpub(&subject, "_INBOX.x", b"NATS/1.0\r\n\r\n", b"x"))
        .await;
    assert!(
        said.contains("PONG\r\n") && !said.contains("-ERR"),
        "relayed: {said}"
    );
    eventually(Duration::from_secs(10), "one reconnect", || async {
        let now = bed.disconnects().await;
        holds(now == before + 1.0, format!("{now}"))
    })
    .await;
    bed.answers_a_good_request().await;
    bed.live_and_ready().await;
    assert_eq!(bed.disconnects().await, before + 1.0);
    assert!(bed.ricochet.logs().contains("bytes that are not UTF-8"));
}

async fn next(replies: &mut async_nats::Subscriber, case: &str) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .unwrap_or_else(|_| panic!("{case}: a reply within 10 s"))
        .unwrap()
}

fn status(reply: &async_nats::Message) -> String {
    header(reply, "Ricochet-Status").unwrap_or_default()
}
