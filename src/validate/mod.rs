//! Message validation: what a route's `[routes.validate]` table asks of a request before the
//! service is called, and of the service's answer before it becomes the reply. The
//! pipeline's validate stage (`pipeline::validate`) calls [`Rules::request`] once for every
//! source; `Pipeline::process` calls [`Rules::response`] on a 2xx answer.
//!
//! - [`json`]: JSON Schema files, compiled once when the configuration loads;
//! - [`avro`]: the Confluent wire format, decoding and encoding (pure);
//! - [`registry`]: Avro schemas fetched by id from a schema registry, cached.
//!
//! A failure is an [`Invalid`]: what kind it is (the `kind` label of
//! `ricochet_validation_failures_total`), a detail for the caller and, for schema failures,
//! the first violations. Only [`Failure::RegistryUnavailable`] is retryable: a message is
//! never let through unvalidated.
//!
//! Longer than 400 lines: a route's rules for requests and responses, both formats, and the
//! violation type they share.

pub mod avro;
pub mod json;
pub mod registry;

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use self::json::{JsonSchema, Mismatch};
use self::registry::{Registry, RegistryError};
use crate::config::{BodyFormat, RouteConfig};
pub use crate::telemetry::metrics::ValidationFailure as Failure;

/// At most this many violations are listed in an error reply...
pub const MAX_VIOLATIONS: usize = 10;
/// ...each of its texts at most this many characters (the ellipsis of a cut one included)...
pub const MAX_VIOLATION_TEXT: usize = 200;
/// ...and at most this many bytes of them go into a dead letter's header.
pub const MAX_DETAIL_HEADER: usize = 1024;

/// The `Content-Type` of a request decoded to JSON for the service.
pub const JSON: &str = "application/json";
/// The `Content-Type` of a reply that ricochet encoded as Avro (the Avro HTTP transport's).
pub const AVRO: &str = "avro/binary";

/// One way a body does not match its schema, as the error reply lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the message (`/items/0/qty`); empty for the whole body.
    pub instance_path: String,
    /// JSON pointer into the schema (`/properties/items/items/properties/qty/minimum`).
    pub schema_path: String,
    pub message: String,
}

impl Violation {
    pub fn new(instance_path: &str, schema_path: &str, message: &str) -> Self {
        Self {
            instance_path: bounded(instance_path),
            schema_path: bounded(schema_path),
            message: bounded(message),
        }
    }

    /// A failure without a place in the body (decoding, Avro).
    pub fn whole(message: &str) -> Self {
        Self::new("", "", message)
    }
}

/// `text` in at most [`MAX_VIOLATION_TEXT`] characters: a longer one is cut to one less and
/// ends with an ellipsis (which counts).
fn bounded(text: &str) -> String {
    if text.chars().nth(MAX_VIOLATION_TEXT).is_none() {
        return text.to_string();
    }
    let end = (text.char_indices().nth(MAX_VIOLATION_TEXT - 1)).map_or(text.len(), |(end, _)| end);
    format!("{}…", &text[..end])
}

/// Why a message (or a reply) did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Invalid {
    pub kind: Failure,
    /// For the caller: what was wrong, in one sentence (no secrets).
    pub detail: String,
    /// The first violations (at most [`MAX_VIOLATIONS`]).
    pub violations: Vec<Violation>,
}

impl Invalid {
    fn new(kind: Failure, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            kind,
            violations: vec![Violation::whole(&detail)],
            detail,
        }
    }

    fn registry(error: RegistryError) -> Self {
        match error {
            RegistryError::Unknown(detail) => Self::new(Failure::UnknownSchema, detail),
            RegistryError::Unavailable(detail) => Self {
                kind: Failure::RegistryUnavailable,
                detail: format!("the schema registry is unavailable ({detail}); try again later"),
                violations: Vec::new(),
            },
        }
    }

    fn mismatch(mismatch: Mismatch, what: &str) -> Self {
        match mismatch {
            Mismatch::NotJson(error) => {
                Self::new(Failure::Decode, format!("{what} is not JSON: {error}"))
            }
            Mismatch::Violations { first, total } => Self {
                kind: Failure::Schema,
                detail: format!(
                    "{what} does not match the schema ({total} violation{})",
                    if total == 1 { "" } else { "s" }
                ),
                violations: first,
            },
        }
    }

    /// The first violations on one line, for a dead letter's header.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for violation in &self.violations {
            let item = match violation.instance_path.as_str() {
                "" => violation.message.clone(),
                path => format!("{path}: {}", violation.message),
            };
            let separator = if text.is_empty() { "" } else { "; " };
            if text.len() + separator.len() + item.len() > MAX_DETAIL_HEADER {
                break;
            }
            text.push_str(separator);
            text.push_str(&item);
        }
        if text.is_empty() {
            text = bounded(&self.detail);
        }
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// What a request passed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passed {
    /// The service gets the message as it came.
    AsIs,
    /// The service gets this JSON instead (an Avro record decoded), as `application/json`.
    Decoded(Bytes),
}

/// What a request's body must be.
#[derive(Debug)]
enum Body {
    Any,
    Json(JsonSchema),
    Avro {
        subject: Option<String>,
        decode: bool,
    },
}

/// What the service's 2xx body must be, and what becomes of it.
#[derive(Debug)]
struct Response {
    check: Option<ResponseCheck>,
    /// Encode the (JSON) body with this subject's schema: the latest, or this version.
    encode: Option<(String, Option<u32>)>,
}

#[derive(Debug)]
enum ResponseCheck {
    Json(JsonSchema),
    /// Confluent wire format with a version of this subject.
    Avro(String),
}

/// One route's validation, built once at start.
#[derive(Debug)]
pub struct Rules {
    /// Media types without parameters (compared case-insensitively); empty: any.
    content_types: Vec<String>,
    max_headers: Option<usize>,
    max_header_bytes: Option<u64>,
    body: Body,
    response: Option<Response>,
    /// Set when a rule needs Avro schemas (configuration validation makes sure).
    registry: Option<Arc<Registry>>,
}

impl Rules {
    /// The route's rules, `None` when it has no `validate` table.
    pub fn new(
        route: &RouteConfig,
        schemas: &json::CompiledSchemas,
        registry: Option<&Arc<Registry>>,
    ) -> Option<Self> {
        let settings = route.validate.as_ref()?;
        let body = match settings.format {
            None => Body::Any,
            Some(BodyFormat::JsonSchema) => match &schemas.request {
                Some(schema) => Body::Json(schema.clone()),
                None => Body::Any,
            },
            Some(BodyFormat::Avro) => Body::Avro {
                subject: settings.subject.clone(),
                decode: settings.decode.is_some(),
            },
        };
        let response = settings.response.as_ref().map(|r| Response {
            check: match r.format {
                Some(BodyFormat::JsonSchema) => schemas.response.clone().map(ResponseCheck::Json),
                Some(BodyFormat::Avro) => r.subject.clone().map(ResponseCheck::Avro),
                None => None,
            },
            encode: r
                .encode
                .and(r.subject.clone())
                .map(|subject| (subject, r.version)),
        });
        Some(Self {
            content_types: (settings.content_types.iter())
                .map(|t| media_type(t).to_string())
                .collect(),
            max_headers: settings.max_headers,
            max_header_bytes: settings.max_header_bytes.map(|b| b.bytes()),
            body,
            response,
            registry: registry.cloned(),
        })
    }

    /// Checks a request: its headers, content type and body. `content_type` is the message's
    /// (or the route's default).
    pub async fn request(
        &self,
        headers: &[(String, String)],
        content_type: Option<&str>,
        payload: &[u8],
    ) -> Result<Passed, Invalid> {
        self.envelope(headers, content_type)?;
        match &self.body {
            Body::Any => Ok(Passed::AsIs),
            Body::Json(schema) => schema
                .check(payload)
                .map(|()| Passed::AsIs)
                .map_err(|m| Invalid::mismatch(m, "the message")),
            Body::Avro { subject, decode } => {
                let value = self
                    .avro(payload, subject.as_deref(), "the message")
                    .await?;
                if !decode {
                    return Ok(Passed::AsIs);
                }
                let json = avro::to_json(value)
                    .map_err(|e| Invalid::new(Failure::Decode, e.to_string()))?;
                Ok(Passed::Decoded(Bytes::from(json)))
            }
        }
    }

    /// The cheap checks first: header count and size, content type.
    fn envelope(
        &self,
        headers: &[(String, String)],
        content_type: Option<&str>,
    ) -> Result<(), Invalid> {
        if let Some(max) = self.max_headers {
            if headers.len() > max {
                return Err(Invalid::new(
                    Failure::Headers,
                    format!(
                        "the message has {} headers; the route allows {max}",
                        headers.len()
                    ),
                ));
            }
        }
        if let Some(max) = self.max_header_bytes {
            let size: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
            if size as u64 > max {
                return Err(Invalid::new(
                    Failure::Headers,
                    format!("the message's headers take {size} bytes; the route allows {max}"),
                ));
            }
        }
        if !self.content_types.is_empty() {
            let allowed = content_type
                .map(media_type)
                .is_some_and(|t| self.content_types.iter().any(|a| a.eq_ignore_ascii_case(t)));
            if !allowed {
                let detail = match content_type {
                    Some(t) => format!(
                        "Content-Type {t:?} is not one the route accepts ({})",
                        self.content_types.join(", ")
                    ),
                    None => format!(
                        "the message has no Content-Type; the route accepts {}",
                        self.content_types.join(", ")
                    ),
                };
                return Err(Invalid::new(Failure::ContentType, detail));
            }
        }
        Ok(())
    }

    /// The record of a wire-format body, its id known to the registry (and a version of
    /// `subject`, when given).
    async fn avro(
        &self,
        payload: &[u8],
        subject: Option<&str>,
        what: &str,
    ) -> Result<apache_avro::types::Value, Invalid> {
        let id = avro::schema_id(payload)
            .map_err(|e| Invalid::new(Failure::Decode, format!("{what} is {e}")))?;
        let Some(registry) = &self.registry else {
            return Err(Invalid::registry(RegistryError::Unavailable(
                "none is configured".into(),
            )));
        };
        let schema = registry.schema(id).await.map_err(Invalid::registry)?;
        if let Some(subject) = subject {
            let member = registry
                .in_subject(id, subject)
                .await
                .map_err(Invalid::registry)?;
            if !member {
                return Err(Invalid::new(
                    Failure::UnknownSchema,
                    format!("schema id {id} is not a version of subject {subject:?}"),
                ));
            }
        }
        avro::decode(&schema, payload)
            .map_err(|e| Invalid::new(Failure::Decode, format!("{what}: {e}")))
    }

    /// Before the call: the schema that will encode the service's answer is at hand (fetched
    /// now, or cached). A registry that cannot give it is a retryable refusal now, while the
    /// service has not acted, rather than after the call, when a retry would run it twice.
    pub async fn encoding_ready(&self) -> Result<(), Invalid> {
        let Some((subject, version)) = self.response.as_ref().and_then(|r| r.encode.as_ref())
        else {
            return Ok(());
        };
        let Some(registry) = &self.registry else {
            return Err(Invalid::registry(RegistryError::Unavailable(
                "none is configured".into(),
            )));
        };
        (registry.version(subject, *version).await)
            .map(|_| ())
            .map_err(Invalid::registry)
    }

    /// Whether 2xx answers are checked or encoded.
    pub fn has_response_rules(&self) -> bool {
        self.response.is_some()
    }

    /// Checks the service's 2xx body and encodes it if the route asks: `Ok(Some(body))` is
    /// the body to send instead (Avro, [`AVRO`]).
    pub async fn response(&self, body: &[u8]) -> Result<Option<Bytes>, Invalid> {
        let Some(response) = &self.response else {
            return Ok(None);
        };
        const WHAT: &str = "the service's response";
        match &response.check {
            None => {}
            Some(ResponseCheck::Json(schema)) => {
                schema.check(body).map_err(|m| Invalid::mismatch(m, WHAT))?;
            }
            Some(ResponseCheck::Avro(subject)) => {
                self.avro(body, Some(subject), WHAT).await?;
            }
        }
        let Some((subject, version)) = &response.encode else {
            return Ok(None);
        };
        let Some(registry) = &self.registry else {
            return Err(Invalid::registry(RegistryError::Unavailable(
                "none is configured".into(),
            )));
        };
        let schema = registry
            .version(subject, *version)
            .await
            .map_err(Invalid::registry)?;
        let encoded = avro::encode(&schema, body).map_err(|e| Invalid {
            kind: Failure::Schema,
            detail: format!("{WHAT} cannot be encoded with subject {subject:?}: {e}"),
            violations: vec![Violation::whole(&e.to_string())],
        })?;
        Ok(Some(Bytes::from(encoded)))
    }
}

/// `application/json; charset=utf-8` -> `application/json`.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests;
