//! The rules of a route's `validate` table that need no registry: header bounds, the
//! content-type allow-list, JSON Schema bodies, and the bounded summary for dead letters.

use super::*;
use crate::settings::load_str;

fn rules(validate: &str) -> Rules {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}"#,
    )
    .unwrap();
    let text = format!(
        r#"
        [upstream]
        base_url = "http://127.0.0.1:1"
        [schema_registry]
        url = "http://127.0.0.1:1"
        [[routes]]
        name = "r"
        subject = "orders"
        path = "/orders"
        [routes.validate]
        {}
        "#,
        validate.replace("SCHEMA", &schema.display().to_string())
    );
    let settings = load_str(&text, Vec::new()).unwrap();
    let config = &settings.config;
    let registry = (config.schema_registry.as_ref()).map(|r| Arc::new(Registry::new(r)));
    Rules::new(&config.routes[0], &settings.schemas[0], registry.as_ref()).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    (pairs.iter())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_json_body_passes_as_is_or_lists_its_violations() {
    let rules = rules("format = \"json_schema\"\nschema = \"SCHEMA\"");
    let ok = rules.request(&[], None, br#"{"id": "a", "qty": 2}"#).await;
    assert_eq!(ok, Ok(Passed::AsIs));
    let invalid = (rules.request(&[], None, br#"{"qty": 0}"#).await).unwrap_err();
    assert_eq!(invalid.kind, Failure::Schema);
    assert_eq!(
        invalid.detail,
        "the message does not match the schema (2 violations)"
    );
    let paths: Vec<_> = (invalid.violations.iter())
        .map(|v| (v.instance_path.as_str(), v.schema_path.as_str()))
        .collect();
    assert!(paths.contains(&("", "/required")), "{paths:?}");
    assert!(
        paths.contains(&("/qty", "/properties/qty/minimum")),
        "{paths:?}"
    );
    let not_json = (rules.request(&[], None, b"<order/>").await).unwrap_err();
    assert_eq!(not_json.kind, Failure::Decode);
}

#[tokio::test]
async fn content_types_outside_the_allow_list_are_refused() {
    let rules = rules("content_types = [\"application/json\"]");
    let with = |t: &'static str| rules.request(&[], Some(t), b"{}");
    assert_eq!(with("application/json").await, Ok(Passed::AsIs));
    assert_eq!(
        with("Application/JSON; charset=utf-8").await,
        Ok(Passed::AsIs)
    );
    let refused = with("text/xml").await.unwrap_err();
    assert_eq!(refused.kind, Failure::ContentType);
    assert!(refused.detail.contains("text/xml"), "{}", refused.detail);
    let none = (rules.request(&[], None, b"{}").await).unwrap_err();
    assert_eq!(none.kind, Failure::ContentType);
}

#[tokio::test]
async fn header_count_and_size_are_bounded() {
    let rules = rules("max_headers = 2\nmax_header_bytes = 20");
    let two = headers(&[("a", "1"), ("b", "2")]);
    assert_eq!(rules.request(&two, None, b"").await, Ok(Passed::AsIs));
    let three = headers(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let refused = rules.request(&three, None, b"").await.unwrap_err();
    assert_eq!(refused.kind, Failure::Headers);
    assert!(refused.detail.contains("3 headers"), "{}", refused.detail);
    let big = headers(&[("x-big", &"v".repeat(16))]);
    let refused = rules.request(&big, None, b"").await.unwrap_err();
    assert_eq!(refused.kind, Failure::Headers);
    assert!(refused.detail.contains("21 bytes"), "{}", refused.detail);
}

#[tokio::test]
async fn avro_without_a_reachable_registry_is_never_let_through() {
    let rules = rules("format = \"avro\"");
    // Not the wire format: the message's fault.
    let refused = rules.request(&[], None, b"{}").await.unwrap_err();
    assert_eq!(refused.kind, Failure::Decode);
    // The registry cannot be reached: retryable, not passed.
    let refused = (rules.request(&[], None, &[0, 0, 0, 0, 1, 2]).await).unwrap_err();
    assert_eq!(refused.kind, Failure::RegistryUnavailable);
}

#[test]
fn texts_and_summaries_are_bounded() {
    let long = "x".repeat(5000);
    let violation = Violation::new(&long, "/type", &long);
    assert_eq!(violation.message.chars().count(), MAX_VIOLATION_TEXT);
    assert!(violation.message.ends_with('…'));
    assert_eq!(violation.instance_path.chars().count(), MAX_VIOLATION_TEXT);
    // At the limit: kept whole; one past it: cut. Multi-byte characters count as one.
    let exact = "é".repeat(MAX_VIOLATION_TEXT);
    assert_eq!(Violation::whole(&exact).message, exact);
    let over = format!("{exact}é");
    let cut = Violation::whole(&over).message;
    assert_eq!(cut.chars().count(), MAX_VIOLATION_TEXT);
    assert_eq!(cut, format!("{}…", "é".repeat(MAX_VIOLATION_TEXT - 1)));
    assert_eq!(Violation::whole("").message, "");
    // The number docs/validation.md gives is the one held here.
    let docs = include_str!("../../docs/validation.md");
    let promise = format!("each text at most\n{MAX_VIOLATION_TEXT} characters");
    assert!(
        docs.contains(&promise),
        "docs/validation.md says {promise:?}"
    );
    let invalid = Invalid {
        kind: Failure::Schema,
        detail: "d".into(),
        violations: vec![violation; MAX_VIOLATIONS],
    };
    let summary = invalid.summary();
    assert!(summary.len() <= MAX_DETAIL_HEADER, "{}", summary.len());
    assert!(summary.starts_with("xxx"));
    let line = Invalid::new(Failure::Headers, "two\nlines").summary();
    assert_eq!(line, "two lines");
}
