//! The configuration side of "the one match over source kinds": [`SourceConfig`] holds one
//! route's source part (one variant per source, each type in `source/<name>/config.rs`),
//! and this module reads it from the route's table, checks it and writes it back for
//! `ricochet check --print`.
//!
//! The file format: a route says `source = "kafka"` (absent: `nats`); the keys of that
//! source's type (its route-level keys and its `[routes.<name>]` table) are taken out of the
//! route's table and read as that type, with `deny_unknown_fields`; the rest is the route's
//! common part, `config::RouteConfig`. A key another source has is reported naming the
//! route's source and its keys, rather than as an unknown key.
//!
//! The variants and their dispatch are generated from the one list in `source/mod.rs`
//! (`sources!`).

use toml::{Table, Value};

use super::SourceConfig;
use crate::config::{ConfigError, Document};

impl SourceConfig {
    /// Takes the source part out of one route's `table` (at key path `prefix`,
    /// `routes[2]`): the `source` key, the keys of that source, and the keys of other
    /// sources (reported). What is left is the route's common part. `None` when the source
    /// part has a problem, reported in the errors.
    pub fn take(
        document: &Document,
        prefix: &str,
        table: &mut Table,
    ) -> (Option<Self>, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let kind = match table.remove("source") {
            None => Some(SourceConfig::kinds()[0]),
            Some(Value::String(name)) => match SourceConfig::kinds().iter().find(|k| **k == name) {
                Some(kind) => Some(*kind),
                None => {
                    let kinds: Vec<String> = (SourceConfig::kinds().iter())
                        .map(|k| format!("{k:?}"))
                        .collect();
                    let why = format!(
                        "{name:?} is not one of the names this key accepts: {}",
                        kinds.join(", ")
                    );
                    errors.push(ConfigError::new(format!("{prefix}.source"), why));
                    None
                }
            },
            Some(other) => {
                let found = match other {
                    Value::Table(_) => "a table",
                    Value::Array(_) => "a list",
                    Value::Integer(_) | Value::Float(_) => "a number",
                    Value::Boolean(_) => "a boolean",
                    _ => "a date",
                };
                let why = format!("expected one name (a string), found {found}");
                errors.push(ConfigError::new(format!("{prefix}.source"), why));
                None
            }
        };
        let own = kind.map_or(&[][..], SourceConfig::keys_of);
        let mut part = Table::new();
        let names: Vec<String> = table.keys().cloned().collect();
        for name in names {
            if own.contains(&name.as_str()) {
                part.insert(name.clone(), table.remove(&name).expect("listed"));
                continue;
            }
            let foreign = (SourceConfig::kinds().iter())
                .any(|k| SourceConfig::keys_of(k).contains(&name.as_str()));
            if !foreign {
                continue; // a common key, or unknown: the common part reports it
            }
            table.remove(&name);
            // With an unknown source, its keys are not judged.
            if let Some(kind) = kind {
                errors.push(ConfigError::new(
                    format!("{prefix}.{name}"),
                    format!(
                        "not a key of a route with source = \"{}\" (its keys: {})",
                        kind,
                        own.join(", ")
                    ),
                ));
            }
        }
        let Some(kind) = kind else {
            return (None, errors);
        };
        if let Some(hint) = SourceConfig::table_hint_of(kind) {
            if !part.contains_key(kind) {
                errors.push(ConfigError::new(format!("{prefix}.{kind}"), hint));
                return (None, errors);
            }
        }
        let (source, more) = SourceConfig::parse(kind, document, Value::Table(part), prefix);
        errors.extend(more);
        (source, errors)
    }

    /// The source part as the route's table says it, `source` included, every default
    /// written out: what [`SourceConfig::take`] reads back as the same.
    pub fn to_table(&self) -> Result<Table, toml::ser::Error> {
        let mut table = match self.to_value()? {
            Value::Table(table) => table,
            _ => Table::new(),
        };
        table.insert("source".into(), Value::String(self.kind().into()));
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_names_its_route_keys() {
        assert_eq!(
            SourceConfig::keys_of("nats"),
            ["delivery", "queue_group", "max_pending"]
        );
        assert_eq!(
            SourceConfig::keys_of("jetstream"),
            ["delivery", "reply_subject", "dead_letter", "jetstream"]
        );
        assert_eq!(SourceConfig::keys_of("kafka"), ["delivery", "kafka"]);
        assert_eq!(SourceConfig::keys_of("amqp"), ["delivery", "amqp"]);
        assert_eq!(
            SourceConfig::kinds(),
            ["nats", "jetstream", "kafka", "amqp", "memory"]
        );
    }
}
