//! JSON Schema, for the validate stage and the reply's check: a schema file compiled once when
//! the configuration is loaded (so `ricochet check` reports one that does not compile), then
//! applied to each message body. Drafts 2020-12 (the default when `$schema` names none) and
//! 7, as the `jsonschema` crate detects them. Schemas must be self-contained: a `$ref` to
//! another file or URL is not fetched, and `check` refuses it naming the reference.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Violation, MAX_VIOLATIONS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("{path} is not JSON: {error}")]
    NotJson { path: PathBuf, error: String },
    #[error("{path} is not a valid JSON Schema: {error}")]
    Invalid { path: PathBuf, error: String },
    #[error("{path} refers to {reference} (a `$ref` outside the file): remote references are not fetched; copy what it refers to into the schema's `$defs` and refer to it as \"#/$defs/...\"")]
    RemoteRef { path: PathBuf, reference: String },
}

/// Fetches nothing, and remembers what it was asked for, so that the error can say in
/// ricochet's words which reference is external (jsonschema's own text names a cargo
/// feature). Fetching at start-up would make a route depend on a network it may not reach.
#[derive(Default, Clone)]
struct NoFetch(Arc<std::sync::Mutex<Option<String>>>);

impl jsonschema::Retrieve for NoFetch {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        // A relative reference (`other.json`) resolves against the default base URI.
        let shown = uri.as_str().trim_start_matches("json-schema:///");
        let shown = crate::config::redact_url(shown);
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert(shown);
        }
        Err("remote references are not fetched".into())
    }
}

/// A compiled JSON Schema; cloning shares it.
#[derive(Clone)]
pub struct JsonSchema {
    validator: Arc<jsonschema::Validator>,
    pub path: PathBuf,
    /// The schema as compiled: a reload compares it to tell a route whose schema file
    /// changed.
    document: Arc<serde_json::Value>,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonSchema({})", self.path.display())
    }
}

/// Why a body does not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Not JSON at all.
    NotJson(String),
    /// JSON, with these violations (at most [`MAX_VIOLATIONS`]) of `total`.
    Violations { first: Vec<Violation>, total: usize },
}

impl JsonSchema {
    /// Reads and compiles the schema at `path`.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|e| SchemaError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| SchemaError::NotJson {
                path: path.to_path_buf(),
                error: e.to_string(),
            })?;
        Self::compile(&value, path)
    }

    pub fn compile(schema: &serde_json::Value, path: &Path) -> Result<Self, SchemaError> {
        let asked = NoFetch::default();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .with_retriever(asked.clone())
            .build(schema)
            .map_err(|e| match asked.0.lock().ok().and_then(|mut a| a.take()) {
                Some(reference) => SchemaError::RemoteRef {
                    path: path.to_path_buf(),
                    reference,
                },
                None => SchemaError::Invalid {
                    path: path.to_path_buf(),
                    error: e.to_string(),
                },
            })?;
        Ok(Self {
            validator: Arc::new(validator),
            path: path.to_path_buf(),
            document: Arc::new(schema.clone()),
        })
    }

    /// The schema document it was compiled from.
    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// Checks a body: JSON text conforming to the schema.
    pub fn check(&self, body: &[u8]) -> Result<(), Mismatch> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| Mismatch::NotJson(e.to_string()))?;
        self.check_value(&value)
    }

    /// Checks a parsed value.
    pub fn check_value(&self, value: &serde_json::Value) -> Result<(), Mismatch> {
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let mut first = Vec::new();
        let mut total = 0;
        for error in self.validator.iter_errors(value) {
            total += 1;
            if first.len() < MAX_VIOLATIONS {
                first.push(Violation::new(
                    error.instance_path().as_str(),
                    error.schema_path().as_str(),
                    &error.to_string(),
                ));
            }
        }
        Err(Mismatch::Violations { first, total })
    }
}

/// A route's JSON Schemas (`validate.schema`, `validate.response.schema`), compiled once
/// when the configuration loads (`settings`), so that `ricochet check` reports a missing or
/// broken schema with its key path and `run` never compiles one per message.
#[derive(Debug, Clone, Default)]
pub struct CompiledSchemas {
    /// `validate.schema`.
    pub request: Option<JsonSchema>,
    /// `validate.response.schema`.
    pub response: Option<JsonSchema>,
}

impl CompiledSchemas {
    /// Whether both hold the same schema documents (a file's content may change while its
    /// path stays).
    pub fn same_documents(&self, other: &Self) -> bool {
        let document = |schema: &Option<JsonSchema>| schema.as_ref().map(|s| s.document().clone());
        document(&self.request) == document(&other.request)
            && document(&self.response) == document(&other.response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: serde_json::Value) -> JsonSchema {
        JsonSchema::compile(&value, Path::new("test.json")).unwrap()
    }

    #[test]
    fn conforming_bodies_pass_and_violations_name_where_and_why() {
        let order = schema(json!({
            "type": "object",
            "required": ["id", "qty"],
            "properties": {"id": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}
        }));
        assert_eq!(order.check(br#"{"id": "a", "qty": 2}"#), Ok(()));
        let Err(Mismatch::Violations { first, total }) = order.check(br#"{"id": 7, "qty": 0}"#)
        else {
            panic!("expected violations");
        };
        assert_eq!(total, 2);
        let id = first.iter().find(|v| v.instance_path == "/id").unwrap();
        assert_eq!(id.schema_path, "/properties/id/type");
        assert!(id.message.contains("string"), "{}", id.message);
        let qty = first.iter().find(|v| v.instance_path == "/qty").unwrap();
        assert_eq!(qty.schema_path, "/properties/qty/minimum");
        assert!(matches!(
            order.check(b"{not json"),
            Err(Mismatch::NotJson(_))
        ));
    }

    #[test]
    fn drafts_2020_12_and_7_are_both_understood() {
        // prefixItems exists in 2020-12 only; draft 7 ignores it.
        let tuple = |draft: &str| {
            schema(json!({"$schema": draft, "type": "array", "prefixItems": [{"type": "string"}]}))
        };
        let modern = tuple("https://json-schema.org/draft/2020-12/schema");
        let seven = tuple("http://json-schema.org/draft-07/schema#");
        assert!(modern.check(b"[1]").is_err());
        assert_eq!(seven.check(b"[1]"), Ok(()));
    }

    #[test]
    fn a_hostile_body_gets_a_bounded_list() {
        let strings = schema(json!({"type": "array", "items": {"type": "string"}}));
        let many: Vec<u32> = (0..1000).collect();
        let body = serde_json::to_vec(&many).unwrap();
        let Err(Mismatch::Violations { first, total }) = strings.check(&body) else {
            panic!("expected violations");
        };
        assert_eq!(total, 1000);
        assert_eq!(first.len(), MAX_VIOLATIONS);
    }

    #[test]
    fn a_remote_ref_is_refused_in_ricochets_words() {
        for (reference, shown) in [
            (
                "https://example.com/schemas/order.json",
                "https://example.com/schemas/order.json",
            ),
            ("other.json#/$defs/x", "other.json"),
            (
                "https://u:pw@example.com/s.json",
                "https://***@example.com/s.json",
            ),
        ] {
            let error = JsonSchema::compile(
                &json!({"type": "object", "properties": {"o": {"$ref": reference}}}),
                Path::new("x.json"),
            )
            .unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, SchemaError::RemoteRef { .. }), "{text}");
            assert!(text.contains(shown), "{text}");
            assert!(text.contains("remote references are not fetched"), "{text}");
            assert!(
                !text.contains("resolve-http") && !text.contains("pw"),
                "{text}"
            );
        }
        // A reference inside the file still works.
        let local = schema(
            json!({"$defs": {"id": {"type": "string"}}, "properties": {"id": {"$ref": "#/$defs/id"}}}),
        );
        assert!(local.check(br#"{"id": 1}"#).is_err());
    }

    #[test]
    fn schemas_that_do_not_compile_or_exist_are_reported() {
        let bad = JsonSchema::compile(&json!({"type": "no-such-type"}), Path::new("x.json"));
        assert!(matches!(bad, Err(SchemaError::Invalid { .. })));
        let missing = JsonSchema::load(Path::new("/nonexistent/schema.json"));
        assert!(matches!(missing, Err(SchemaError::Read { .. })));
    }
}
