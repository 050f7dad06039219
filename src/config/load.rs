//! Reading a configuration: TOML file, then environment overrides, then typed
//! deserialization and cross-field validation, reporting every problem with its key path.
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
use super::{Config, RouteConfig, RouteFile};

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

/// Loads `path`, applies the process environment, deserializes and validates.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read the configuration file: {e}"),
        )])
    })?;
    load_str(&text, std::env::vars())
}

/// Like [`load`], from text and an explicit environment (for tests).
pub fn load_str(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors(vec![syntax_error(text, &e)]))?;
    let (env_keys, mut errors) = apply_env(&mut table, env);

    // Routes are deserialized one by one, so a problem in one does not hide those of others.
    let raw_routes = match table.remove("routes") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push(ConfigError::new(
                "routes",
                "expected a list of [[routes]] tables",
            ));
            Vec::new()
        }
    };
    let count = raw_routes.len();
    let mut routes = Vec::with_capacity(count);
    let mut names = Vec::with_capacity(count);
    for (index, raw) in raw_routes.into_iter().enumerate() {
        let prefix = format!("routes[{index}]");
        let (route, more) = deserialize_all::<RouteFile>(raw, &prefix, &env_keys);
        errors.extend(more);
        if let Some(route) = route {
            errors.extend(super::validate::route(&prefix, &route));
            names.push((index, route.name.clone()));
            // Typed even with problems (misplaced keys are dropped), so the checks across
            // settings below still run and report theirs.
            if let Some(mut route) = RouteConfig::from_file(route) {
                errors.extend(super::schemas::compile(index, &mut route));
                routes.push((index, route));
            }
        }
    }
    errors.extend(super::validate::across(&names, count));
    let (config, more) = deserialize_all::<Config>(Value::Table(table), "", &env_keys);
    errors.extend(more);
    let Some(mut config) = config else {
        return Err(ConfigErrors(errors));
    };
    errors.extend(super::validate::top(&config));
    errors.extend(super::validate::deadlines(&routes, &config.upstream));
    errors.extend(super::schemas::registry(&routes, &config));
    config.routes = routes.into_iter().map(|(_, route)| route).collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = r#"
        [upstream]
        base_url = "http://127.0.0.1:8080"

        [[routes]]
        name = "get-order"
        subject = "orders.{id}.get"
        method = "GET"
        path = "/orders/{id}"
    "#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn one_thread_by_default_for_every_source() {
        use crate::config::RuntimeThreads;
        let threads = |extra: &str| {
            load_str(&format!("{MINIMAL}{extra}"), no_env())
                .unwrap()
                .runtime_threads()
        };
        assert_eq!(threads(""), RuntimeThreads::Single);
        assert_eq!(
            threads("[runtime]\nworker_threads = 1\n"),
            RuntimeThreads::Single
        );
        assert_eq!(
            threads("[runtime]\nworker_threads = 4\n"),
            RuntimeThreads::Multi(Some(4))
        );
        let kafka = "[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"requests\"\npath = \"/k\"\n[routes.kafka]\nbrokers = \"127.0.0.1:9092\"\nreply_topic = \"replies\"\n";
        assert_eq!(threads(kafka), RuntimeThreads::Single);
        assert_eq!(
            threads(&format!("{kafka}[runtime]\nworker_threads = 2\n")),
            RuntimeThreads::Multi(Some(2))
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = load_str(MINIMAL, no_env()).unwrap();
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.nats.queue_group, "ricochet");
        assert_eq!(config.upstream.request_timeout, Duration::from_secs(5));
        assert_eq!(config.routes[0].max_in_flight, 64);
        assert_eq!(config.admin.listen.port(), 9464);
    }

    #[test]
    fn environment_overrides_any_key() {
        let env = vec![
            (
                "RICOCHET__UPSTREAM__REQUEST_TIMEOUT".to_string(),
                "250ms".to_string(),
            ),
            (
                "RICOCHET__ROUTES__0__MAX_IN_FLIGHT".to_string(),
                "8".to_string(),
            ),
            (
                "RICOCHET__NATS__URL".to_string(),
                "nats://10.0.0.1:4222".to_string(),
            ),
            ("RICOCHET__NATS__PASSWORD".to_string(), "1234".to_string()),
            ("RICOCHET__NATS__USER".to_string(), "svc".to_string()),
            ("RICOCHET__ROUTES__0__NAME".to_string(), "42".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = load_str(MINIMAL, env).unwrap();
        assert_eq!(config.upstream.request_timeout, Duration::from_millis(250));
        assert_eq!(config.routes[0].max_in_flight, 8);
        assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
        // A numeric-looking value stays a string where a string is expected.
        assert_eq!(config.nats.password.unwrap().expose(), "1234");
        assert_eq!(config.routes[0].name, "42");
    }

    #[test]
    fn environment_override_errors_name_the_variable() {
        let env = vec![("RICOCHET__ROUTES__7__NAME".to_string(), "x".to_string())];
        let errors = load_str(MINIMAL, env).unwrap_err().0;
        assert_eq!(errors[0].key, "environment RICOCHET__ROUTES__7__NAME");
    }

    #[test]
    fn a_toml_syntax_error_names_line_column_and_key_never_the_text() {
        let text = format!("{MINIMAL}\n[nats]\nuser = \"svc\"\npassword = \"s3cret\n");
        let errors = load_str(&text, no_env()).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "nats.password");
        let line = text
            .lines()
            .position(|l| l.starts_with("password"))
            .unwrap()
            + 1;
        assert!(
            errors[0]
                .message
                .contains(&format!("line {line}, column 19")),
            "{errors:?}"
        );
        assert!(!format!("{errors:?}").contains("s3cret"), "{errors:?}");
        // Every way a line can be broken around a secret: the secret is never echoed.
        for broken in [
            "password = 's3cretX",
            "password = \"\"\"s3cretX",
            "password = \"\\q s3cretX\"",
            "password = \"a\" s3cretX",
            "password = s3cretX",
            "password = [\"s3cretX\"",
            "password = \"s3cretX\"\npassword = \"s3cretX\"",
            "password = 1979-05-27T07:32:00s3cretX",
            "password = { v = \"s3cretX\" ",
        ] {
            let text = format!("{MINIMAL}\n[nats]\nuser = \"svc\"\n{broken}\n");
            let errors = load_str(&text, no_env()).unwrap_err().0;
            assert!(
                !format!("{errors:?}").contains("s3cretX"),
                "{broken}: {errors:?}"
            );
            assert!(
                errors[0].message.contains("not valid TOML at line"),
                "{broken}: {errors:?}"
            );
        }
        // In a list of tables, the entry is counted; its sub-table belongs to it.
        let text = format!(
            "{MINIMAL}[[routes]]\nname = \"k\"\n[routes.kafka]\nsasl_password = \"hunter2\n"
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        assert_eq!(errors[0].key, "routes[1].kafka.sasl_password");
        assert!(!errors[0].message.contains("hunter2"), "{errors:?}");
    }

    #[test]
    fn serde_texts_are_said_in_ricochets_words() {
        let text = MINIMAL.replace(
            "path = \"/orders/{id}\"",
            "path = \"/orders/{id}\"\ntimeout = { secs = 1, nanos = 0 }\nmax_in_flight = \"many\"\n[routes.source]\nkind = \"nats\"\nmax_pending = 1",
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown.contains(&"routes[0].timeout: expected a duration, found a table".to_string()),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s
                    .starts_with("routes[0].source: expected one name (a string), found a table")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("routes[0].max_in_flight: expected")
                    && s.ends_with("found a string")),
            "{shown:?}"
        );
        let text = MINIMAL.replace(
            "path = \"/orders/{id}\"",
            "path = \"/orders/{id}\"\nmax_in_flight = -1\nsuccess_statuses = [70000]\nsource = \"pigeon\"",
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        let shown: Vec<String> = (errors.iter().map(ToString::to_string))
            .chain(shown)
            .collect();
        for expected in [
            "routes[0].max_in_flight: expected a whole number, 0 or more, found -1",
            "routes[0].success_statuses[0]: expected a whole number from 0 to 65535, found 70000",
            "routes[0].source: \"pigeon\" is not one of the names this key accepts: \"nats\", \"jetstream\", \"kafka\", \"amqp\"",
        ] {
            assert!(shown.contains(&expected.to_string()), "{expected}: {shown:?}");
        }
        for serde_words in [
            "invalid type",
            "invalid value",
            "unknown variant",
            "wanted exactly",
            "more than 1 element",
            "many",
            "usize",
        ] {
            assert!(!shown.iter().any(|s| s.contains(serde_words)), "{shown:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [nats]
            url = "nats://127.0.0.1:4222"
            colour = "blue"

            [upstream]
            base_url = "ftp://example"
            request_timeout = "5 fortnights"

            [admin]
            listen = "not an address"

            [[routes]]
            name = "a"
            subject = "orders..get"
            method = "G T"
            path = "orders/{id}"
            max_in_flight = 0

            [[routes]]
            name = "a"
            subject = "x.{id}"
            path = "/x/{other}"
            max_payload = "12 parsecs"
        "#;
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "nats.colour",
            "upstream.request_timeout",
            "admin.listen",
            "routes[1].max_payload",
            "upstream.base_url",
            "routes[0].subject",
            "routes[0].method",
            "routes[0].path",
            "routes[0].max_in_flight",
            "routes[1].name",
            "routes[1].path",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn resilience_settings_are_checked() {
        let text = format!(
            "{MINIMAL}\nmax_payload = \"1MiB\"\n[routes.retry]\nmax_attempts = 0\nmultiplier = 0.5\njitter = 1.5\nretry_on = [999, \"sometimes\"]\n[routes.circuit_breaker]\nminimum_calls = 500\nmax_break_duration = \"1s\"\n[routes.rate_limit]\nburst_bytes = \"1KiB\"\n"
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].retry.max_attempts",
            "routes[0].retry.multiplier",
            "routes[0].retry.jitter",
            "routes[0].retry.retry_on[1]",
            "routes[0].circuit_breaker.minimum_calls",
            "routes[0].circuit_breaker.max_break_duration",
            "routes[0].rate_limit",
            "routes[0].rate_limit.burst_bytes",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn jetstream_deadline_must_fit_in_ack_wait_without_in_progress() {
        let route = |in_progress: bool| {
            format!(
                "[upstream]\nbase_url = \"http://h:1\"\nrequest_timeout = \"5s\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"a.{{id}}\"\npath = \"/a/{{id}}\"\n[routes.jetstream]\nstream = \"S\"\nack_wait = \"10s\"\nin_progress = {in_progress}\n"
            )
        };
        // 3 attempts of 5 s plus 2 backoffs of up to 2 s: 19 s > 10 s.
        let errors = load_str(&route(false), no_env()).unwrap_err().0;
        assert_eq!(errors[0].key, "routes[0].jetstream.ack_wait");
        assert!(errors[0].message.contains("19s"), "{}", errors[0].message);
        load_str(&route(true), no_env()).expect("in-progress keeps the message alive");
    }

    #[test]
    fn source_specific_keys_are_checked() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"core\"\nsubject = \"a\"\npath = \"/\"\ndelivery = \"at_least_once\"\ndead_letter = \"dlq\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"b\"\npath = \"/\"\nreply_subject = \"r.*\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].delivery",
            "routes[0].dead_letter",
            "routes[1].jetstream",
            "routes[1].reply_subject",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn a_queue_group_belongs_to_core_nats_routes_only() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"b\"\npath = \"/\"\nqueue_group = \"g\"\n[routes.jetstream]\nstream = \"S\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["routes[0].queue_group"]);
        let core = text
            .replace("source = \"jetstream\"\n", "")
            .replace("[routes.jetstream]\nstream = \"S\"\n", "");
        load_str(&core, no_env()).expect("a core route may name its queue group");
    }

    #[test]
    fn max_pending_belongs_to_core_nats_routes_and_defaults_to_max_in_flight() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"b\"\npath = \"/\"\nmax_pending = 3\n[routes.jetstream]\nstream = \"S\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["routes[0].max_pending"]);
        let core = text
            .replace("source = \"jetstream\"\n", "")
            .replace("[routes.jetstream]\nstream = \"S\"\n", "");
        let pending = |text: &str| match &load_str(text, no_env()).unwrap().routes[0].source {
            crate::config::SourceConfig::Nats(nats) => nats.max_pending,
            other => panic!("{other:?}"),
        };
        assert_eq!(pending(&core), 3);
        let default = core.replace("max_pending = 3\n", "max_in_flight = 9\n");
        assert_eq!(pending(&default), 9);
    }

    #[test]
    fn secret_values_are_not_echoed_in_errors() {
        let text = format!("{MINIMAL}\n[nats]\nuser = \"u\"\npassword = 987654321\nurl = \"nats://u:hunter2@h:bad\"\n");
        let errors = load_str(&text, no_env()).unwrap_err();
        let shown = errors.to_string();
        assert!(shown.contains("nats.password"), "{shown}");
        assert!(
            !shown.contains("987654321") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn kafka_settings_are_checked() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\nrequest_timeout = \"60s\"\n[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"t\"\npath = \"/\"\nreply_subject = \"x\"\n[routes.kafka]\nbrokers = \"h:9092\"\ntopic_pattern = \"orders.*\"\nreply_topic = \"bad topic\"\n[routes.kafka.consumer]\n\"enable.auto.commit\" = \"true\"\n\"max.poll.interval.ms\" = \"60000\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].reply_subject",
            "routes[0].kafka.topic_pattern",
            "routes[0].kafka.reply_topic",
            "routes[0].kafka.consumer",
            // 3 x 60 s + backoff is not under half of a 60 s max.poll.interval.ms
            "routes[0].total_timeout",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn amqp_settings_are_checked_with_their_keys_and_no_secret() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"orders.{id}\"\npath = \"/o/{id}\"\ndead_letter = \"x\"\ndelivery = \"exactly_once\"\nmax_in_flight = 70000\n[routes.amqp]\nurl = \"amqp://u:hunter2@h:5672/%2f\"\npassword = \"hunter3\"\nrouting_keys = [\"a.b\"]\nmax_deliver = 0\nredelivery_backoff = []\ndead_letter_routing_key = \"dl\"\n[[routes]]\nname = \"b\"\nsubject = \"s\"\npath = \"/\"\n[routes.amqp]\nurl = \"nope://\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].dead_letter",
            "routes[0].delivery",
            "routes[0].max_in_flight",
            // A subject with wildcards names no queue, and needs an exchange to route it.
            "routes[0].amqp.queue",
            "routes[0].amqp.exchange",
            "routes[0].amqp.routing_keys",
            // Credentials in the URL and in the table.
            "routes[0].amqp.url",
            "routes[0].amqp.max_deliver",
            "routes[0].amqp.redelivery_backoff",
            "routes[0].amqp.dead_letter_routing_key",
            // An [routes.amqp] table on a core NATS route.
            "routes[1].amqp",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let shown = ConfigErrors(errors).to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );

        let bad_url = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"s\"\npath = \"/\"\n[routes.amqp]\nurl = \"http://u:hunter2@h\"\n";
        let errors = load_str(bad_url, no_env()).unwrap_err().0;
        let url = errors
            .iter()
            .find(|e| e.key == "routes[0].amqp.url")
            .expect("the url refused");
        assert!(
            url.message.contains("not an AMQP URL") && !url.message.contains("hunter2"),
            "{}",
            url.message
        );
    }

    #[test]
    fn an_amqp_route_with_a_literal_subject_needs_only_a_url() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"orders.create\"\npath = \"/orders\"\n[routes.amqp]\nurl = \"amqp://127.0.0.1:5672/%2f\"\n";
        let config = load_str(text, no_env()).unwrap();
        let crate::config::SourceConfig::Amqp(amqp) = &config.routes[0].source else {
            panic!("an AMQP route");
        };
        assert_eq!(amqp.delivery, crate::config::Delivery::AtLeastOnce);
        assert_eq!(amqp.settings.max_deliver, 5);
        assert!(amqp.settings.exchange.is_none());
    }

    #[test]
    fn the_micro_service_name_and_version_are_checked() {
        let text = "[nats.service]\nname = \"orders api\"\nversion = \"1.2\"\n[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["nats.service.name", "nats.service.version"]);
        let fine = text
            .replace("orders api", "orders-api")
            .replace("\"1.2\"", "\"1.2.0-rc.1+build.5\"");
        let config = load_str(&fine, no_env()).unwrap();
        assert_eq!(config.nats.service.unwrap().version, "1.2.0-rc.1+build.5");
        for bad in ["01.2.3", "1.2.3-", "1.2.x", "1..3"] {
            let text = fine.replace("1.2.0-rc.1+build.5", bad);
            assert!(load_str(&text, no_env()).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_required_keys_are_reported() {
        let errors = load_str("[[routes]]\nname = \"x\"\n", no_env())
            .unwrap_err()
            .0;
        assert!(errors
            .iter()
            .any(|e| e.key == "upstream" && e.message.contains("missing")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Any text and environment overrides: a config or errors, never a panic, and never
        /// the password's value in an error (whatever else is wrong, wherever it is set).
        #[test]
        fn any_text_and_environment_load_without_panic_or_echoed_secret(
            text in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                "(\\[[a-z.]{1,12}\\]\n|[a-z_]{1,12} = (\"[^\"]{0,8}\"|[0-9]{1,4}|true|\\[\\])\n){0,12}",
            ],
            env in proptest::collection::vec(("[A-Z_0-9]{1,24}", ".{0,12}"), 0..6),
            secret_key in proptest::sample::select(vec![
                "RICOCHET__NATS__PASSWORD", "RICOCHET__NATS__TOKEN", "RICOCHET__NATS__NKEY_SEED",
                "RICOCHET__ROUTES__0__KAFKA__SASL_PASSWORD", "RICOCHET__ROUTES__0__AMQP__PASSWORD",
            ]),
        ) {
            const SECRET: &str = "zq-secret-7c1d";
            let text = format!("{MINIMAL}\n{}", text.replace(SECRET, ""));
            let env: Vec<(String, String)> = (env.into_iter())
                .map(|(name, value)| (format!("{ENV_PREFIX}{name}"), value.replace(SECRET, "")))
                .chain([(secret_key.to_string(), SECRET.to_string())])
                .collect();
            if let Err(errors) = load_str(&text, env) {
                let shown = errors.to_string();
                proptest::prop_assert!(!shown.contains(SECRET), "{}", shown);
            }
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        let errors = load_str("[upstream\n", no_env()).unwrap_err().0;
        assert!(errors[0].message.contains("TOML"));
    }
}
