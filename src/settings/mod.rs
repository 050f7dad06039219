//! The whole configuration file, put together: the top of the configuration's module graph.
//!
//! [`Settings`] is what `ricochet check` validates and prints and what `run` and every
//! reload start from: the shared sections and each route's common part ([`Config`], from
//! `crate::config`, the bottom layer), each route's source part ([`SourceConfig`], from
//! `source/<name>/config.rs`), and each route's compiled JSON Schemas. Loading collects
//! EVERY problem with its key path, in this order:
//!
//! 1. the TOML and the environment's overrides (`config::Document`);
//! 2. per route: its source part by its source's type (`routes[2].kafka.group_id`), a key
//!    of another source reported as such; its common part; the checks of each; its path
//!    template against its subject (needs `mapping`); its JSON Schemas compiled (needs
//!    `validate::json`);
//! 3. across routes (names unique), the shared sections, and what needs both: each
//!    route's HTTP deadline against its broker's own deadline, Avro against the registry.
//!
//! The checks that need `mapping` or `validate` are here rather than in `config` because
//! those modules sit above `config` (they read its types): moving the parsers down would
//! put request mapping and schema compilation into the configuration layer.
//!
//! The file format is unchanged by the split: `source = "kafka"` (absent: `nats`), the
//! source's route-level keys and its `[routes.<name>]` table sit in the route's table.

use std::path::Path;

use toml::Value;

use crate::config::{self, Config, ConfigError, ConfigErrors, Document, RouteConfig};
use crate::mapping::PathTemplate;
use crate::route::Pattern;
use crate::source::SourceConfig;
use crate::validate::json::{CompiledSchemas, JsonSchema};

#[cfg(test)]
mod tests;

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shared sections and the common part of each route (`config.routes`).
    pub config: Config,
    /// Each route's source part, parallel to `config.routes`.
    pub sources: Vec<SourceConfig>,
    /// Each route's JSON Schemas, parallel to `config.routes`.
    pub schemas: Vec<CompiledSchemas>,
}

impl Settings {
    /// The pipeline of these settings, told what each route's source is.
    pub fn pipeline(&self) -> anyhow::Result<crate::pipeline::Pipeline> {
        let queue_group = &self.config.nats.queue_group;
        let sources = (self.config.routes.iter())
            .zip(&self.sources)
            .map(|(route, source)| source.facts(route, queue_group))
            .collect();
        crate::pipeline::Pipeline::new(&self.config, sources, &self.schemas)
    }
}

/// Loads `path`, applies the process environment, deserializes and validates.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    let text = config::read_file(path)?;
    load_str(&text, std::env::vars())
}

/// Like [`load`], from text and an explicit environment (for tests).
pub fn load_str(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigErrors> {
    let mut document = Document::parse(text, env)?;
    let raw_routes = document.take_routes();
    let count = raw_routes.len();
    let mut errors = Vec::new();
    let mut names = Vec::with_capacity(count);
    let mut routes = Vec::with_capacity(count);
    for (index, raw) in raw_routes.into_iter().enumerate() {
        let prefix = format!("routes[{index}]");
        let (raw, source) = match raw {
            Value::Table(mut table) => {
                let (source, more) = SourceConfig::take(&document, &prefix, &mut table);
                errors.extend(more);
                (Value::Table(table), source)
            }
            // Not a table: the common part's deserialization says so.
            other => (other, None),
        };
        let (route, more) = document.route(index, raw);
        errors.extend(more);
        let Some(route) = route else {
            continue;
        };
        let mut push = |key: &str, message: String| {
            errors.push(ConfigError::new(format!("{prefix}.{key}"), message))
        };
        check_path(&route, &mut push);
        names.push((index, route.name.clone()));
        // Checked and typed even when its source part has problems, so that the checks
        // across settings below still run and report theirs.
        if let Some(source) = &source {
            source.check(&route, &mut push);
        }
        let schemas = compile(&route, &mut push);
        routes.push((index, route, source, schemas));
    }
    errors.extend(config::check_across(&names, count));
    let (config, more) = document.finish();
    errors.extend(more);
    let Some(mut config) = config else {
        return Err(ConfigErrors(errors));
    };
    for (index, route, source, _) in &routes {
        if let Some(source) = source {
            let deadline = route.total_timeout_or(&config.upstream);
            source.check_deadline(deadline, &mut |key: &str, message: String| {
                errors.push(ConfigError::new(format!("routes[{index}].{key}"), message))
            });
        }
    }
    let common: Vec<(usize, &RouteConfig)> = (routes.iter()).map(|(i, r, ..)| (*i, r)).collect();
    errors.extend(config::check_registry(&config, &common));
    errors.extend(config::check_reply_stores(&common));
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let (mut sources, mut schemas) = (Vec::new(), Vec::new());
    for (index, route, source, compiled) in routes {
        // A source part that could not be read was reported; this is a safety net.
        let Some(source) = source else {
            let message = "its source's settings could not be read";
            return Err(ConfigErrors(vec![ConfigError::new(
                format!("routes[{index}]"),
                message,
            )]));
        };
        config.routes.push(route);
        sources.push(source);
        schemas.push(compiled);
    }
    Ok(Settings {
        config,
        sources,
        schemas,
    })
}

/// The path template against the subject's captures. With a bad subject (reported by the
/// common checks), the path is still checked, minus whether its names are captured.
fn check_path(route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
    let capture_names = match Pattern::parse(&route.subject) {
        Ok(pattern) => pattern.capture_names().to_vec(),
        Err(_) => (route.path.split('{').skip(1))
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
            .collect(),
    };
    if let Err(e) = PathTemplate::parse(&route.path, &capture_names) {
        push("path", e.to_string());
    }
}

/// Reads and compiles the route's JSON Schemas.
fn compile(route: &RouteConfig, push: &mut dyn FnMut(&str, String)) -> CompiledSchemas {
    let Some(validate) = &route.validate else {
        return CompiledSchemas::default();
    };
    let mut load = |key: &str, path: &Path| match JsonSchema::load(path) {
        Ok(schema) => Some(schema),
        Err(e) => {
            push(key, e.to_string());
            None
        }
    };
    let request = (validate.schema.as_deref()).and_then(|p| load("validate.schema", p));
    let response = (validate.response.as_ref())
        .and_then(|r| r.schema.as_deref())
        .and_then(|p| load("validate.response.schema", p));
    CompiledSchemas { request, response }
}

impl Settings {
    /// The configuration as TOML, as `ricochet check --print` shows it: every default
    /// written out, secrets redacted, each route's source part back in its table. It loads
    /// back as the same settings.
    pub fn printable(&self) -> Result<String, toml::ser::Error> {
        let mut value = Value::try_from(&self.config)?;
        if let Some(Value::Array(routes)) = (value.as_table_mut()).and_then(|t| t.get_mut("routes"))
        {
            for (route, source) in routes.iter_mut().zip(&self.sources) {
                if let Value::Table(route) = route {
                    route.extend(source.to_table()?);
                }
            }
        }
        config::redact(&mut value);
        toml::to_string(&value)
    }

    /// The routes with their source parts.
    pub fn routes(&self) -> impl Iterator<Item = (&RouteConfig, &SourceConfig)> {
        self.config.routes.iter().zip(&self.sources)
    }
}
