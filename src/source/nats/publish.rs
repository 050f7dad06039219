//! Publishing replies (and dead letters) to NATS.
//!
//! - [`NatsReplier::publish`]: core request-reply. The reply goes to the caller's inbox and is
//!   written out with the connection's next batch; there is nothing to settle, and shutdown
//!   flushes what is pending.
//! - [`NatsReplier::publish_confirmed`]: for durable sources, which settle the request only
//!   after this returns. A subject captured by a stream is published with JetStream and its
//!   publish ack awaited; any other subject is published and flushed.
//!
//! [`NatsReplier::too_large`] tells the pipeline how large a reply is on the wire, so that one
//! larger than the server's `max_payload` is replaced by a 502 before it is published (the
//! pipeline's oversize rule).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::IntoHeaderName;
use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::message::dead_letter::ORIGINAL_MSG_ID;
use crate::message::{DeadLetter, Reply};
use crate::route::Pattern;
use crate::source::nats::{Link, LinkError};

/// A reply or dead letter that NATS did not take or did not confirm.
#[derive(Debug, thiserror::Error)]
#[error("could not publish to {subject}: {why}")]
pub struct PublishError {
    subject: String,
    why: Unpublished,
}

impl PublishError {
    fn new(subject: &str, why: impl Into<Unpublished>) -> Self {
        Self {
            subject: subject.to_string(),
            why: why.into(),
        }
    }

    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Which step failed, and how.
    pub fn why(&self) -> &Unpublished {
        &self.why
    }
}

/// The step of a publish that failed. Each says the client's or server's own words.
#[derive(Debug, thiserror::Error)]
pub enum Unpublished {
    /// The client did not take the message (its connection is closed, say).
    #[error(transparent)]
    Send(#[from] async_nats::PublishError),
    /// A subject a stream captures: the stream's publish ack did not come.
    #[error(transparent)]
    StreamAck(#[from] LinkError<jetstream::context::PublishError>),
    /// A subject no stream captures: the server did not confirm the flush after it.
    #[error(transparent)]
    Flush(#[from] LinkError<async_nats::client::FlushError>),
    /// Whether a stream captures the subject could not be learned (no list known yet).
    #[error(transparent)]
    Listing(#[from] LinkError<ListingError>),
}

/// The streams (and so the subjects they capture) could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the streams' subjects: {0}")]
pub struct ListingError(jetstream::context::StreamsError);

/// How long the list of subjects that streams capture is trusted.
const CAPTURE_TTL: Duration = Duration::from_secs(10);
/// After a listing failed (the server bouncing, say), how long the previous list is used
/// before listing again.
const CAPTURE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct NatsReplier {
    client: Client,
    /// Ends a wait for a confirmation when the connection it was asked on is lost.
    link: Link,
    jetstream: jetstream::Context,
    /// The subject filters of every stream. Reply subjects are often one per caller, so they
    /// are matched here rather than asked about one by one.
    captures: CaptureList,
}

/// The subjects streams capture, as last listed.
#[derive(Debug, Default)]
struct CaptureList {
    known: std::sync::Mutex<Option<Captures>>,
    /// Held by the one task that lists the streams; the others go on with the list they have
    /// (a reply never waits for a listing except the first).
    listing: tokio::sync::Mutex<()>,
}

/// The subjects streams capture, and when to list them again.
#[derive(Debug, Clone)]
struct Captures {
    filters: Arc<[Pattern]>,
    list_again: Instant,
}

impl Captures {
    fn new(filters: Arc<[Pattern]>, trusted_for: Duration) -> Self {
        Self {
            filters,
            list_again: Instant::now() + trusted_for,
        }
    }

    fn cover(&self, subject: &str) -> bool {
        self.filters.iter().any(|f| f.matches(subject).is_some())
    }
}

impl NatsReplier {
    pub fn new(client: Client, link: Link) -> Self {
        Self {
            link,
            jetstream: jetstream::new(client.clone()),
            client,
            captures: CaptureList::default(),
        }
    }

    /// Core request-reply: hand the reply to the connection.
    pub async fn publish(&self, subject: &str, reply: &Reply) -> Result<(), PublishError> {
        self.client
            .publish_with_headers(subject.to_string(), headers(reply, &[]), reply.body.clone())
            .await
            .map_err(|e| PublishError::new(subject, e))
    }

    /// Durable sources: returns once the server has the message (stream ack or flush).
    /// `extra` headers are added (`Nats-Msg-Id` for de-duplication).
    pub async fn publish_confirmed(
        &self,
        subject: &str,
        reply: &Reply,
        extra: &[(&str, String)],
    ) -> Result<(), PublishError> {
        self.send_confirmed(subject, headers(reply, extra), reply.body.clone())
            .await
            .map_err(|e| PublishError::new(subject, e))
    }

    /// The reply's size on the wire with `extra` headers, and the server's limit, when it
    /// exceeds that limit. Counted as async-nats counts: the header block plus the body.
    pub fn too_large(&self, reply: &Reply, extra: &[(&str, String)]) -> Option<(usize, usize)> {
        // "NATS/1.0\r\n" ... "\r\n", and "name: value\r\n" per header.
        let mut size = reply.body.len() + 12;
        for (name, value) in &reply.headers {
            size += name.len() + value.len() + 4;
        }
        for (name, value) in extra {
            size += name.len() + value.len() + 4;
        }
        let limit = self.client.max_payload();
        (limit > 0 && size > limit).then_some((size, limit))
    }

    /// Publishes raw headers and payload, confirmed (dead letters).
    pub async fn publish_raw_confirmed(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        self.send_confirmed(subject, headers, payload)
            .await
            .map_err(|e| PublishError::new(subject, e))
    }

    async fn send_confirmed(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), Unpublished> {
        if self.is_captured(subject).await? {
            let publish = || async {
                let ack = (self.jetstream).publish_with_headers(
                    subject.to_string(),
                    headers.clone(),
                    payload.clone(),
                );
                ack.await?.await
            };
            // Published again after a lost connection rather than failed: a failure would
            // have the message redelivered, the service called again and the reply published
            // again anyway. The callers' Nats-Msg-Id has the stream keep one copy.
            self.link.confirmed_again(publish).await?;
        } else {
            let publish = self
                .client
                .publish_with_headers(subject.to_string(), headers, payload);
            publish.await?;
            self.link.confirmed(self.client.flush()).await?;
        }
        Ok(())
    }

    /// The connection's losses (see [`Link`]).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Whether a stream captures `subject` (see [`CaptureList::covers`]).
    async fn is_captured(&self, subject: &str) -> Result<bool, LinkError<ListingError>> {
        // A listing asked on a connection that is lost is never answered: it ends with the
        // connection, and the previous list is used meanwhile.
        self.captures
            .covers(subject, || self.link.confirmed(self.stream_subjects()))
            .await
    }

    async fn stream_subjects(&self) -> Result<Vec<Pattern>, ListingError> {
        let mut filters = Vec::new();
        let mut streams = self.jetstream.streams();
        while let Some(info) = streams.try_next().await.map_err(ListingError)? {
            filters.extend(
                (info.config.subjects.iter()).filter_map(|subject| Pattern::parse(subject).ok()),
            );
        }
        Ok(filters)
    }
}

impl CaptureList {
    /// Whether a stream captures `subject`, from the streams' subject filters (`list`ed again
    /// when older than [`CAPTURE_TTL`]). The reply that finds the list old lists again and
    /// waits for that listing, one at a time, while the others use the list they have; a
    /// listing that fails keeps the previous list for [`CAPTURE_RETRY`]. Without any list
    /// yet, every reply waits for the first (or fails with it).
    async fn covers<L, F, E>(&self, subject: &str, list: L) -> Result<bool, E>
    where
        L: FnOnce() -> F,
        F: std::future::Future<Output = Result<Vec<Pattern>, E>>,
        E: std::fmt::Display,
    {
        loop {
            let known = self.known.lock().expect("captures lock").clone();
            if let Some(known) = known.as_ref().filter(|k| Instant::now() < k.list_again) {
                return Ok(known.cover(subject));
            }
            let Ok(_listing) = self.listing.try_lock() else {
                match known {
                    Some(known) => return Ok(known.cover(subject)),
                    // The first listing is under way: wait for it, then look again.
                    None => {
                        drop(self.listing.lock().await);
                        continue;
                    }
                }
            };
            let listed = match list().await {
                Ok(filters) => Captures::new(filters.into(), CAPTURE_TTL),
                Err(e) => match known {
                    Some(known) => {
                        debug!(error = %e, "streams not listed; the previous list is used");
                        Captures::new(known.filters, CAPTURE_RETRY)
                    }
                    None => return Err(e),
                },
            };
            let captured = listed.cover(subject);
            *self.known.lock().expect("captures lock") = Some(listed);
            return Ok(captured);
        }
    }
}

/// Name of the reply header that lists, comma-separated, the response headers a NATS reply
/// left out because NATS cannot carry their values.
pub const DROPPED_HEADERS: &str = "Ricochet-Dropped-Headers";

/// The reply's headers as NATS headers. A NATS header value is text (async-nats holds it as
/// a `String`): a UTF-8 value (`café`) passes unchanged; one that is not (raw obs-text bytes
/// from the service) cannot, and is left out, never silently: the reply names it in
/// `Ricochet-Dropped-Headers` and a warning counts them.
fn headers(reply: &Reply, extra: &[(&str, String)]) -> HeaderMap {
    let (mut headers, dropped) = nats_headers(reply);
    if !dropped.is_empty() {
        warn!(
            count = dropped.len(),
            headers = %dropped.join(", "),
            "reply headers whose values are not UTF-8 left out: NATS headers carry text"
        );
        headers.insert(DROPPED_HEADERS, dropped.join(", "));
    }
    for (name, value) in extra {
        headers.insert(*name, value.as_str());
    }
    headers
}

/// The reply's headers NATS can carry, and the names of those it cannot (once each).
///
/// async-nats keeps headers in a `HashMap` (SipHash): a name's first value is inserted
/// (one lookup) and only a repeated name appended (two), and ricochet's own names, static,
/// become header names without being checked and copied again.
fn nats_headers(reply: &Reply) -> (HeaderMap, Vec<&str>) {
    let mut headers = HeaderMap::new();
    let mut dropped: Vec<&str> = Vec::new();
    for (i, (name, value)) in reply.headers.iter().enumerate() {
        match std::str::from_utf8(value) {
            Ok(text) => {
                let key = match name {
                    Cow::Borrowed(name) => async_nats::HeaderName::from_static(name),
                    Cow::Owned(name) => name.as_str().into_header_name(),
                };
                // Names compare as async-nats compares them: byte for byte.
                match reply.headers[..i]
                    .iter()
                    .any(|(earlier, _)| earlier == name)
                {
                    true => headers.append(key, text),
                    false => headers.insert(key, text),
                }
            }
            Err(_) if !dropped.contains(&name.as_ref()) => dropped.push(name.as_ref()),
            Err(_) => {}
        }
    }
    (headers, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn filters(subjects: &[&str]) -> Vec<Pattern> {
        subjects
            .iter()
            .map(|s| Pattern::parse(s).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn replies_do_not_wait_for_a_listing_of_the_streams_once_one_is_known() {
        let captures = Arc::new(CaptureList::default());
        let listings = Arc::new(AtomicUsize::new(0));
        let listed = |answer: Result<Vec<Pattern>, String>| {
            let listings = listings.clone();
            move || async move {
                listings.fetch_add(1, Ordering::SeqCst);
                answer
            }
        };
        // No list yet: a failed listing fails the reply.
        let none = captures
            .covers("r.1", listed(Err("timed out".into())))
            .await;
        assert_eq!(none, Err("timed out".to_string()));
        // The first list, trusted for CAPTURE_TTL.
        let first = captures.covers("r.1", listed(Ok(filters(&["r.*"])))).await;
        assert_eq!(first, Ok(true));
        assert_eq!(captures.covers("x.1", listed(Ok(vec![]))).await, Ok(false));
        assert_eq!(listings.load(Ordering::SeqCst), 2, "the list was trusted");

        // Stale: one task lists (here a listing that never ends, a server gone away)...
        tokio::time::advance(CAPTURE_TTL).await;
        let hanging = {
            let (captures, listings) = (captures.clone(), listings.clone());
            tokio::spawn(async move {
                let list = || async move {
                    listings.fetch_add(1, Ordering::SeqCst);
                    futures::future::pending::<Result<Vec<Pattern>, String>>().await
                };
                captures.covers("r.1", list).await
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(listings.load(Ordering::SeqCst), 3);
        // ...and every other reply goes on at once with the list it has.
        let meanwhile = captures.covers("r.2", listed(Ok(vec![]))).await;
        assert_eq!(meanwhile, Ok(true));
        assert_eq!(listings.load(Ordering::SeqCst), 3, "no second listing");
        hanging.abort();
        assert!(hanging.await.unwrap_err().is_cancelled());

        // A failed listing keeps the previous list, and is tried again after CAPTURE_RETRY.
        let failed = captures
            .covers("r.3", listed(Err("timed out".into())))
            .await;
        assert_eq!(failed, Ok(true));
        assert_eq!(captures.covers("r.4", listed(Ok(vec![]))).await, Ok(true));
        assert_eq!(listings.load(Ordering::SeqCst), 4, "not listed again yet");
        tokio::time::advance(CAPTURE_RETRY).await;
        let relisted = captures.covers("r.5", listed(Ok(filters(&["q.*"])))).await;
        assert_eq!(relisted, Ok(false));
        assert_eq!(listings.load(Ordering::SeqCst), 5);
    }

    /// Logged and counted as before the errors were typed: the same words.
    #[test]
    fn an_unconfirmed_publish_says_where_and_why() {
        let lost = LinkError::<async_nats::client::FlushError>::ConnectionLost;
        assert_eq!(
            PublishError::new("r.1", lost).to_string(),
            "could not publish to r.1: the connection to NATS was lost before the server confirmed"
        );
        let forgotten = LinkError::<String>::Forgotten.to_string();
        assert!(
            forgotten.starts_with("no answer within 1s to the settlement"),
            "{forgotten}"
        );
        let refused = LinkError::Failed(async_nats::client::FlushError::from(
            async_nats::client::FlushErrorKind::SendError,
        ));
        let publish = PublishError::new("r.2", refused);
        assert!(matches!(
            publish.why(),
            Unpublished::Flush(LinkError::Failed(_))
        ));
        assert_eq!(
            publish.to_string(),
            format!(
                "could not publish to r.2: {}",
                async_nats::client::FlushError::from(async_nats::client::FlushErrorKind::SendError)
            )
        );
    }

    #[test]
    fn utf8_reply_headers_pass_and_the_rest_are_named_not_silently_dropped() {
        let reply = Reply {
            status: http::StatusCode::OK,
            headers: [
                ("X-Name", &b"caf\xc3\xa9"[..]),
                ("X-Raw", &b"\xff\xfe"[..]),
                ("X-Raw", &b"\xfe"[..]),
                ("X-Other", &b"\xe9"[..]),
                ("X-Empty", &b""[..]),
            ]
            .into_iter()
            .map(|(n, v)| (n, Bytes::from_static(v)))
            .collect(),
            body: Bytes::new(),
        };
        let map = headers(&reply, &[("Nats-Msg-Id", "m".to_string())]);
        let get = |name: &str| map.get(name).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Name").as_deref(), Some("café"));
        assert_eq!(get("X-Empty").as_deref(), Some(""));
        assert_eq!(get("X-Raw"), None);
        assert_eq!(get("X-Other"), None);
        assert_eq!(get(DROPPED_HEADERS).as_deref(), Some("X-Raw, X-Other"));
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("m"));
        // A repeated name keeps every value, in order; names differing in case are two.
        let repeated = Reply {
            status: http::StatusCode::OK,
            headers: [
                ("X-A", "1"),
                ("Ricochet-Status", "200"),
                ("X-A", "2"),
                ("x-a", "3"),
            ]
            .into_iter()
            .collect(),
            body: Bytes::new(),
        };
        let map = headers(&repeated, &[]);
        let all = |name: &str| -> Vec<String> {
            map.get_all(name).map(|v| v.as_str().to_string()).collect()
        };
        assert_eq!(all("X-A"), ["1", "2"]);
        assert_eq!(all("x-a"), ["3"]);
        assert_eq!(all("Ricochet-Status"), ["200"]);
        // Nothing to drop, nothing said.
        let clean = Reply::error(crate::message::ErrorKind::Timeout, "late");
        assert_eq!(headers(&clean, &[]).get(DROPPED_HEADERS), None);
    }
}

/// A dead letter's NATS headers: the original headers plus ricochet's and `origin`. The
/// broker's own `Nats-*` headers are not copied (an expected-stream or expected-sequence
/// header would make the publish fail); the original `Nats-Msg-Id` is kept as `Ricochet-Original-Msg-Id`, and
/// `msg_id` (stable for this message) de-duplicates a dead letter published twice
/// around a crash.
pub fn dead_letter_headers(
    letter: &DeadLetter<'_>,
    origin: &[(&str, String)],
    msg_id: String,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &letter.inbound.headers {
        if name.eq_ignore_ascii_case("nats-msg-id") {
            headers.insert(ORIGINAL_MSG_ID, value.as_str());
        } else if !name.to_ascii_lowercase().starts_with("nats-") {
            headers.append(name.as_str(), value.as_str());
        }
    }
    for (name, value) in letter.headers().iter().chain(origin) {
        headers.insert(*name, value.as_str());
    }
    headers.insert("Nats-Msg-Id", msg_id);
    headers
}

#[cfg(test)]
mod dead_letter_tests {
    use super::*;
    use crate::message::dead_letter::*;
    use crate::message::Inbound;

    #[test]
    fn dead_letters_keep_the_original_and_say_why() {
        let mut inbound = Inbound::new(
            "orders.1.get".into(),
            None,
            vec![
                ("X-Tenant".to_string(), "acme".to_string()),
                ("Nats-Msg-Id".to_string(), "m-1".to_string()),
                ("Nats-Expected-Stream".to_string(), "ORDERS".to_string()),
            ],
            bytes::Bytes::from_static(b"{}"),
        );
        inbound.delivered = 1;
        let letter = DeadLetter {
            route: "orders",
            reason: "payload_too_large",
            detail: Some("message of 20 bytes exceeds\nthe limit"),
            last_status: 413,
            delivered: 1,
            inbound: &inbound,
        };
        let origin = [
            (ORIGINAL_STREAM, "ORDERS".to_string()),
            (ORIGINAL_SUBJECT, "orders.1.get".to_string()),
            (ORIGINAL_SEQUENCE, "42".to_string()),
        ];
        let headers = dead_letter_headers(&letter, &origin, "ricochet-dlq:ORDERS:42".into());
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(get("X-Tenant").as_deref(), Some("acme"));
        assert_eq!(get(ORIGINAL_MSG_ID).as_deref(), Some("m-1"));
        assert_eq!(get("Nats-Expected-Stream"), None);
        assert_eq!(get(REASON).as_deref(), Some("payload_too_large"));
        assert_eq!(get(LAST_STATUS).as_deref(), Some("413"));
        assert_eq!(
            get(DETAIL).as_deref(),
            Some("message of 20 bytes exceeds the limit")
        );
        assert_eq!(get(DELIVERY_COUNT).as_deref(), Some("1"));
        assert_eq!(get(ROUTE).as_deref(), Some("orders"));
        assert_eq!(get(ORIGINAL_STREAM).as_deref(), Some("ORDERS"));
        assert_eq!(get(ORIGINAL_SUBJECT).as_deref(), Some("orders.1.get"));
        assert_eq!(get(ORIGINAL_SEQUENCE).as_deref(), Some("42"));
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("ricochet-dlq:ORDERS:42")
        );
    }
}
