//! The validate stage: what a message must be before the service is called, for every
//! source. A message that fails is refused with the error kind and a detail for the caller
//! (and the dead letter); the service never sees it.
//!
//! First [`check`]: the subject matches the route, the payload is within the route's
//! `max_payload`, and the reply destination is one the source's broker can publish to. Then,
//! for a route with a `validate` table, [`body`]: header bounds, the content-type allow-list
//! and the body's schema (JSON Schema, or Avro with the schema registry; see
//! [`crate::validate`]), and, for a route that encodes its replies as Avro, their schema at
//! hand. Only the registry makes this stage wait on I/O.

use bytes::Bytes;

use super::Route;
use crate::message::ErrorKind;
use crate::message::Inbound;
use crate::validate::{Invalid, Passed, Rules, JSON};

/// The route's `validate` rules applied to the message. Its `Content-Type` is its own, else
/// the route's `content_type`. A route that encodes its replies also needs their schema
/// before the service is called (see [`Rules::encoding_ready`]).
pub async fn body(route: &Route, rules: &Rules, inbound: &Inbound) -> Result<Passed, Invalid> {
    let content_type = (inbound.header("content-type")).or(route.config.content_type.as_deref());
    let passed = rules
        .request(&inbound.headers, content_type, &inbound.payload)
        .await?;
    rules.encoding_ready().await?;
    Ok(passed)
}

/// The message as the service gets it when its Avro record was decoded: the JSON as its
/// body, `Content-Type: application/json`, everything else as it came.
pub fn decoded(inbound: &Inbound, json: Bytes) -> Inbound {
    let mut decoded = inbound.clone();
    decoded
        .headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
    decoded
        .headers
        .push(("Content-Type".to_string(), JSON.to_string()));
    decoded.payload = json;
    decoded
}

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
