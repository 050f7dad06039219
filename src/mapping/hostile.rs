//! Hostile input against the message -> HTTP mapping: a property test over generated
//! subjects, tokens and headers, and a corpus of known attacks kept as regression cases.
//!
//! What must hold for every message: no panic; the request keeps the configured scheme,
//! host, port and path prefix; a captured token stays inside its path segment (decoding
//! it gives the token back); and no header ricochet or the broker owns crosses.

use bytes::Bytes;
use http::Request;
use percent_encoding::percent_decode_str;
use proptest::prelude::*;

use super::{MapError, RequestMapping};
use crate::message::Inbound;
use crate::route::Pattern;
use crate::settings::load_str;

const BASE: &str = "https://127.0.0.1:8443/api";
const PREFIX: &str = "/api/orders/";
const SUFFIX: &str = "/items";

/// Never sent as they came from a message.
const OWNED: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "proxy-authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "ricochet-timeout",
    "nats-msg-id",
];

fn mapping() -> (RequestMapping, Pattern) {
    let text = format!(
        "[upstream]\nbase_url = \"{BASE}\"\n[[routes]]\nname = \"r\"\nsubject = \"orders.{{id}}.items\"\nmethod = \"GET\"\npath = \"/orders/{{id}}/items\"\n"
    );
    let config = load_str(&text, Vec::new()).unwrap().config;
    let pattern = Pattern::parse(&config.routes[0].subject).unwrap();
    let mapping = RequestMapping::new(&config.routes[0], &config.upstream, &pattern).unwrap();
    (mapping, pattern)
}

fn message(subject: &str, headers: Vec<(String, String)>, body: &[u8]) -> Inbound {
    Inbound::new(
        subject.to_string(),
        Some("_INBOX.hostile".into()),
        headers,
        Bytes::copy_from_slice(body),
    )
}

/// The request of `token` through the route, as the pipeline builds it.
fn build(token: &str, headers: Vec<(String, String)>) -> Result<Request<Bytes>, MapError> {
    let (mapping, _) = mapping();
    mapping.build(
        &message(&format!("orders.{token}.items"), headers, b""),
        &[token],
    )
}

/// What must be true of every request the mapping lets through.
fn check_contained(request: &Request<Bytes>, token: &str) -> Result<(), TestCaseError> {
    let uri = request.uri();
    prop_assert_eq!(uri.scheme_str(), Some("https"));
    prop_assert_eq!(uri.authority().map(|a| a.as_str()), Some("127.0.0.1:8443"));
    prop_assert!(uri.query().is_none(), "{uri}");
    let path = uri.path();
    prop_assert!(path.starts_with(PREFIX) && path.ends_with(SUFFIX), "{path}");
    let segment = &path[PREFIX.len()..path.len() - SUFFIX.len()];
    prop_assert!(!segment.contains(['/', '?', '#', '\\']), "{segment}");
    prop_assert!(segment != "." && segment != "..", "{segment}");
    let decoded = percent_decode_str(segment).decode_utf8_lossy();
    prop_assert_eq!(decoded.as_ref(), token);
    for name in request.headers().keys() {
        prop_assert!(!OWNED.contains(&name.as_str()), "{name} crossed");
    }
    for value in request.headers().values() {
        prop_assert!(!value
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b'\r' | b'\n' | 0)));
    }
    Ok(())
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(OWNED.to_vec()).prop_map(String::from),
        "[A-Za-z-]{1,20}",
        "\\PC{0,20}",
        any::<String>(),
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,40}", "\\PC{0,40}", any::<String>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any token and headers: an error (a 400), or a request that stays where it must.
    #[test]
    fn a_message_never_leaves_the_configured_origin_and_prefix(
        token in prop_oneof![
            any::<String>(),
            "[./%?#@:;\\\\a-z0-9\\x00\\r\\n]{0,12}",
            "(%2[eEfF]|\\.|/|;|%00|%5[cC]){1,6}",
        ],
        headers in proptest::collection::vec((header_name(), header_value()), 0..8),
    ) {
        if let Ok(request) = build(&token, headers) {
            check_contained(&request, &token)?;
        }
    }

    /// Any subject against the route's pattern: a match or none, never a panic, and a
    /// match always renders a contained request or a clear error.
    #[test]
    fn any_subject_matches_or_not_without_panicking(subject in any::<String>()) {
        let (mapping, pattern) = mapping();
        if let Some(captures) = pattern.matches(&subject) {
            let values = captures.values(&subject);
            let inbound = message(&subject, Vec::new(), b"");
            if let Ok(request) = mapping.build(&inbound, &values) {
                check_contained(&request, values[0])?;
            }
        }
    }
}

/// How a hostile token must end.
enum Expect {
    /// Refused: the message gets a 400.
    Refused,
    /// Sent, encoded so that it stays inside its segment.
    Encoded(&'static str),
}

#[test]
fn hostile_tokens_are_refused_or_encoded_inside_their_segment() {
    let long = "a".repeat(64 * 1024);
    let cases: Vec<(&str, Expect)> = vec![
        ("..", Expect::Refused),
        (".", Expect::Refused),
        ("..;", Expect::Refused),
        ("..;foo", Expect::Refused),
        ("..%2f", Expect::Refused),
        ("a..b", Expect::Refused),
        ("%2e%2e", Expect::Encoded("%252e%252e")),
        ("%2E%2E%2F", Expect::Encoded("%252E%252E%252F")),
        ("%2F", Expect::Encoded("%252F")),
        ("a/b", Expect::Encoded("a%2Fb")),
        ("a\\b", Expect::Encoded("a%5Cb")),
        (";jsessionid=x", Expect::Encoded("%3Bjsessionid%3Dx")),
        ("@evil.example", Expect::Encoded("%40evil.example")),
        ("http:%2F%2Fevil", Expect::Encoded("http%3A%252F%252Fevil")),
        ("a?admin=1", Expect::Refused),
        ("a#frag", Expect::Refused),
        ("a\0b", Expect::Refused),
        ("a\r\nHost: evil", Expect::Refused),
        ("a\nb", Expect::Refused),
        ("\u{7f}", Expect::Refused),
        ("\u{85}", Expect::Refused),
        ("", Expect::Refused),
        ("caf\u{e9}", Expect::Encoded("caf%C3%A9")),
        // What a source makes of invalid UTF-8 (the replacement character).
        ("\u{fffd}", Expect::Encoded("%EF%BF%BD")),
    ];
    for (token, expect) in cases {
        let built = build(token, Vec::new());
        match expect {
            Expect::Refused => assert!(
                matches!(built, Err(MapError::HostileToken { .. })),
                "{token:?}: {built:?}"
            ),
            Expect::Encoded(segment) => {
                let request = built.unwrap_or_else(|e| panic!("{token:?}: {e}"));
                assert_eq!(
                    request.uri().path(),
                    format!("{PREFIX}{segment}{SUFFIX}"),
                    "{token:?}"
                );
                check_contained(&request, token).unwrap();
            }
        }
    }
    // A long token is encoded, not truncated; one too long for a URI is refused (a 400).
    let request = build(&long[..4096], Vec::new()).unwrap();
    check_contained(&request, &long[..4096]).unwrap();
    assert_eq!(build(&long, Vec::new()).unwrap_err(), MapError::Uri);
}

#[test]
fn headers_that_impersonate_what_ricochet_and_the_broker_set_never_cross() {
    let owned: Vec<(String, String)> = [
        ("Host", "evil.example"),
        ("host", "evil.example:80"),
        ("Content-Length", "0"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close, X-Secret"),
        ("X-Secret", "dropped because Connection names it"),
        ("Forwarded", "for=10.0.0.1;proto=https"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Proto", "https"),
        ("Ricochet-Timeout", "1h"),
        ("Ricochet-Status", "200"),
        ("Nats-Msg-Id", "1"),
        ("Proxy-Authorization", "Basic eA=="),
        ("X-Kept", "yes"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let request = build("1", owned).unwrap();
    check_contained(&request, "1").unwrap();
    let names: Vec<&str> = request.headers().keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
    // Host is set by the client from base_url, never from the message (see client.rs).
    assert!(request.headers().get("host").is_none());
}

#[test]
fn header_values_with_cr_lf_or_nul_and_invalid_names_are_refused() {
    for (name, value) in [
        ("X-A", "v\r\nHost: evil"),
        ("X-A", "v\nInjected: 1"),
        ("X-A", "v\0"),
        ("X-A", "v\rw"),
        ("X-A", "v\u{7f}"),
        ("X A", "v"),
        ("X-A\r\n", "v"),
        ("", "v"),
        ("X-\u{e9}", "v"),
    ] {
        let built = build("1", vec![(name.to_string(), value.to_string())]);
        assert!(
            matches!(built, Err(MapError::Header(_))),
            "{name:?}: {value:?}: {built:?}"
        );
    }
    // Text beyond ASCII is passed on as its UTF-8 bytes.
    let request = build("1", vec![("X-Name".into(), "caf\u{e9} \u{2603}".into())]).unwrap();
    assert_eq!(
        request.headers()["x-name"].as_bytes(),
        "caf\u{e9} \u{2603}".as_bytes()
    );
    // An overlong value is passed on as it is (the route's validate.max_header_bytes caps it).
    let long = "v".repeat(64 * 1024);
    let request = build("1", vec![("X-Long".into(), long.clone())]).unwrap();
    assert_eq!(request.headers()["x-long"], long.as_str());
}

#[test]
fn on_core_nats_a_callers_idempotency_key_is_its_own_and_comes_once() {
    // Core NATS sets no Idempotency-Key; a caller's own is forwarded as the caller's, once.
    let request = build("1", vec![("Idempotency-Key".into(), "caller-1".into())]).unwrap();
    let keys: Vec<_> = request
        .headers()
        .get_all("idempotency-key")
        .iter()
        .collect();
    assert_eq!(keys, ["caller-1"]);
    let request = build("1", Vec::new()).unwrap();
    assert!(request.headers().get("idempotency-key").is_none());
}

#[test]
fn a_body_that_is_not_utf8_passes_unchanged() {
    let (mapping, _) = mapping();
    let body = [0xff, 0xfe, 0x00, b'\r', b'\n', 0xc3];
    let request = mapping
        .build(&message("orders.1.items", Vec::new(), &body), &["1"])
        .unwrap();
    assert_eq!(request.body().as_ref(), body);
}
