//! The durable consumer a JetStream route asks the server for, and the check that the server
//! kept what ricochet relies on.
//!
//! Servers differ in what they understand: `filter_subjects` (several filters) arrived in
//! nats-server 2.10, and a 2.9 server silently drops the field, so the consumer would receive
//! every subject of the stream and the route would answer (and dead-letter) other routes'
//! requests. So one filter always goes in `filter_subject`, several are refused on a server
//! older than 2.10, and after creating or binding the consumer its configuration is read
//! back and compared with what was asked for. Pure functions: the source does the I/O.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, AckPolicy};

/// The first server version that honours `filter_subjects`.
pub const MULTI_FILTER_VERSION: (u64, u64) = (2, 10);

/// What the route needs from its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub durable: String,
    pub description: String,
    pub filters: Vec<String>,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

/// Why the consumer cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Several filter subjects on a server that would ignore them.
    MultipleFiltersUnsupported { count: usize, server: String },
    /// The server's copy of the consumer differs from what ricochet asked for.
    NotKept(Vec<String>),
    /// An existing durable has another filter, and the server cannot change it in place:
    /// nats-server 2.9 accepts the update but then skips messages already in the stream.
    FilterChangeUnsupported {
        existing: Vec<String>,
        asked: Vec<String>,
        server: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MultipleFiltersUnsupported { count, server } => write!(
                f,
                "jetstream.filter_subjects lists {count} subjects; several filter subjects need \
                 nats-server {}.{} or later, and this server is {server} (it would ignore them \
                 and deliver every subject of the stream): use one filter subject, one route \
                 per subject, or upgrade the server",
                MULTI_FILTER_VERSION.0, MULTI_FILTER_VERSION.1
            ),
            Refusal::NotKept(differences) => write!(
                f,
                "the server did not keep the consumer configuration ricochet relies on ({}); \
                 delete the durable consumer or give the route another `durable` name",
                differences.join("; ")
            ),
            Refusal::FilterChangeUnsupported {
                existing,
                asked,
                server,
            } => write!(
                f,
                "the existing durable consumer filters {existing:?}, the route needs {asked:?}, \
                 and nats-server {server} cannot change a consumer's filter in place (it would \
                 skip messages; {}.{} can): delete the durable consumer or give the route \
                 another `durable` name",
                MULTI_FILTER_VERSION.0, MULTI_FILTER_VERSION.1
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// `major.minor` of a server version such as "2.9.10" or "2.15.1-beta"; `None` when it
/// cannot be read (then the server is taken to be current).
pub fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Whether the server predates 2.10 (several filters, in-place filter changes); a version
/// that cannot be read counts as current.
pub fn before_2_10(server_version: &str) -> bool {
    major_minor(server_version).is_some_and(|v| v < MULTI_FILTER_VERSION)
}

/// The consumer configuration to create or update, for a server of `server_version`.
pub fn config(wanted: &Wanted, server_version: &str) -> Result<pull::Config, Refusal> {
    let mut config = pull::Config {
        durable_name: Some(wanted.durable.clone()),
        description: Some(wanted.description.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: wanted.ack_wait,
        // ricochet enforces max_deliver itself; the server must keep redelivering so a
        // message whose dead letter could not be published comes back.
        max_deliver: -1,
        max_ack_pending: wanted.max_ack_pending,
        ..Default::default()
    };
    match wanted.filters.as_slice() {
        [] => {}
        [one] => config.filter_subject = one.clone(),
        many => {
            if before_2_10(server_version) {
                return Err(Refusal::MultipleFiltersUnsupported {
                    count: many.len(),
                    server: server_version.to_string(),
                });
            }
            config.filter_subjects = many.to_vec();
        }
    }
    Ok(config)
}

/// Before updating an existing durable: refuses a filter change the server would get wrong.
pub fn check_existing(
    asked: &pull::Config,
    existing: &consumer::Config,
    server_version: &str,
) -> Result<(), Refusal> {
    let old = before_2_10(server_version);
    let asked_filters = sorted_filters(&asked.filter_subject, &asked.filter_subjects);
    let existing_filters = sorted_filters(&existing.filter_subject, &existing.filter_subjects);
    if old && asked_filters != existing_filters {
        return Err(Refusal::FilterChangeUnsupported {
            existing: existing_filters,
            asked: asked_filters,
            server: server_version.to_string(),
        });
    }
    Ok(())
}

/// Compares the server's copy of the consumer with what was asked for: the filter, the ack
/// policy, the ack wait, unlimited deliveries, the pending bound and pull mode.
pub fn check_kept(asked: &pull::Config, kept: &consumer::Config) -> Result<(), Refusal> {
    let mut differences = Vec::new();
    // One setting: what the server kept against what was asked, both as shown.
    let mut compare = |what: &str, kept: String, asked: String| {
        if kept != asked {
            differences.push(format!("{what} {kept} instead of {asked}"));
        }
    };
    let filters = |one: &str, many: &[String]| format!("{:?}", sorted_filters(one, many));
    compare(
        "filter subjects",
        filters(&kept.filter_subject, &kept.filter_subjects),
        filters(&asked.filter_subject, &asked.filter_subjects),
    );
    let policy = |p: AckPolicy| format!("{p:?}");
    compare(
        "ack policy",
        policy(kept.ack_policy),
        policy(asked.ack_policy),
    );
    let wait = |d: Duration| format!("{d:?}");
    compare("ack_wait", wait(kept.ack_wait), wait(asked.ack_wait));
    compare(
        "max_deliver (unlimited: ricochet counts deliveries itself)",
        kept.max_deliver.to_string(),
        asked.max_deliver.to_string(),
    );
    compare(
        "max_ack_pending",
        kept.max_ack_pending.to_string(),
        asked.max_ack_pending.to_string(),
    );
    if let Some(subject) = &kept.deliver_subject {
        differences.push(format!(
            "a push consumer (deliver subject {subject:?}), not a pull consumer"
        ));
    }
    match differences.is_empty() {
        true => Ok(()),
        false => Err(Refusal::NotKept(differences)),
    }
}

/// Every filter of a consumer, in one order, whichever field holds them.
fn sorted_filters(one: &str, many: &[String]) -> Vec<String> {
    let mut all: Vec<String> = many.to_vec();
    if !one.is_empty() {
        all.push(one.to_string());
    }
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(filters: &[&str]) -> Wanted {
        Wanted {
            durable: "d".into(),
            description: "ricochet route r".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
        }
    }

    /// The server's copy as a 2.10+ server keeps it.
    fn kept(asked: &pull::Config) -> consumer::Config {
        consumer::Config {
            durable_name: asked.durable_name.clone(),
            ack_policy: asked.ack_policy,
            ack_wait: asked.ack_wait,
            max_deliver: asked.max_deliver,
            max_ack_pending: asked.max_ack_pending,
            filter_subject: asked.filter_subject.clone(),
            filter_subjects: asked.filter_subjects.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_read_major_and_minor() {
        assert_eq!(major_minor("2.9.10"), Some((2, 9)));
        assert_eq!(major_minor("2.15.1"), Some((2, 15)));
        assert_eq!(major_minor("v2.10.0-beta.3"), Some((2, 10)));
        assert_eq!(major_minor("2.11"), Some((2, 11)));
        assert_eq!(major_minor(""), None);
        assert_eq!(major_minor("nightly"), None);
    }

    #[test]
    fn one_filter_uses_the_field_every_server_knows() {
        for server in ["2.9.10", "2.15.1"] {
            let config = config(&wanted(&["orders.*"]), server).unwrap();
            assert_eq!(config.filter_subject, "orders.*", "{server}");
            assert!(config.filter_subjects.is_empty(), "{server}");
            assert_eq!(config.ack_policy, AckPolicy::Explicit);
            assert_eq!(config.max_deliver, -1);
        }
    }

    #[test]
    fn several_filters_need_a_2_10_server() {
        let two = wanted(&["a.*", "b.*"]);
        let refused = config(&two, "2.9.10").unwrap_err();
        assert_eq!(
            refused,
            Refusal::MultipleFiltersUnsupported {
                count: 2,
                server: "2.9.10".into()
            }
        );
        let text = refused.to_string();
        assert!(text.contains("2.10") && text.contains("2.9.10"), "{text}");
        for server in ["2.10.0", "2.15.1", "3.0.0", "unknown"] {
            let config = config(&two, server).unwrap();
            assert_eq!(config.filter_subjects, ["a.*", "b.*"], "{server}");
            assert!(config.filter_subject.is_empty());
        }
    }

    #[test]
    fn a_consumer_kept_as_asked_passes() {
        for filters in [&["a.*"][..], &["a.*", "b.*"][..]] {
            let asked = config(&wanted(filters), "2.15.1").unwrap();
            assert_eq!(check_kept(&asked, &kept(&asked)), Ok(()));
        }
        // The same filters in another order are the same filter.
        let asked = config(&wanted(&["a.*", "b.*"]), "2.15.1").unwrap();
        let mut reordered = kept(&asked);
        reordered.filter_subjects.reverse();
        assert_eq!(check_kept(&asked, &reordered), Ok(()));
    }

    #[test]
    fn an_old_server_cannot_change_an_existing_filter() {
        let asked = config(&wanted(&["a.*"]), "2.9.10").unwrap();
        let mut existing = kept(&asked);
        // Same filter, other settings: an update every server handles.
        existing.ack_wait = Duration::from_secs(5);
        assert_eq!(check_existing(&asked, &existing, "2.9.10"), Ok(()));
        // No filter (what ricochet before this check created on 2.9): refused there.
        existing.filter_subject.clear();
        let refused = check_existing(&asked, &existing, "2.9.10").unwrap_err();
        assert!(
            matches!(&refused, Refusal::FilterChangeUnsupported { existing, asked, .. }
                if existing.is_empty() && asked == &["a.*"]),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("delete the durable"),
            "{refused}"
        );
        // A current server updates the filter in place.
        assert_eq!(check_existing(&asked, &existing, "2.15.1"), Ok(()));
    }

    #[test]
    fn a_dropped_filter_or_changed_setting_is_refused_with_every_difference() {
        let asked = config(&wanted(&["a.*", "b.*"]), "2.15.1").unwrap();
        // What a 2.9 server keeps of filter_subjects: nothing.
        let mut dropped = kept(&asked);
        dropped.filter_subjects.clear();
        let Err(Refusal::NotKept(differences)) = check_kept(&asked, &dropped) else {
            panic!("a dropped filter must be refused");
        };
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(
            differences[0].contains("filter subjects []"),
            "{differences:?}"
        );

        let mut changed = kept(&asked);
        changed.ack_policy = AckPolicy::All;
        changed.max_deliver = 5;
        changed.ack_wait = Duration::from_secs(1);
        changed.max_ack_pending = 1;
        changed.deliver_subject = Some("push.here".into());
        let Err(Refusal::NotKept(differences)) = check_kept(&asked, &changed) else {
            panic!("changed settings must be refused");
        };
        assert_eq!(differences.len(), 5, "{differences:?}");
        let text = Refusal::NotKept(differences).to_string();
        for part in [
            "ack policy",
            "max_deliver",
            "ack_wait",
            "max_ack_pending",
            "push",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
