//! Watches async-nats' own log for the connection drops it makes when it cannot parse what
//! the server relays (a header name with a space, a subject that is not UTF-8): it says why
//! only in a debug line of its own. This layer, installed with the log whatever its level,
//! turns that line into ricochet's warning and a count, and tells the JetStream routes
//! ([`super::unparsable_seen`]).

use std::fmt::Debug;

use tracing::field::{Field, Visit};
use tracing::{warn, Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};

use crate::telemetry::metrics::NATS_EVENTS;

/// The layer, enabled only on the async-nats callsites that can carry the error: it also
/// logs at debug for every message it receives, and those stay disabled (decided once per
/// callsite).
pub fn layer<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    NatsDrops.with_filter(filter_fn(|meta| {
        meta.target() == "async_nats"
            && *meta.level() == Level::DEBUG
            && meta.fields().field("error").is_some()
    }))
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
            super::unparsable_seen();
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
