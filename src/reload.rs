//! Reloading the configuration while running.
//!
//! SIGHUP, or with `reload.watch` a change of the file, reads the file again with the
//! environment overrides. An invalid configuration is refused: every problem is logged
//! with its key and the running generation goes on unchanged. A valid one becomes a new
//! [`Generation`]:
//!
//! 1. its pipeline is built (HTTP client, limits, breakers, validation); an error refuses
//!    the reload;
//! 2. its core NATS routes take over the old generation's subscriptions with the same
//!    subject and queue group (nothing is unsubscribed: see `source/nats/handover.rs`;
//!    not when a queue group changes, below), and
//!    subscribe beside the old ones for the rest, with the same queue groups, so each
//!    request goes to exactly one of them; the server confirms them;
//! 3. the old generation stops: its other subscriptions drain, its consumers stop
//!    fetching, and its messages in flight finish and are settled, within
//!    `shutdown.grace_period`;
//! 4. the new durable consumers (JetStream, Kafka, AMQP) start, after the old ones have
//!    stopped: a Kafka group never holds both, and a transactional producer is never
//!    fenced in the middle of a transaction; messages wait in the broker meanwhile;
//! 5. `/readyz` follows the new generation once its consumers are set up.
//!
//! When a core route's queue group changes, both subscriptions would receive its requests
//! (any old and new subscriptions whose subjects overlap in different groups would), so the
//! old generation stops first and a request arriving in between finds no responder.
//!
//! What outlives a generation (the NATS connection, the admin listener, logging, the
//! runtime's threads) changes only with a restart: such a change is logged, and the running
//! values are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{Config, ReloadConfig};
use crate::generation::{self, Generation, KeptSubscriptions, Nats};
use crate::pipeline::Pipeline;
use crate::route::Pattern;
use crate::settings::{self, Settings};
use crate::telemetry::metrics::{ReloadResult, RELOADS};
use crate::telemetry::HealthSlot;
use crate::ShutdownBudget;

/// How long a reload waits for the server to confirm the new core subscriptions, and for
/// the new consumers to be set up before readiness follows them anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// What asks for a reload: SIGHUP, and the file's changes when watched.
pub struct Triggers {
    path: PathBuf,
    hangup: Signal,
    watch: Option<Watch>,
}

/// Polls the file's modification time and size.
struct Watch {
    every: tokio::time::Interval,
    seen: Option<(SystemTime, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Hangup,
    FileChanged,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::FileChanged => "file changed",
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Triggers {
    /// Listens for SIGHUP from now on; watches `path` when `config.watch`.
    pub fn new(path: PathBuf, config: &ReloadConfig) -> std::io::Result<Self> {
        let mut triggers = Self {
            path,
            hangup: signal(SignalKind::hangup())?,
            watch: None,
        };
        triggers.configure(config);
        Ok(triggers)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the `[reload]` settings of a configuration just applied.
    pub fn configure(&mut self, config: &ReloadConfig) {
        let unchanged = (self.watch.as_ref()).map(|w| w.every.period());
        if !config.watch {
            self.watch = None;
        } else if unchanged != Some(config.watch_interval) {
            let mut every = tokio::time::interval(config.watch_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let seen = stamp(&self.path);
            self.watch = Some(Watch { every, seen });
        }
    }

    /// The next reason to reload.
    pub async fn next(&mut self) -> Trigger {
        let Some(watch) = &mut self.watch else {
            self.hangup.recv().await;
            return Trigger::Hangup;
        };
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    // Whatever the file holds now is read: no second reload for it.
                    watch.seen = stamp(&self.path);
                    return Trigger::Hangup;
                }
                _ = watch.every.tick() => {
                    let now = stamp(&self.path);
                    if now != watch.seen {
                        watch.seen = now;
                        // A file is often written in steps: read it once they are done.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        watch.seen = stamp(&self.path);
                        return Trigger::FileChanged;
                    }
                }
            }
        }
    }
}

/// Reads the file again and, when it is valid, replaces `running` with a new generation
/// (see the module's documentation); returns the generation running afterwards.
pub async fn reload(
    mut running: Generation,
    trigger: Trigger,
    triggers: &mut Triggers,
    nats: &mut Option<Nats>,
    health: &HealthSlot,
) -> Generation {
    let file = triggers.path().display().to_string();
    info!(%file, trigger = trigger.as_str(), "reloading the configuration");
    let refused =
        || metrics::counter!(RELOADS, "result" => ReloadResult::Refused.as_str()).increment(1);
    let loaded = match settings::load(triggers.path()) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for problem in &errors.0 {
                error!(key = %problem.key, problem = %problem.message, "reload refused: invalid configuration");
            }
            error!(%file, problems = errors.0.len(), "reload refused; the running configuration stays");
            refused();
            return running;
        }
    };
    let (new, kept) = keep_restart_only(&running.settings.config, loaded, nats.is_some());
    if !kept.is_empty() {
        warn!(keys = ?kept, "these settings change only with a restart; running with their old values");
    }
    if generation::needs_nats(&new) && nats.is_none() {
        match crate::source::nats::connect(&new.config.nats).await {
            Ok(connection) => *nats = Some(Nats::new(connection)),
            Err(e) => {
                error!(error = %e, "reload refused: the new routes need NATS and its connection settings cannot be used; the running configuration stays");
                refused();
                return running;
            }
        }
    }
    let changes = Changes::between(&running.settings, &new);
    let mut next = match Generation::new(new, nats.clone()) {
        Ok(next) => next,
        Err(e) => {
            error!(error = %format!("{e:#}"), "reload refused; the running configuration stays");
            refused();
            return running;
        }
    };
    let overlap = can_overlap(
        &core_subscriptions(&running.pipeline, &running.settings.config.nats.queue_group),
        &core_subscriptions(&next.pipeline, &next.settings.config.nats.queue_group),
    );
    let grace = next.settings.config.shutdown.grace_period;
    let finished = if overlap {
        // The core subscriptions both configurations make are taken over, not made again.
        let mut kept = running.release_core(&next.core_keys()).await;
        if let Err(e) = next.start_core(&mut kept).await {
            error!(error = %format!("{e:#}"), "reload refused: cannot subscribe the new routes; the running configuration stays");
            running.resume_core(kept);
            next.stop(Duration::from_secs(1)).await;
            refused();
            return running;
        }
        if tokio::time::timeout(SETTLE_LIMIT, next.core_confirmed())
            .await
            .is_err()
        {
            warn!("the server has not confirmed the new core subscriptions yet; stopping the old ones anyway");
        }
        stop_old(running, grace).await
    } else {
        info!("a core route's queue group changed: the old subscriptions drain before the new ones subscribe");
        let finished = stop_old(running, grace).await;
        if let Err(e) = next.start_core(&mut KeptSubscriptions::default()).await {
            error!(error = %format!("{e:#}"), "cannot subscribe the core routes");
        }
        finished
    };
    if let Err(e) = next.start_durable().await {
        error!(error = %format!("{e:#}"), "the NATS micro services API is not answering");
    }
    if !next.wait_ready(SETTLE_LIMIT).await {
        warn!("not every consumer of the new configuration is set up yet; /readyz says so");
    }
    health.set(next.health.clone());
    triggers.configure(&next.settings.config.reload);
    metrics::counter!(RELOADS, "result" => ReloadResult::Applied.as_str()).increment(1);
    info!(
        routes = next.settings.config.routes.len(),
        added = ?changes.added,
        removed = ?changes.removed,
        changed = ?changes.changed,
        upstream_changed = changes.upstream,
        old_messages_finished = finished,
        "configuration reloaded"
    );
    next
}

/// Stops the old generation; its last spans are exported in the background.
async fn stop_old(running: Generation, grace: Duration) -> bool {
    let (finished, pipeline) = running.stop(grace).await;
    let deadline = tokio::time::Instant::now() + ShutdownBudget::MAX_RESERVE;
    tokio::spawn(generation::flush_traces(pipeline, deadline));
    finished
}

/// `new` with the running values of what changes only with a restart, and the keys of
/// those that differ. The NATS connection's settings count only while connected.
fn keep_restart_only(
    running: &Config,
    mut settings: Settings,
    connected: bool,
) -> (Settings, Vec<&'static str>) {
    let new = &mut settings.config;
    let mut kept = Vec::new();
    if connected {
        let mut nats = running.nats.clone();
        nats.queue_group = new.nats.queue_group.clone();
        nats.service = new.nats.service.clone();
        if nats != new.nats {
            kept.push("nats (connection)");
        }
        new.nats = nats;
    }
    if running.admin != new.admin {
        kept.push("admin");
        new.admin = running.admin.clone();
    }
    if running.log != new.log {
        kept.push("log");
        new.log = running.log.clone();
    }
    if running.runtime != new.runtime {
        kept.push("runtime");
        new.runtime = running.runtime.clone();
    }
    (settings, kept)
}

/// The core NATS routes' subscriptions, from the patterns their pipeline parsed: subject
/// pattern and queue group (`default_group` unless the route has its own).
fn core_subscriptions<'a>(
    pipeline: &'a Pipeline,
    default_group: &'a str,
) -> Vec<(&'a Pattern, &'a str)> {
    (pipeline.routes().iter())
        .filter(|r| crate::source::nats::is_core(r))
        .map(|r| {
            let group = r.consumer_group.as_deref().unwrap_or(default_group);
            (&r.pattern, group)
        })
        .collect()
}

/// Whether the new core subscriptions can be made while the old ones still take requests:
/// a request the server hands to an old and a new subscription in different queue groups
/// would be processed twice, so no old subscription may share a subject with a new one in
/// another group. (Same-group subscriptions share each request: one of them gets it.)
fn can_overlap(old: &[(&Pattern, &str)], new: &[(&Pattern, &str)]) -> bool {
    old.iter().all(|(old_subject, old_group)| {
        (new.iter()).all(|(new_subject, new_group)| {
            old_group == new_group || !old_subject.overlaps(new_subject)
        })
    })
}

/// What a reload changes, for its log line: routes by name, and the upstream.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    upstream: bool,
}

impl Changes {
    /// Compared as `check --print` shows them (secrets redacted: a changed password alone
    /// is applied but not listed), and by the content of their schema files: a route whose
    /// schema file changed under the same path is listed as changed.
    fn between(old: &Settings, new: &Settings) -> Self {
        type Shown = (serde_json::Value, Option<toml::Table>);
        let shown = |settings: &Settings| -> BTreeMap<String, Shown> {
            (settings.routes())
                .map(|(r, source)| {
                    let route = serde_json::to_value(r).unwrap_or_default();
                    (r.name.clone(), (route, source.to_table().ok()))
                })
                .collect()
        };
        let (before, after) = (shown(old), shown(new));
        let schemas_changed = |name: &String| {
            let schemas = |settings: &Settings| {
                (settings.config.routes.iter().zip(&settings.schemas))
                    .find(|(r, _)| &r.name == name)
                    .map(|(_, schemas)| schemas.clone())
            };
            match (schemas(old), schemas(new)) {
                (Some(old), Some(new)) => !old.same_documents(&new),
                _ => false,
            }
        };
        let names = |routes: &BTreeMap<_, _>, keep: &dyn Fn(&String) -> bool| {
            routes.keys().filter(|n| keep(n)).cloned().collect()
        };
        Changes {
            added: names(&after, &|n| !before.contains_key(n)),
            removed: names(&before, &|n| !after.contains_key(n)),
            changed: names(&after, &|n| {
                before.get(n).is_some_and(|v| Some(v) != after.get(n)) || schemas_changed(n)
            }),
            upstream: serde_json::to_value(&old.config.upstream).ok()
                != serde_json::to_value(&new.config.upstream).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Settings {
        settings::load_str(text, Vec::new()).expect("valid")
    }

    const BASE: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"
[upstream]
base_url = "http://127.0.0.1:8080"
[[routes]]
name = "get"
subject = "orders.{id}.get"
path = "/orders/{id}"
[[routes]]
name = "gone"
subject = "gone.>"
path = "/gone"
"#;

    #[test]
    fn routes_are_compared_by_name() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace(
                    "path = \"/orders/{id}\"",
                    "path = \"/orders/{id}\"\nmax_in_flight = 7",
                )
                .replace(
                    "name = \"gone\"\nsubject = \"gone.>\"",
                    "name = \"new\"\nsubject = \"new.>\"",
                ),
        );
        let changes = Changes::between(&old, &new);
        assert_eq!(changes.added, ["new"]);
        assert_eq!(changes.removed, ["gone"]);
        assert_eq!(changes.changed, ["get"]);
        assert!(!changes.upstream);
        assert_eq!(Changes::between(&old, &old), Changes::default());
    }

    #[test]
    fn a_route_whose_schema_content_changed_is_listed_as_changed() {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("order.json");
        let text = BASE.replace(
            "path = \"/orders/{id}\"",
            &format!(
                "path = \"/orders/{{id}}\"\n[routes.validate]\nformat = \"json_schema\"\nschema = \"{}\"",
                schema.display()
            ),
        );
        std::fs::write(&schema, r#"{"required": ["id"]}"#).unwrap();
        let old = config(&text);
        assert_eq!(Changes::between(&old, &config(&text)), Changes::default());
        std::fs::write(&schema, r#"{"required": ["sku"]}"#).unwrap();
        let changes = Changes::between(&old, &config(&text));
        assert_eq!(changes.changed, ["get"]);
        assert!(changes.added.is_empty() && changes.removed.is_empty());
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let old = config(BASE);
        let new = config(&format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:9999\"\n",
            BASE.replace("127.0.0.1:4222", "127.0.0.1:4333")
                .replace("[upstream]", "queue_group = \"other\"\n[upstream]")
        ));
        let (effective, kept) = keep_restart_only(&old.config, new.clone(), true);
        assert_eq!(kept, ["nats (connection)", "admin"]);
        assert_eq!(effective.config.nats.url, old.config.nats.url);
        assert_eq!(effective.config.admin.listen, old.config.admin.listen);
        // The queue group belongs to the routes: it is applied.
        assert_eq!(effective.config.nats.queue_group, "other");
        // Without a connection yet, the new NATS settings are the ones to connect with.
        let (effective, kept) = keep_restart_only(&old.config, new, false);
        assert_eq!(kept, ["admin"]);
        assert_eq!(effective.config.nats.url, "nats://127.0.0.1:4333");
    }

    /// Whether a reload from `old` to `new` overlaps their core subscriptions.
    fn can_overlap(old: &Settings, new: &Settings) -> bool {
        let (before, after) = (old.pipeline().unwrap(), new.pipeline().unwrap());
        super::can_overlap(
            &core_subscriptions(&before, &old.config.nats.queue_group),
            &core_subscriptions(&after, &new.config.nats.queue_group),
        )
    }

    #[test]
    fn subscriptions_overlap_unless_a_subject_changes_its_queue_group() {
        let old = config(BASE);
        // The file's text with `route` in queue group `group`.
        let grouped = |text: &str, route: &str, group: &str| {
            let name = format!("name = \"{route}\"\n");
            text.replace(&name, &format!("{name}queue_group = \"{group}\"\n"))
        };
        assert!(can_overlap(&old, &config(BASE)));
        // Every route in another group: the old and the new would both get each request.
        let moved = config(&BASE.replace("[upstream]", "queue_group = \"other\"\n[upstream]"));
        assert!(!can_overlap(&old, &moved));
        // Two routes swapping their groups: the set of groups is the same, but each subject
        // would be in two groups at once.
        let before = config(&grouped(&grouped(BASE, "get", "a"), "gone", "b"));
        let swapped = config(&grouped(&grouped(BASE, "get", "b"), "gone", "a"));
        assert!(!can_overlap(&before, &swapped));
        // A route added in a group of its own, on subjects no old route takes: no overlap.
        let added = config(&format!(
            "{BASE}[[routes]]\nname = \"new\"\nsubject = \"new.>\"\npath = \"/new\"\nqueue_group = \"solo\"\n"
        ));
        assert!(can_overlap(&old, &added));
        // ... but on a subject an old route takes, it would get those requests twice.
        let shadowing = config(&format!(
            "{BASE}[[routes]]\nname = \"new\"\nsubject = \"orders.>\"\npath = \"/new\"\nqueue_group = \"solo\"\n"
        ));
        assert!(!can_overlap(&old, &shadowing));
    }
}
