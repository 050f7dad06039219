//! AMQP hostile input: requests whose header tables carry every field type RabbitMQ takes
//! and the values a careless or hostile publisher sends (line breaks, NUL, bytes that are
//! not UTF-8, very long values, empty and odd names), published by an independent client
//! (`common/amqp_client.py`: pika writing the typed tables given, byte for byte). For each
//! the service gets the header that docs/security.md ("AMQP header values") promises, or
//! the request is refused with 400 and dead-lettered with its table unchanged; the next
//! good request is answered, and the connection is the one ricochet started with.

mod common;

use common::amqp::{self, client};
use common::*;
use serde_json::{json, Value};

/// What the service gets for one case.
enum Expect {
    /// The header (lower case), with exactly these bytes, once.
    Header(String, Vec<u8>),
    /// The header with these values, in this order.
    Values(&'static str, &'static [&'static str]),
    /// Nothing of this name: the route never forwards it.
    Absent(&'static str),
    /// Refused: a 400 with this error, dead-lettered.
    Refused(String),
}

struct Case {
    name: &'static str,
    table: Value,
    expect: Expect,
}

fn text(name: &str, value: &str) -> Expect {
    Expect::Header(name.to_string(), value.as_bytes().to_vec())
}

fn unreadable(name: &str, why: &str) -> Expect {
    Expect::Refused(format!(
        "header {name:?} cannot become an HTTP header: its value is {why}"
    ))
}

fn invalid(name: &str) -> Expect {
    Expect::Refused(format!("header {name:?} is not a valid HTTP header"))
}

/// One header per case, `[name, AMQP type letter, value]` as `amqp_client.py` writes them.
fn corpus() -> Vec<Case> {
    let one = |name: &'static str, header: Value, expect| Case {
        name,
        table: json!([header]),
        expect,
    };
    let long_name = format!("X-{}", "n".repeat(253));
    vec![
        // Every field type.
        one("bool", json!(["X-Bool", "t", true]), text("x-bool", "true")),
        one(
            "bool-false",
            json!(["X-Bool", "t", false]),
            text("x-bool", "false"),
        ),
        one("int8", json!(["X-I8", "b", -128]), text("x-i8", "-128")),
        one("uint8", json!(["X-U8", "B", 255]), text("x-u8", "255")),
        one(
            "int16",
            json!(["X-I16", "s", -32768]),
            text("x-i16", "-32768"),
        ),
        one(
            "uint16",
            json!(["X-U16", "u", 65535]),
            text("x-u16", "65535"),
        ),
        one(
            "int32",
            json!(["X-I32", "I", i32::MIN]),
            text("x-i32", "-2147483648"),
        ),
        one(
            "uint32",
            json!(["X-U32", "i", u32::MAX]),
            text("x-u32", "4294967295"),
        ),
        one(
            "int64",
            json!(["X-I64", "l", i64::MIN]),
            text("x-i64", "-9223372036854775808"),
        ),
        one("float", json!(["X-F32", "f", 1.5]), text("x-f32", "1.5")),
        one(
            "double",
            json!(["X-F64", "d", -0.25]),
            text("x-f64", "-0.25"),
        ),
        one(
            "double-large",
            json!(["X-F64", "d", 6.02e23]),
            text("x-f64", "602000000000000000000000"),
        ),
        one(
            "decimal",
            json!(["X-Dec", "D", [2, 150]]),
            text("x-dec", "1.50"),
        ),
        one(
            "decimal-negative",
            json!(["X-Dec", "D", [1, -15]]),
            text("x-dec", "-1.5"),
        ),
        one(
            "long-string",
            json!(["X-Tenant", "S", "acme"]),
            text("x-tenant", "acme"),
        ),
        one(
            "long-string-utf8",
            json!(["X-Greeting", "S", "grüße"]),
            text("x-greeting", "grüße"),
        ),
        one(
            "long-string-empty",
            json!(["X-Empty", "S", ""]),
            text("x-empty", ""),
        ),
        one(
            "byte-array-utf8",
            json!(["Authorization", "x", "Bearer abc.def"]),
            text("authorization", "Bearer abc.def"),
        ),
        one(
            "byte-array-binary",
            json!(["X-Bin", "x", {"hex": "0102ff"}]),
            unreadable("X-Bin", "a byte array that is not UTF-8"),
        ),
        one(
            "long-string-binary",
            json!(["X-Latin1", "S", {"hex": "e9"}]),
            unreadable("X-Latin1", "a long string that is not UTF-8"),
        ),
        one(
            "timestamp",
            json!(["X-Sent", "T", 1_700_000_000u64]),
            text("x-sent", "1700000000"),
        ),
        one(
            "table",
            json!(["X-Tab", "F", [["k", "S", "v"]]]),
            unreadable("X-Tab", "a field table"),
        ),
        one(
            "array",
            json!(["X-Arr", "A", [["I", 1], ["S", "two"]]]),
            unreadable("X-Arr", "a field array"),
        ),
        one("void", json!(["X-Void", "V", null]), text("x-void", "")),
        // Hostile values.
        one(
            "crlf-in-string",
            json!(["X-Inject", "S", "a\r\nX-Evil: 1"]),
            invalid("X-Inject"),
        ),
        one(
            "crlf-in-byte-array",
            json!(["X-Inject", "x", "a\r\nX-Evil: 1"]),
            invalid("X-Inject"),
        ),
        one(
            "lf-in-byte-array",
            json!(["X-Inject", "x", "a\nb"]),
            invalid("X-Inject"),
        ),
        one(
            "nul-in-string",
            json!(["X-Nul", "S", "a\u{0}b"]),
            invalid("X-Nul"),
        ),
        one(
            "nul-in-byte-array",
            json!(["X-Nul", "x", {"hex": "610062"}]),
            invalid("X-Nul"),
        ),
        one(
            "long-value",
            json!(["X-Long", "S", {"repeat": "a", "times": 65536}]),
            Expect::Header("x-long".into(), vec![b'a'; 65536]),
        ),
        one(
            "long-byte-array",
            json!(["X-Long", "x", {"repeat": "b", "times": 65536}]),
            Expect::Header("x-long".into(), vec![b'b'; 65536]),
        ),
        one(
            "long-name",
            json!([long_name, "S", "v"]),
            text(&long_name.to_lowercase(), "v"),
        ),
        one("empty-name", json!(["", "S", "v"]), invalid("")),
        one(
            "empty-name-table",
            json!(["", "F", []]),
            unreadable("", "a field table"),
        ),
        one(
            "crlf-in-name",
            json!(["X-A\r\nX-Evil", "S", "v"]),
            invalid("X-A\r\nX-Evil"),
        ),
        one("space-in-name", json!(["X A", "S", "v"]), invalid("X A")),
        // Unreadable, but never forwarded: the route's deny list, a reserved name, the
        // broker's own header.
        one(
            "denied-table",
            json!(["X-Denied", "F", [["k", "S", "v"]]]),
            Expect::Absent("x-denied"),
        ),
        one(
            "reserved-table",
            json!(["Ricochet-Anything", "F", []]),
            Expect::Absent("ricochet-anything"),
        ),
        one(
            "broker-header",
            json!(["x-death", "A", [["F", [["queue", "S", "q"]]]]]),
            Expect::Absent("x-death"),
        ),
        // One name in two cases: both reach the service.
        Case {
            name: "same-name-two-cases",
            table: json!([["X-Case", "S", "a"], ["x-case", "x", "b"]]),
            expect: Expect::Values("x-case", &["a", "b"]),
        },
        // A name twice in one table (AMQP says names are unique; pika cannot send it):
        // lapin reads the table into a map, so the last value is the one ricochet sees.
        Case {
            name: "duplicate-name",
            table: json!([["X-Dup", "S", "first"], ["X-Dup", "S", "last"]]),
            expect: Expect::Values("x-dup", &["last"]),
        },
    ]
}

/// The cases that docs/sources/amqp.md's header-value table shows, with what its "sent"
/// column says of each.
const DOCUMENTED: [(&str, &str); 24] = [
    ("bool", "true"),
    ("bool-false", "false"),
    ("int8", "-128"),
    ("uint8", "255"),
    ("int16", "-32768"),
    ("uint16", "65535"),
    ("int32", "-2147483648"),
    ("uint32", "4294967295"),
    ("int64", "-9223372036854775808"),
    ("float", "1.5"),
    ("double", "-0.25"),
    ("double-large", "6.02e23"),
    ("decimal", "scale 2, value 150"),
    ("decimal-negative", "scale 1, value -15"),
    ("long-string", "acme"),
    ("long-string-utf8", "grüße"),
    ("long-string-empty", "(empty)"),
    ("long-string-binary", "bytes e9"),
    ("byte-array-utf8", "Bearer abc.def"),
    ("byte-array-binary", "bytes 01 02 ff"),
    ("timestamp", "1700000000"),
    ("void", "(no value)"),
    ("table", "{k: v}"),
    ("array", "[1, two]"),
];

/// The rows of the table under `## Header values` in docs/sources/amqp.md.
fn documented_rows() -> Vec<Vec<String>> {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sources/amqp.md"))
            .unwrap();
    let section = page.split("## Header values").nth(1).expect("the section");
    (section.lines())
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            (l.trim_matches('|').split(" | "))
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The first `code` span of a cell.
fn code(cell: &str) -> Option<&str> {
    cell.split('`').nth(1)
}

#[test]
fn the_documented_mapping_is_the_one_the_corpus_holds() {
    let corpus = corpus();
    let rows = documented_rows();
    assert_eq!(rows.len(), DOCUMENTED.len(), "{rows:?}");
    for row in &rows {
        let [kind, sent, gets] = &row[..] else {
            panic!("three cells: {row:?}")
        };
        let (name, _) = (DOCUMENTED.iter())
            .find(|(_, s)| s == sent)
            .unwrap_or_else(|| panic!("a corpus case sends {sent:?}"));
        let case = corpus.iter().find(|c| c.name == *name).unwrap();
        assert_eq!(
            code(kind),
            case.table[0][1].as_str(),
            "{name}: the type letter"
        );
        let documented = match gets.strip_prefix("refused: ") {
            Some(why) => Expect::Refused(format!(
                "header {:?} cannot become an HTTP header: its value is {why}",
                case.table[0][0].as_str().unwrap()
            )),
            None if gets.starts_with("the empty value") => text("", ""),
            None => text("", code(gets).expect("a code span")),
        };
        match (&documented, &case.expect) {
            (Expect::Refused(doc), Expect::Refused(tested)) => assert_eq!(doc, tested, "{name}"),
            (Expect::Header(_, doc), Expect::Header(_, tested)) => {
                assert_eq!(doc, tested, "{name}")
            }
            _ => panic!("{name}: the page says {gets:?}"),
        }
    }
    // The other pages name every type the table does.
    for page in ["docs/security.md", "docs/message-contract.md"] {
        let text =
            std::fs::read_to_string(format!("{}/{page}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for kind in [
            "boolean",
            "integer",
            "float",
            "double",
            "decimal",
            "timestamp",
            "void",
            "long string",
            "byte array",
            "field table",
            "field array",
        ] {
            assert!(text.contains(kind), "{page} names {kind}");
        }
    }
}

fn header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["headers"][name].as_str()
}

/// A table's entries as `(name, type, raw bytes)`, sorted: ricochet's copy need not keep
/// the order (lapin reads a table into a map), but every entry byte for byte.
fn entries(table: &Value, skip_ours: bool) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = (table.as_array().unwrap().iter())
        .map(|e| (e[0].to_string(), e[1].to_string(), e[3].to_string()))
        .filter(|(name, _, _)| !(skip_ours && name.starts_with("\"Ricochet-")))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn every_field_type_and_hostile_value_gets_its_documented_header_or_a_400_and_a_dead_letter()
{
    let queue = unique("ricochet.test.hostile.");
    let (dlx, dlq) = (unique("ricochet.test.dlx."), unique("ricochet.test.dlq."));
    client(json!({"op": "declare", "exchanges": [[dlx, "fanout"]], "queues": [dlq], "bindings": [[dlq, dlx, ""]]})).await;
    let upstream = Upstream::echo().await;
    let routes = amqp::route(
        "hostile",
        &queue,
        &queue,
        "[routes.request_headers]\ndeny = [\"x-denied\"]",
        &format!("dead_letter_exchange = \"{dlx}\""),
    );
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let connection = amqp::connection_of("hostile").expect("ricochet's connection is listed");

    let corpus = corpus();
    let cases: Vec<Value> = (corpus.iter())
        .map(|c| json!({"name": c.name, "table": c.table}))
        .collect();
    let answer =
        client(json!({"op": "cases", "routing_key": queue, "cases": cases, "timeout": 15})).await;
    let results = answer["cases"].as_array().unwrap();
    let seen = upstream.seen();
    let letters = client(json!({"op": "get", "queue": dlq, "count": 100, "timeout": 3})).await;
    let letters = letters["messages"].as_array().unwrap();
    let mut refused = 0;
    for (case, result) in corpus.iter().zip(results) {
        let name = case.name;
        let reply = &result["reply"];
        assert!(reply.is_object(), "{name}: answered: {result}");
        // The next good request is answered: the bad one cost nothing else.
        assert_eq!(
            header(&result["good"], "Ricochet-Status"),
            Some("200"),
            "{name}: the next request is answered: {result}"
        );
        let status = header(reply, "Ricochet-Status");
        let called = seen.iter().find(|s| s.body.as_ref() == name.as_bytes());
        match &case.expect {
            Expect::Refused(error) => {
                refused += 1;
                assert_eq!(status, Some("400"), "{name}: {reply}");
                assert_eq!(header(reply, "Ricochet-Error"), Some("bad_request"));
                let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
                assert_eq!(body["error"], error.as_str(), "{name}");
                assert!(called.is_none(), "{name}: the service never sees it");
                let letter = (letters.iter())
                    .find(|l| l["body"] == name)
                    .unwrap_or_else(|| panic!("{name}: dead-lettered"));
                assert_eq!(
                    header(letter, "Ricochet-Dead-Letter-Reason"),
                    Some("bad_request"),
                    "{name}"
                );
                assert_eq!(
                    header(letter, "Ricochet-Dead-Letter-Detail"),
                    Some(error.as_str()),
                    "{name}"
                );
                // The request's own table, byte for byte, beside ricochet's headers.
                assert_eq!(
                    entries(&letter["table"], true),
                    entries(&result["sent"], false),
                    "{name}: the dead letter keeps the table"
                );
            }
            expected => {
                assert_eq!(status, Some("200"), "{name}: {reply}");
                let called = called.unwrap_or_else(|| panic!("{name}: the service is called"));
                let values = |header: &str| -> Vec<Vec<u8>> {
                    (called.headers.get_all(header).iter())
                        .map(|v| v.as_bytes().to_vec())
                        .collect()
                };
                match expected {
                    Expect::Header(header, bytes) => {
                        assert_eq!(values(header.as_str()), vec![bytes.clone()], "{name}")
                    }
                    Expect::Values(header, texts) => {
                        let texts: Vec<Vec<u8>> =
                            texts.iter().map(|t| t.as_bytes().to_vec()).collect();
                        assert_eq!(values(header), texts, "{name}")
                    }
                    Expect::Absent(header) => assert!(values(header).is_empty(), "{name}"),
                    Expect::Refused(_) => unreachable!(),
                }
            }
        }
    }
    assert_eq!(letters.len(), refused, "only the refused are dead-lettered");
    assert_eq!(
        amqp::connection_of("hostile").as_deref(),
        Some(connection.as_str()),
        "one connection throughout"
    );
    assert!(
        !ricochet.logs().contains("AMQP connection lost"),
        "{}",
        ricochet.logs()
    );
    let depth = client(json!({"op": "depth", "queues": [queue]})).await;
    assert_eq!(depth[&queue]["messages"], 0, "every request settled");
    assert_eq!(ricochet.admin_get("/healthz").await.unwrap().0, 200);
    ricochet.wait_ready().await;
    client(json!({"op": "delete", "queues": [queue, dlq], "exchanges": [dlx]})).await;
}

#[tokio::test]
async fn a_header_name_lapin_cannot_read_is_set_aside_by_a_quorum_queues_delivery_limit() {
    // lapin cannot parse a header name that is not UTF-8: the connection fails on that
    // delivery, every time. The documented defence: a quorum queue with a delivery limit and
    // a dead-letter exchange of its own.
    let queue = unique("ricochet.test.badname.");
    let (dlx, dlq) = (unique("ricochet.test.dlx."), unique("ricochet.test.dlq."));
    client(json!({"op": "declare", "exchanges": [[dlx, "fanout"]], "queues": [dlq], "bindings": [[dlq, dlx, ""]]})).await;
    let arguments =
        json!({"x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": dlx});
    client(json!({"op": "declare", "queues": [queue], "arguments": arguments})).await;
    let upstream = Upstream::echo().await;
    let routes = amqp::route("badname", &queue, &queue, "", "queue_type = \"quorum\"");
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;

    let table = json!([[{"hex": "58ff"}, "S", "v"], ["X-Ok", "S", "1"]]);
    let poison = client(
        json!({"op": "rpc", "routing_key": queue, "table": table, "body": "poison", "timeout": 1}),
    )
    .await;
    assert_eq!(poison["answered"], 0, "{poison}");
    let good =
        client(json!({"op": "rpc", "routing_key": queue, "body": "good", "timeout": 30})).await;
    assert_eq!(good["answered"], 1, "the next request is answered: {good}");
    let letters = client(json!({"op": "get", "queue": dlq, "count": 1, "timeout": 10})).await;
    let letter = &letters["messages"][0];
    assert_eq!(letter["body"], "poison", "{letters}");
    assert!(
        (letter["table"].as_array().unwrap().iter()).any(|e| e[0] == json!({"hex": "58ff"})),
        "set aside as it was sent: {letter}"
    );
    assert!(
        upstream.seen().iter().all(|s| s.body.as_ref() != b"poison"),
        "the service never sees it"
    );
    let losses = ricochet.logs().matches("AMQP connection lost").count();
    assert!(
        (1..=3).contains(&losses),
        "one lost connection per delivery of it: {losses}"
    );
    ricochet.wait_ready().await;
    client(json!({"op": "delete", "queues": [queue, dlq], "exchanges": [dlx]})).await;
}

#[tokio::test]
async fn a_delivery_that_breaks_the_connection_every_time_backs_the_reconnects_off() {
    // Without a delivery limit the request lapin cannot read comes back after every
    // reconnect; ricochet waits longer each time (100 ms doubling to 4 s) instead of
    // reconnecting many times a second.
    let queue = unique("ricochet.test.badname.");
    let upstream = Upstream::echo().await;
    let routes = amqp::route("badname-again", &queue, &queue, "", "");
    let admin = free_port();
    let ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;
    let started = std::time::Instant::now();
    // The name lapin cannot read sits in a nested table here.
    let table = json!([["X-Tab", "F", [[{"hex": "c328"}, "S", "v"]]]]);
    let poison =
        client(json!({"op": "rpc", "routing_key": queue, "table": table, "timeout": 5})).await;
    assert_eq!(poison["answered"], 0, "{poison}");
    // Counted before the time is taken: every loss counted happened within it.
    let losses = ricochet.logs().matches("AMQP connection lost").count();
    let elapsed = started.elapsed();
    // Each loss but the last is followed by its pause: count the pauses that fit.
    let (mut pause, mut waited, mut allowed) = (0.1f64, 0.0, 1);
    while waited + pause <= elapsed.as_secs_f64() {
        waited += pause;
        pause = (pause * 2.0).min(4.0);
        allowed += 1;
    }
    println!("{losses} lost connections in {elapsed:?} (at most {allowed} with the backoff)");
    assert!(
        (1..=allowed).contains(&losses),
        "{losses} lost connections in {elapsed:?}"
    );
    client(json!({"op": "delete", "queues": [queue]})).await;
}
