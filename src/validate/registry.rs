//! The schema registry client, used by the validate stage (and the reply's Avro checks):
//! Avro schemas fetched by id from a Confluent-compatible registry and cached for good (a
//! schema id never changes its schema), with their references resolved.
//!
//! The registry API used (`Accept: application/vnd.schemaregistry.v1+json`):
//! - `GET /schemas/ids/{id}`: `{"schema": "...", "schemaType"?: "AVRO", "references"?: [...]}`;
//! - `GET /schemas/ids/{id}/versions`: `[{"subject": "...", "version": 1}]`, to check that an
//!   id is a version of a route's subject;
//! - `GET /subjects/{subject}/versions/{version|latest}`: `{"id", "schema", "references"?}`,
//!   for references and for encoding replies (a pinned version cached for good, the latest
//!   asked for again every `latest_refresh`, and served from the cache while the registry
//!   is down).
//!
//! A 404 (or a schema that is not Avro) is [`RegistryError::Unknown`]: permanent, and
//! remembered for `latest_refresh` so that bogus ids do not each cost a request. Anything
//! else that prevents an answer (no connection, a timeout, any other status, an answer that
//! is not the registry's JSON) is [`RegistryError::Unavailable`]: retryable, and never a
//! reason to let a message through.
//! Each fetch opens its own connection: fetches are rare, the cache answers the rest.
//!
//! Longer than 400 lines: the client, its cache and its error words are one unit; the wire
//! format is `avro.rs`'s.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::warn;

use crate::config::SchemaRegistryConfig;

const ACCEPT: &str = "application/vnd.schemaregistry.v1+json";
/// A registry answer larger than this is not a schema we want to hold.
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// References nested deeper than this are refused (a cycle, or a hostile registry).
const MAX_REFERENCE_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Permanent: the registry does not know it, or what it holds is not a usable schema.
    #[error("{0}")]
    Unknown(String),
    /// Retryable: the registry could not be asked.
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
}

/// A parsed Avro schema with the named schemas its references bring.
#[derive(Debug)]
pub struct AvroSchema {
    pub id: u32,
    pub schema: Schema,
    /// The schemas of its references, for names the main schema uses; each after those it
    /// uses.
    pub references: Vec<Schema>,
}

impl AvroSchema {
    /// Every schema that may define a name the main schema uses, each after those it
    /// uses, the main schema last.
    pub fn schemata(&self) -> Vec<&Schema> {
        self.references
            .iter()
            .chain(std::iter::once(&self.schema))
            .collect()
    }
}

#[derive(Debug)]
pub struct Registry {
    /// `host:port` to connect to.
    address: String,
    host: String,
    /// The URL's path, without a trailing slash; requests are appended to it.
    base_path: String,
    timeout: Duration,
    latest_refresh: Duration,
    by_id: RwLock<HashMap<u32, Arc<AvroSchema>>>,
    /// (subject, id) -> whether the id is a version of the subject.
    membership: RwLock<HashMap<(String, u32), bool>>,
    /// subject -> latest schema and when it was fetched (or last asked for in vain).
    latest: RwLock<HashMap<String, (Arc<AvroSchema>, Instant)>>,
    /// (subject, version) -> its schema, for good: a registered version never changes.
    pinned: RwLock<HashMap<(String, u32), Arc<AvroSchema>>>,
    /// Ids the registry did not know, and when it said so: a stream of messages with a bogus
    /// id is answered from here for `latest_refresh` instead of asking the registry each time
    /// (an id may be registered later, so not for good).
    unknown: RwLock<HashMap<u32, (RegistryError, Instant)>>,
}

/// Unknown ids remembered at most; past it the list starts again.
const MAX_UNKNOWN: usize = 10_000;

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
    /// Present in `/subjects/.../versions/...` answers.
    #[serde(default)]
    id: Option<u32>,
}

#[derive(Deserialize)]
struct Reference {
    subject: String,
    version: i64,
}

#[derive(Deserialize)]
struct SubjectVersion {
    subject: String,
}

impl Registry {
    /// From a validated configuration (an `http://` URL with a host).
    pub fn new(config: &SchemaRegistryConfig) -> Self {
        let uri: Uri = config.url.parse().unwrap_or_default();
        let host = uri.host().unwrap_or("localhost").to_string();
        let port = uri.port_u16().unwrap_or(80);
        Self {
            address: format!("{host}:{port}"),
            host: match uri.port_u16() {
                Some(port) => format!("{host}:{port}"),
                None => host.clone(),
            },
            base_path: uri.path().trim_end_matches('/').to_string(),
            timeout: config.timeout,
            latest_refresh: config.latest_refresh,
            by_id: RwLock::default(),
            membership: RwLock::default(),
            latest: RwLock::default(),
            pinned: RwLock::default(),
            unknown: RwLock::default(),
        }
    }

    /// The schema with this id, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<AvroSchema>, RegistryError> {
        if let Some(found) = self.by_id.read().expect("registry cache").get(&id) {
            return Ok(found.clone());
        }
        if let Some((error, at)) = self.unknown.read().expect("registry cache").get(&id) {
            if at.elapsed() < self.latest_refresh {
                return Err(error.clone());
            }
        }
        let parsed = match self.get(&format!("/schemas/ids/{id}")).await {
            Ok(answer) => self.parse(id, answer).await,
            Err(e) => Err(e),
        };
        let schema = match parsed {
            Ok(schema) => Arc::new(schema),
            Err(e @ RegistryError::Unknown(_)) => {
                let mut unknown = self.unknown.write().expect("registry cache");
                if unknown.len() >= MAX_UNKNOWN {
                    unknown.clear();
                }
                unknown.insert(id, (e.clone(), Instant::now()));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        (self.by_id.write().expect("registry cache")).insert(id, schema.clone());
        Ok(schema)
    }

    /// Whether schema `id` is one of the versions of `subject` (cached).
    pub async fn in_subject(&self, id: u32, subject: &str) -> Result<bool, RegistryError> {
        let key = (subject.to_string(), id);
        if let Some(known) = self.membership.read().expect("registry cache").get(&key) {
            return Ok(*known);
        }
        let versions: Vec<SubjectVersion> =
            match self.get(&format!("/schemas/ids/{id}/versions")).await {
                Ok(versions) => versions,
                Err(RegistryError::Unknown(_)) => Vec::new(),
                Err(e) => return Err(e),
            };
        let member = versions.iter().any(|v| v.subject == subject);
        (self.membership.write().expect("registry cache")).insert(key, member);
        Ok(member)
    }

    /// The schema of `subject` at `version` (cached for good), or its latest (asked for
    /// again every `latest_refresh`). While the registry cannot be asked, the latest schema
    /// cached serves on, as every cached schema does, and is asked for again only
    /// `latest_refresh` later; a 404 ends it.
    pub async fn version(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<Arc<AvroSchema>, RegistryError> {
        let Some(version) = version else {
            return self.latest(subject).await;
        };
        let key = (subject.to_string(), version);
        if let Some(schema) = self.pinned.read().expect("registry cache").get(&key) {
            return Ok(schema.clone());
        }
        let schema = self.fetch_version(subject, &version.to_string()).await?;
        (self.pinned.write().expect("registry cache")).insert(key, schema.clone());
        Ok(schema)
    }

    async fn latest(&self, subject: &str) -> Result<Arc<AvroSchema>, RegistryError> {
        let cached = (self.latest.read().expect("registry cache").get(subject)).cloned();
        if let Some((schema, at)) = &cached {
            if at.elapsed() < self.latest_refresh {
                return Ok(schema.clone());
            }
        }
        let schema = match (self.fetch_version(subject, "latest").await, cached) {
            (Ok(schema), _) => schema,
            (Err(RegistryError::Unavailable(why)), Some((stale, _))) => {
                warn!(subject, error = %why, schema_id = stale.id, "the schema registry is unavailable: the latest schema cached serves on");
                stale
            }
            (Err(e), _) => return Err(e),
        };
        let mut cache = self.latest.write().expect("registry cache");
        cache.insert(subject.to_string(), (schema.clone(), Instant::now()));
        Ok(schema)
    }

    /// `GET /subjects/{subject}/versions/{label}`, its schema parsed (or cached by id).
    async fn fetch_version(
        &self,
        subject: &str,
        label: &str,
    ) -> Result<Arc<AvroSchema>, RegistryError> {
        let answer: SchemaAnswer = self.get(&subject_path(subject, label)).await?;
        let id = answer.id.ok_or_else(|| {
            RegistryError::Unknown(format!("the registry's answer for {subject:?} has no id"))
        })?;
        let cached = (self.by_id.read().expect("registry cache").get(&id)).cloned();
        Ok(match cached {
            Some(schema) => schema,
            None => {
                let parsed = Arc::new(self.parse(id, answer).await?);
                (self.by_id.write().expect("registry cache")).insert(id, parsed.clone());
                parsed
            }
        })
    }

    /// Parses a schema and its references (fetched depth-first, dependencies first).
    async fn parse(&self, id: u32, answer: SchemaAnswer) -> Result<AvroSchema, RegistryError> {
        if let Some(kind) = answer.schema_type.as_deref() {
            if !kind.eq_ignore_ascii_case("AVRO") {
                return Err(RegistryError::Unknown(format!(
                    "schema {id} is a {kind} schema, not Avro"
                )));
            }
        }
        // Every reference, fetched once, with the references it has in turn...
        type Key = (String, i64);
        let key = |r: &Reference| (r.subject.clone(), r.version);
        let roots: Vec<Key> = answer.references.iter().map(key).collect();
        let mut fetched: HashMap<Key, (String, Vec<Key>)> = HashMap::new();
        let mut pending: Vec<(Key, usize)> = roots.iter().map(|k| (k.clone(), 1)).collect();
        while let Some((reference, depth)) = pending.pop() {
            if depth > MAX_REFERENCE_DEPTH {
                return Err(RegistryError::Unknown(format!(
                    "schema {id} has references nested deeper than {MAX_REFERENCE_DEPTH}"
                )));
            }
            if fetched.contains_key(&reference) {
                continue;
            }
            let path = subject_path(&reference.0, &reference.1.to_string());
            let found: SchemaAnswer = self.get(&path).await?;
            let children: Vec<Key> = found.references.iter().map(key).collect();
            pending.extend(children.iter().map(|k| (k.clone(), depth + 1)));
            fetched.insert(reference, (found.schema, children));
        }
        // ...in an order where each comes after those it uses, as the Avro library needs.
        let mut texts = Vec::new();
        let mut placed = std::collections::HashSet::new();
        // Expanded already: a cycle (which Avro names cannot express) is not followed again.
        let mut expanded = std::collections::HashSet::new();
        let mut stack: Vec<(Key, bool)> = roots.into_iter().rev().map(|k| (k, false)).collect();
        while let Some((reference, children_done)) = stack.pop() {
            if children_done {
                if placed.insert(reference.clone()) {
                    texts.push(fetched[&reference].0.clone());
                }
                continue;
            }
            if placed.contains(&reference) || !expanded.insert(reference.clone()) {
                continue;
            }
            stack.push((reference.clone(), true));
            for child in fetched[&reference].1.iter().rev() {
                if !placed.contains(child) {
                    stack.push((child.clone(), false));
                }
            }
        }
        let (schema, references) = Schema::parse_str_with_list(&answer.schema, &texts)
            .map_err(|e| RegistryError::Unknown(format!("schema {id} is not valid Avro: {e}")))?;
        Ok(AvroSchema {
            id,
            schema,
            references,
        })
    }

    /// One GET, its JSON answer decoded; 404 is [`RegistryError::Unknown`].
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, RegistryError> {
        let answer = self.get_once(path).await;
        if let Err(RegistryError::Unavailable(why)) = &answer {
            warn!(path, error = %why, "schema registry request failed");
        }
        answer
    }

    /// Only a 404 says the registry does not know something. Any other failure (a 401 or
    /// 403 of a misconfigured registry, a 5xx, an answer that is not the registry's JSON)
    /// is the registry's, not the message's: retryable, so no message is dead-lettered for it.
    async fn get_once<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, RegistryError> {
        let target = format!("{}{path}", self.base_path);
        let (status, body) = tokio::time::timeout(self.timeout, self.fetch(&target))
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!("no answer within {:?}", self.timeout))
            })??;
        match status {
            StatusCode::OK => serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Unavailable(format!(
                    "the registry's answer to {path} is not understood: {e}"
                ))
            }),
            StatusCode::NOT_FOUND => Err(RegistryError::Unknown(match path {
                p if p.starts_with("/schemas/ids/") => {
                    let id = p["/schemas/ids/".len()..].split('/').next().unwrap_or("");
                    format!("schema id {id} is not in the registry")
                }
                p => format!("{p} is not in the registry"),
            })),
            status => Err(RegistryError::Unavailable(format!(
                "{path} answered {status}"
            ))),
        }
    }

    async fn fetch(&self, target: &str) -> Result<(StatusCode, Bytes), RegistryError> {
        let unavailable = |e: &dyn std::fmt::Display| RegistryError::Unavailable(e.to_string());
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| unavailable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(&e))?;
        tokio::spawn(connection);
        let request = Request::get(target)
            .header(http::header::HOST, &self.host)
            .header(http::header::ACCEPT, ACCEPT)
            .body(Empty::<Bytes>::new())
            .map_err(|e| RegistryError::Unknown(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unavailable(&e))?
            .to_bytes();
        Ok((status, body))
    }
}

/// What a subject's path segment encodes: everything but RFC 3986's unreserved characters
/// (letters, digits, `-`, `.`, `_`, `~`), which some registries match only as written.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn subject_path(subject: &str, version: &str) -> String {
    let segment = match subject {
        // A segment of dots alone would be a dot-segment, which URL normalization removes.
        "." => "%2E".to_string(),
        ".." => "%2E%2E".to_string(),
        _ => utf8_percent_encode(subject, SEGMENT).to_string(),
    };
    format!("/subjects/{segment}/versions/{version}")
}

#[cfg(test)]
mod subject_tests {
    use super::subject_path;

    #[test]
    fn subjects_keep_unreserved_characters_and_encode_the_rest() {
        assert_eq!(
            subject_path("x-replies.v1_a~b", "latest"),
            "/subjects/x-replies.v1_a~b/versions/latest"
        );
        assert_eq!(
            subject_path("orders-value", "3"),
            "/subjects/orders-value/versions/3"
        );
        // Reserved, space, percent and non-ASCII are encoded: a subject stays one segment.
        assert_eq!(
            subject_path("a/b c?d#e%f", "1"),
            "/subjects/a%2Fb%20c%3Fd%23e%25f/versions/1"
        );
        assert_eq!(subject_path("é", "1"), "/subjects/%C3%A9/versions/1");
        assert_eq!(subject_path("..", "1"), "/subjects/%2E%2E/versions/1");
        assert_eq!(subject_path(".", "1"), "/subjects/%2E/versions/1");
        assert_eq!(subject_path("...", "1"), "/subjects/.../versions/1");
    }
}
