//! Replies to core NATS requests: published to the message's reply inbox.
//!
//! Core NATS has nothing to settle and no publish acknowledgement, so a reply is handed to
//! the connection and written out with the next batch; shutdown flushes what is pending.
//! A reply larger than the server's `max_payload` is replaced by a 502 error reply, so the
//! caller learns why instead of timing out.

use async_nats::{Client, HeaderMap, PublishErrorKind};

use crate::mapping::{ErrorKind, Reply};

#[derive(Debug, thiserror::Error)]
#[error("could not publish the reply: {0}")]
pub struct PublishError(String);

#[derive(Clone, Debug)]
pub struct NatsReplier {
    client: Client,
}

impl NatsReplier {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub async fn publish(&self, subject: &str, reply: &Reply) -> Result<(), PublishError> {
        match self.send(subject, reply).await {
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                let detail = format!(
                    "the service's response ({} bytes) is larger than the NATS server's max_payload ({} bytes)",
                    reply.body.len(),
                    self.client.server_info().max_payload
                );
                let fallback = Reply::error(ErrorKind::UpstreamUnavailable, &detail);
                self.send(subject, &fallback)
                    .await
                    .map_err(|e| PublishError(e.to_string()))?;
                Err(PublishError(detail))
            }
            other => other.map_err(|e| PublishError(e.to_string())),
        }
    }

    async fn send(&self, subject: &str, reply: &Reply) -> Result<(), async_nats::PublishError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &reply.headers {
            headers.append(name.as_str(), value.as_str());
        }
        self.client
            .publish_with_headers(subject.to_string(), headers, reply.body.clone())
            .await
    }
}
