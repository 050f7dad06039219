//! The validate stage: what a message must be before the service is called, for every
//! source. A message that fails is refused with the error kind and a detail for the caller
//! (and the dead letter); the service never sees it.
//!
//! Today: the subject matches the route, the payload is within the route's `max_payload`,
//! and the reply destination is one the source's broker can publish to. Schema validation
//! (JSON Schema, Avro) belongs here too.

use super::Route;
use crate::mapping::ErrorKind;
use crate::source::{Inbound, Settle};

/// `Err((kind, detail))` when the message must be refused.
pub fn check<S: Settle>(
    route: &Route,
    inbound: &Inbound,
    routed: bool,
    settle: &S,
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
    if let Some(problem) = (inbound.reply.as_deref()).and_then(|d| settle.destination_problem(d)) {
        return Err((
            ErrorKind::BadRequest,
            format!("the reply destination {problem}"),
        ));
    }
    Ok(())
}
