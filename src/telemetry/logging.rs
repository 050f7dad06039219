//! Log set-up: human-readable text or JSON lines, filtered by `RUST_LOG` or `log.level`.
//! Text is coloured only when stderr is a terminal and `NO_COLOR` is unset or empty: a
//! container's log is a file or a pipe, where colour codes would break `grep`.
//!
//! Beside the log itself, one small layer watches a dependency: async-nats ends its
//! connection when it cannot parse a message the server relays (a header name with a space,
//! a subject that is not UTF-8), and says why only in a debug line of its own. That layer
//! turns the line into ricochet's warning and a count, whatever the log level.

use std::fmt::Debug;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{warn, Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::telemetry::metrics::NATS_EVENTS;

/// lapin logs every connection failure itself, at error level, in its own words (and
/// about its own recovery, which ricochet does not use); ricochet logs each with its cause
/// and what it does next. Unless the filter names lapin, lapin is silent.
const LAPIN_QUIET: &str = "lapin=off";

pub fn init(config: &LogConfig) {
    let text = (std::env::var("RUST_LOG").ok())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| config.level.clone());
    let mut filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    if !text.contains("lapin") {
        filter = filter.add_directive(LAPIN_QUIET.parse().expect("a valid directive"));
    }
    // Only the callsites that can carry the error: async-nats also logs at debug for every
    // message it receives, and those stay disabled (decided once per callsite).
    let drops = NatsDrops.with_filter(filter_fn(|meta| {
        meta.target() == "async_nats"
            && *meta.level() == Level::DEBUG
            && meta.fields().field("error").is_some()
    }));
    let registry = tracing_subscriber::registry().with(drops);
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let log = (tracing_subscriber::fmt::layer())
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests calling it twice) is harmless: the first subscriber stays.
    let _ = match config.format {
        LogFormat::Text => registry.with(log.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(log.json().with_filter(filter)).try_init(),
    };
}

/// Whether text logs are coloured: only on a terminal, and never with `NO_COLOR` set to
/// anything but the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Sees async-nats' "disconnected" line and, when its error says the client could not
/// parse what it read (`InvalidInput`), logs the cause in ricochet's words and counts it as
/// `ricochet_nats_connection_events_total{event="protocol_error"}`. The error's own text
/// is never repeated: it can quote the bytes of a message.
struct NatsDrops;

impl<S: Subscriber> Layer<S> for NatsDrops {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut seen = Fields::default();
        event.record(&mut seen);
        if seen.message != "disconnected" {
            return;
        }
        if let Some(cause) = protocol_error(&seen.error) {
            crate::source::nats::unparsable_seen();
            metrics::counter!(NATS_EVENTS, "event" => "protocol_error").increment(1);
            warn!(
                cause,
                "the NATS client dropped its connection: the server relayed a message it cannot \
                 parse (lost on core NATS, redelivered by JetStream); connecting again"
            );
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// What the client could not parse, from the `Debug` form of its `Option<io::Error>`;
/// `None` for a connection that broke for any other reason. async-nats 0.52 says
/// `InvalidInput` for every parse error but the status line's (`Other`, its own words).
fn protocol_error(error: &str) -> Option<&'static str> {
    let status = error.contains("could not parse status");
    if !error.contains("InvalidInput") && !status {
        return None;
    }
    let cause = if status {
        "a status it cannot parse"
    } else if error.contains("ParseHeaderNameError") {
        "a header name it cannot parse (a space, CR, LF or colon in a name)"
    } else if error.contains("Utf8Error") || error.contains("utf-8") {
        "bytes that are not UTF-8 in a subject or header block"
    } else if error.contains("does not begin with `NATS/1.0`") {
        "a header block that does not start with NATS/1.0"
    } else if error.contains("no header version line found") {
        // The client's words for a header line without a colon, too.
        "a header line it cannot parse (no colon, or no NATS/1.0 line)"
    } else if error.contains("arguments after") {
        "a message line it cannot parse"
    } else {
        "bytes that are not a message it can parse"
    };
    Some(cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn parse_errors_are_named_and_other_drops_are_not_protocol_errors() {
        let of = |error: std::io::Error| protocol_error(&format!("{:?}", Some(error)));
        let invalid = |e: Box<dyn std::error::Error + Send + Sync>| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
        };
        let name = of(invalid(Box::new(async_nats::header::ParseHeaderNameError)));
        assert_eq!(
            name,
            Some("a header name it cannot parse (a space, CR, LF or colon in a name)")
        );
        let version = "header version line does not begin with `NATS/1.0`";
        assert_eq!(
            of(invalid(version.into())),
            Some("a header block that does not start with NATS/1.0")
        );
        let secret = "invalid server operation: 'Authorization: Bearer s3cret'";
        assert_eq!(
            of(invalid(secret.into())),
            Some("bytes that are not a message it can parse")
        );
        let status = std::io::Error::other("could not parse status parameter");
        assert_eq!(of(status), Some("a status it cannot parse"));
        let colon = invalid("no header version line found".into());
        assert_eq!(
            of(colon),
            Some("a header line it cannot parse (no colon, or no NATS/1.0 line)")
        );
        assert_eq!(of(std::io::ErrorKind::ConnectionReset.into()), None);
        assert_eq!(of(std::io::Error::other("broken pipe")), None);
        assert_eq!(protocol_error("None"), None);
    }
}
