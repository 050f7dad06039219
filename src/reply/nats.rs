//! Publishing replies (and dead letters) to NATS.
//!
//! - [`NatsReplier::publish`]: core request-reply. The reply goes to the caller's inbox and is
//!   written out with the connection's next batch; there is nothing to settle, and shutdown
//!   flushes what is pending.
//! - [`NatsReplier::publish_confirmed`]: for durable sources, which settle the request only
//!   after this returns. A subject captured by a stream is published with JetStream and its
//!   publish ack awaited; any other subject is published and flushed.
//!
//! A reply larger than the server's `max_payload` is replaced by a 502 error reply, so the
//! caller learns why instead of timing out; that counts as the reply (the request is settled).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind as JsPublishErrorKind};
use async_nats::{Client, HeaderMap, PublishErrorKind};
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::time::Instant;

use tracing::warn;

use crate::mapping::reply::ATTEMPTS_HEADER;
use crate::mapping::{ErrorKind, Reply};
use crate::route::Pattern;

#[derive(Debug, thiserror::Error)]
#[error("could not publish to {subject}: {reason}")]
pub struct PublishError {
    subject: String,
    reason: String,
}

impl PublishError {
    /// No NATS connection exists (a configuration with Kafka routes only).
    pub fn no_connection(subject: &str) -> Self {
        Self::new(subject, "ricochet has no NATS connection")
    }

    fn new(subject: &str, reason: impl ToString) -> Self {
        Self {
            subject: subject.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// How long the list of subjects that streams capture is trusted.
const CAPTURE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct NatsReplier {
    client: Client,
    jetstream: jetstream::Context,
    /// The subject filters of every stream, and when they were listed. Reply subjects are
    /// often one per caller, so they are matched here rather than asked about one by one.
    streams: tokio::sync::Mutex<Option<(Vec<Pattern>, Instant)>>,
}

impl NatsReplier {
    pub fn new(client: Client) -> Self {
        Self {
            jetstream: jetstream::new(client.clone()),
            client,
            streams: tokio::sync::Mutex::new(None),
        }
    }

    /// Core request-reply: hand the reply to the connection.
    pub async fn publish(&self, subject: &str, reply: &Reply) -> Result<(), PublishError> {
        let send = |reply: &Reply| {
            self.client.publish_with_headers(
                subject.to_string(),
                headers(reply, &[]),
                reply.body.clone(),
            )
        };
        match send(reply).await {
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                // The caller got an answer (a 502 saying why): that is the reply.
                let fallback = self.too_large(reply);
                send(&fallback)
                    .await
                    .map_err(|e| PublishError::new(subject, e))
            }
            other => other.map_err(|e| PublishError::new(subject, e)),
        }
    }

    /// Durable sources: returns once the server has the message (stream ack or flush).
    /// `extra` headers are added (correlation id, `Nats-Msg-Id` for de-duplication).
    pub async fn publish_confirmed(
        &self,
        subject: &str,
        reply: &Reply,
        extra: &[(&str, String)],
    ) -> Result<(), PublishError> {
        match self
            .send_confirmed(subject, headers(reply, extra), reply.body.clone())
            .await
        {
            Err(SendError::TooLarge) => {
                // The caller got an answer (a 502 saying why): the request is settled.
                let fallback = self.too_large(reply);
                self.send_confirmed(subject, headers(&fallback, extra), fallback.body.clone())
                    .await
                    .map_err(|e| PublishError::new(subject, e.to_string()))
            }
            other => other.map_err(|e| PublishError::new(subject, e.to_string())),
        }
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
            .map_err(|e| PublishError::new(subject, e.to_string()))
    }

    async fn send_confirmed(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), SendError> {
        if self.is_captured(subject).await? {
            let ack = self
                .jetstream
                .publish_with_headers(subject.to_string(), headers, payload)
                .await
                .map_err(|e| match e.kind() {
                    JsPublishErrorKind::MaxPayloadExceeded => SendError::TooLarge,
                    _ => SendError::Other(e.to_string()),
                })?;
            ack.await.map_err(|e| SendError::Other(e.to_string()))?;
        } else {
            self.client
                .publish_with_headers(subject.to_string(), headers, payload)
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::MaxPayloadExceeded => SendError::TooLarge,
                    _ => SendError::Other(e.to_string()),
                })?;
            self.client
                .flush()
                .await
                .map_err(|e| SendError::Other(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether a stream captures `subject`, from the streams' subject filters (listed again
    /// when older than [`CAPTURE_TTL`]).
    async fn is_captured(&self, subject: &str) -> Result<bool, SendError> {
        let mut streams = self.streams.lock().await;
        let fresh = matches!(&*streams, Some((_, at)) if at.elapsed() < CAPTURE_TTL);
        if !fresh {
            *streams = Some((self.stream_subjects().await?, Instant::now()));
        }
        let filters = streams
            .as_ref()
            .map(|(f, _)| f.as_slice())
            .unwrap_or_default();
        Ok(filters.iter().any(|f| f.matches(subject).is_some()))
    }

    async fn stream_subjects(&self) -> Result<Vec<Pattern>, SendError> {
        let listing = |e: &dyn std::fmt::Display| {
            SendError::Other(format!("cannot list the streams' subjects: {e}"))
        };
        let mut filters = Vec::new();
        let mut streams = self.jetstream.streams();
        while let Some(info) = streams.try_next().await.map_err(|e| listing(&e))? {
            filters.extend(
                (info.config.subjects.iter()).filter_map(|subject| Pattern::parse(subject).ok()),
            );
        }
        Ok(filters)
    }

    /// The 502 sent instead of a reply the server would refuse.
    fn too_large(&self, reply: &Reply) -> Reply {
        let detail = format!(
            "the service's response ({} bytes) is larger than the NATS server's max_payload ({} bytes)",
            reply.body.len(),
            self.client.server_info().max_payload
        );
        warn!("{detail}; a 502 error reply was sent instead");
        let attempts = reply.header(ATTEMPTS_HEADER).unwrap_or("1").to_string();
        Reply::error(ErrorKind::UpstreamUnavailable, &detail).with_header(ATTEMPTS_HEADER, attempts)
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("message larger than the server's max_payload")]
    TooLarge,
    #[error("{0}")]
    Other(String),
}

fn headers(reply: &Reply, extra: &[(&str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        headers.append(name.as_str(), value.as_str());
    }
    for (name, value) in extra {
        headers.insert(*name, value.as_str());
    }
    headers
}
