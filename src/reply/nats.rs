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

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::time::Instant;

use crate::mapping::Reply;
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
    ) -> Result<(), String> {
        if self.is_captured(subject).await? {
            let ack = self
                .jetstream
                .publish_with_headers(subject.to_string(), headers, payload)
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())?;
        } else {
            self.client
                .publish_with_headers(subject.to_string(), headers, payload)
                .await
                .map_err(|e| e.to_string())?;
            self.client.flush().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether a stream captures `subject`, from the streams' subject filters (listed again
    /// when older than [`CAPTURE_TTL`]).
    async fn is_captured(&self, subject: &str) -> Result<bool, String> {
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

    async fn stream_subjects(&self) -> Result<Vec<Pattern>, String> {
        let listing = |e: &dyn std::fmt::Display| format!("cannot list the streams' subjects: {e}");
        let mut filters = Vec::new();
        let mut streams = self.jetstream.streams();
        while let Some(info) = streams.try_next().await.map_err(|e| listing(&e))? {
            filters.extend(
                (info.config.subjects.iter()).filter_map(|subject| Pattern::parse(subject).ok()),
            );
        }
        Ok(filters)
    }
}

fn headers(reply: &Reply, extra: &[(&str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        headers.append(name.as_ref(), value.as_str());
    }
    for (name, value) in extra {
        headers.insert(*name, value.as_str());
    }
    headers
}
