//! The validate stage: what a message must be before the service is called, for every
//! source. A message that fails is refused with the error kind and a detail for the caller
//! (and the dead letter); the service never sees it.
//!
//! Today: the subject matches the route, the payload is within the route's `max_payload`,
//! and the reply destination is one the source's broker can publish to. Schema validation
//! (JSON Schema, Avro) belongs here too.

use super::Route;
use crate::mapping::ErrorKind;
use crate::source::Inbound;

/// `Err((kind, detail))` when the message must be refused. `destination_problem`: why the
/// source's broker cannot take the reply destination the message names, if it cannot.
pub fn check(
    route: &Route,
    inbound: &Inbound,
    routed: bool,
    destination_problem: Option<&'static str>,
) -> Result<(), (ErrorKind, String)> {
    if !routed {
        return Err((
            ErrorKind::NoRoute,
            "the subject does not match the route's pattern".into(),
        ));
    }
    if inbound.payload.len() > route.max_payload {
        return Err((
            ErrorKind::PayloadTooLarge,
            format!(
                "message of {} bytes exceeds the route's max_payload of {} bytes",
                inbound.payload.len(),
                route.max_payload
            ),
        ));
    }
    if let Some(problem) = destination_problem {
        return Err((
            ErrorKind::BadRequest,
            format!("the reply destination {problem}"),
        ));
    }
    Ok(())
}
