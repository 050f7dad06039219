//! Reading a configuration: TOML file, then environment overrides, then typed
//! deserialization and cross-field validation, reporting every problem with its key path.
//! The machinery is here ([`Document`]); `crate::settings` drives it through the whole
//! file, routes' source parts included.
//!
//! serde stops at the first error. To report them all, a failed key is recorded and removed
//! from the document and deserialization runs again, until it succeeds or a problem cannot
//! be stepped over (a missing required key).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::wording::{plain, syntax_error};
use super::{Config, RouteConfig};

/// Environment variables starting with this override configuration keys.
/// `RICOCHET__UPSTREAM__BASE_URL` sets `upstream.base_url`; `RICOCHET__ROUTES__0__TIMEOUT`
/// sets `routes[0].timeout`.
pub const ENV_PREFIX: &str = "RICOCHET__";

/// One problem, with the key it concerns (`routes[1].method`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        writeln!(f, "invalid configuration ({count} {noun}):")?;
        for error in &self.0 {
            writeln!(f, "  - {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Reads the configuration file's text.
pub fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read the configuration file: {e}"),
        )])
    })
}

/// A configuration file being read: its TOML with the environment's overrides applied,
/// the keys they set, and the problems found so far. `settings` takes the routes out, reads
/// each route's common part ([`Document::route`]) and source part ([`Document::deserialize`]
/// with its type), then the rest ([`Document::finish`]).
#[derive(Debug)]
pub struct Document {
    table: Table,
    env_keys: HashSet<String>,
    errors: Vec<ConfigError>,
}

impl Document {
    /// Parses `text` and applies `RICOCHET__...` overrides from `env`; a TOML syntax error
    /// is the only problem that stops here.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![syntax_error(text, &e)]))?;
        let (env_keys, errors) = apply_env(&mut table, env);
        Ok(Self {
            table,
            env_keys,
            errors,
        })
    }

    /// Takes the `[[routes]]` out, so that each is read on its own and a problem in one
    /// does not hide those of others.
    pub fn take_routes(&mut self) -> Vec<Value> {
        match self.table.remove("routes") {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.errors.push(ConfigError::new(
                    "routes",
                    "expected a list of [[routes]] tables",
                ));
                Vec::new()
            }
        }
    }

    /// Deserializes `value` found at key path `prefix` as a `T`, reporting every bad key;
    /// see [`deserialize_all`].
    pub fn deserialize<T: DeserializeOwned>(
        &self,
        value: Value,
        prefix: &str,
    ) -> (Option<T>, Vec<ConfigError>) {
        deserialize_all(value, prefix, &self.env_keys)
    }

    /// The common part of route `routes[index]` (its source's keys already taken out),
    /// deserialized and checked on its own.
    pub fn route(&self, index: usize, value: Value) -> (Option<RouteConfig>, Vec<ConfigError>) {
        let prefix = format!("routes[{index}]");
        let (route, mut errors) = self.deserialize::<RouteConfig>(value, &prefix);
        if let Some(route) = &route {
            errors.extend(super::validate_route::route(&prefix, route));
        }
        (route, errors)
    }

    /// The rest of the file (everything but the routes), deserialized and checked, with
    /// every problem found since [`Document::parse`]. `routes` stays empty.
    pub fn finish(self) -> (Option<Config>, Vec<ConfigError>) {
        let mut errors = self.errors;
        let (config, more) =
            deserialize_all::<Config>(Value::Table(self.table), "", &self.env_keys);
        errors.extend(more);
        if let Some(config) = &config {
            errors.extend(super::validate::top(config));
        }
        (config, errors)
    }
}

/// The keys of a struct `T` as serde reads them (renames applied), in field order: the
/// keys a source owns on a route, so that the file format is its type's fields.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field names a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Applies `RICOCHET__A__B=value` overrides as strings; returns the keys it set
/// (`routes[0].timeout`), which [`deserialize_all`] may retype (see there).
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> (HashSet<String>, Vec<ConfigError>) {
    let mut keys = HashSet::new();
    let mut errors = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        match set_path(table, &path, raw) {
            Ok(key) => {
                keys.insert(key);
            }
            Err(message) => errors.push(ConfigError::new(format!("environment {name}"), message)),
        }
    }
    (keys, errors)
}

/// Sets the value at `path`, creating tables on the way (and appending a table to a list
/// when the index is one past its end). Returns the key path.
fn set_path(table: &mut Table, path: &[String], raw: String) -> Result<String, String> {
    if path.iter().any(|s| s.is_empty()) {
        return Err("empty key segment".into());
    }
    let (first, rest) = path.split_first().ok_or("empty key")?;
    let mut key = first.clone();
    let mut current = table
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    for segment in rest {
        current = match current {
            Value::Table(t) => {
                key.push('.');
                key.push_str(segment);
                t.entry(segment.clone())
                    .or_insert_with(|| Value::Table(Table::new()))
            }
            Value::Array(items) => {
                let index: usize = segment
                    .parse()
                    .map_err(|_| format!("{segment:?} is not an index into a list"))?;
                if index == items.len() {
                    items.push(Value::Table(Table::new()));
                }
                key.push_str(&format!("[{index}]"));
                items
                    .get_mut(index)
                    .ok_or_else(|| format!("index {index} is past the end of the list"))?
            }
            _ => return Err(format!("cannot set {segment:?} inside a plain value")),
        };
    }
    *current = Value::String(raw);
    Ok(key)
}

/// Keys whose values never appear in an error message.
const SECRET_KEYS: [&str; 3] = ["password", "token", "seed"];

/// Deserializes `value`, collecting one error per bad key instead of stopping at the first.
/// A bad key is removed (so its default applies) and deserialization runs again; the result
/// is the value with those defaults, so later checks still see the rest of the document.
///
/// Environment overrides arrive as strings. Where a key in `env_keys` turns out to need
/// another type (a number, a boolean), its text is read as a TOML value instead; so `"1234"`
/// stays a string for a password and becomes a number for `max_in_flight`.
fn deserialize_all<T: DeserializeOwned>(
    mut value: Value,
    prefix: &str,
    env_keys: &HashSet<String>,
) -> (Option<T>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut retyped: HashSet<String> = HashSet::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => return (Some(parsed), errors),
            Err(error) => error,
        };
        let mut segments: Vec<Segment> = error.path().iter().cloned().collect();
        let full_message = error.inner().to_string();
        let message = full_message.lines().next().unwrap_or_default();
        if let Some(field) = quoted_field(message, "unknown field `") {
            // serde_path_to_error usually ends the path with the unknown key already.
            if !matches!(segments.last(), Some(Segment::Map { key }) if *key == field) {
                segments.push(Segment::Map { key: field });
            }
        } else if let Some(field) = quoted_field(message, "missing field `") {
            let mut key_segments = segments.clone();
            key_segments.push(Segment::Map { key: field });
            let key = key_path(prefix, &key_segments);
            // A key we removed because its value was bad is already reported.
            if !removed.contains(&key) {
                errors.push(ConfigError::new(key, "required key is missing"));
            }
            return (None, errors);
        }
        let key = key_path(prefix, &segments);
        if env_keys.contains(&key) && retyped.insert(key.clone()) {
            if let Some(slot) = value_at(&mut value, &segments) {
                if let Value::String(text) = slot {
                    if let Ok(mut parsed) = format!("v = {text}").parse::<Table>() {
                        if let Some(typed) = parsed.remove("v") {
                            *slot = typed;
                            continue;
                        }
                    }
                }
            }
        }
        // An unknown key lists every key there is: cut. An unknown name keeps its choices.
        let message = if message.starts_with("unknown field") {
            message.split(", expected one of").next().unwrap_or(message)
        } else {
            message
        };
        // serde quotes the offending value; a secret's value must not be echoed.
        let message = if SECRET_KEYS.iter().any(|s| key.ends_with(s)) {
            "invalid value (not shown: it is a secret); expected a string".to_string()
        } else {
            plain(message)
        };
        errors.push(ConfigError::new(key.clone(), message));
        if !removed.insert(key) || !remove_at(&mut value, &segments) {
            return (None, errors);
        }
    }
}

fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest[..rest.find('`')?].to_string())
}

fn key_path(prefix: &str, segments: &[Segment]) -> String {
    let mut key = prefix.to_string();
    for segment in segments {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    if key.is_empty() {
        key.push_str("(top level)");
    }
    key
}

fn value_at<'v>(value: &'v mut Value, segments: &[Segment]) -> Option<&'v mut Value> {
    let mut current = value;
    for segment in segments {
        current = match (segment, current) {
            (Segment::Map { key }, Value::Table(t)) => t.get_mut(key)?,
            (Segment::Seq { index }, Value::Array(a)) => a.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(current)
}

fn remove_at(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    match (last, value_at(value, parents)) {
        (Segment::Map { key }, Some(Value::Table(t))) => t.remove(key).is_some(),
        // A bad list element: empty the list so the rest of the document is still checked.
        (Segment::Seq { .. }, Some(Value::Array(a))) => {
            a.clear();
            true
        }
        _ => false,
    }
}
