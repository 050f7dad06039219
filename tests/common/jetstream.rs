//! JetStream helpers: a stream of one test's own (a random name, memory storage unless the
//! test says otherwise, deleted at the end), requests published with the stream's
//! acknowledgement, and ricochet's durable consumers read back from the server. They stand
//! where a caller stands: before the JetStream source, publishing what it takes, and after
//! it, reading what it settled.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

/// One test's stream: `name`, on subjects under `prefix` (`{prefix}.req.>` unless the test
/// chose others).
pub struct Stream {
    pub js: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl Stream {
    /// A stream for a fresh prefix made from `tag`, on the tests' NATS server.
    pub async fn create(tag: &str) -> Self {
        Self::create_named(&super::unique(tag)).await
    }

    /// The stream of `prefix` (see [`Self::create_with`]), on the tests' NATS server.
    pub async fn create_named(prefix: &str) -> Self {
        Self::create_with(jetstream::new(super::nats().await), prefix, |_| {}).await
    }

    /// Creates the stream of `prefix`: named after it ([`name_for`]), on `{prefix}.req.>`,
    /// memory storage, messages kept 10 minutes (so that a test that fails before deleting
    /// it leaves nothing for long), and whatever `edit` changes of that.
    pub async fn create_with(
        js: jetstream::Context,
        prefix: &str,
        edit: impl FnOnce(&mut stream::Config),
    ) -> Self {
        let mut config = stream::Config {
            name: name_for(prefix),
            subjects: vec![format!("{prefix}.req.>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        };
        edit(&mut config);
        let name = config.name.clone();
        js.create_stream(config)
            .await
            .expect("JetStream is enabled on the NATS server");
        Self {
            js,
            name,
            prefix: prefix.to_string(),
        }
    }

    /// The stream `prefix` would have, without creating it (a route configured before its
    /// stream exists).
    pub async fn not_created(prefix: &str) -> Self {
        Self {
            js: jetstream::new(super::nats().await),
            name: name_for(prefix),
            prefix: prefix.to_string(),
        }
    }

    /// The subject of request `id`: `{prefix}.req.{id}`.
    pub fn subject(&self, id: &str) -> String {
        format!("{}.req.{id}", self.prefix)
    }

    /// Publishes request `id` and waits for the stream's acknowledgement.
    pub async fn publish(&self, id: &str, headers: HeaderMap, payload: impl AsRef<[u8]>) {
        self.js
            .publish_with_headers(
                self.subject(id),
                headers,
                Bytes::copy_from_slice(payload.as_ref()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// A subscription to `{prefix}.{what}` (replies, dead letters) on a connection of its
    /// own, in place on the server before anything is published; and that subject.
    pub async fn subscribe(&self, what: &str) -> (String, async_nats::Subscriber) {
        let client = super::nats().await;
        let subject = format!("{}.{what}", self.prefix);
        let sub = client.subscribe(subject.clone()).await.unwrap();
        client.flush().await.unwrap();
        (subject, sub)
    }

    /// A route `js` on this stream: `{prefix}.req.{id}` to `POST /orders/{id}`, dead letters
    /// to `{prefix}.dlq`. `extra` adds route keys or sections, `consumer` the keys of
    /// `[routes.jetstream]` besides the stream (durable, ack_wait and so on).
    pub fn route(&self, extra: &str, consumer: &str) -> String {
        format!(
            r#"
[[routes]]
name = "js"
source = "jetstream"
subject = "{prefix}.req.{{id}}"
method = "POST"
path = "/orders/{{id}}"
dead_letter = "{prefix}.dlq"
{extra}

[routes.jetstream]
stream = "{stream}"
{consumer}
"#,
            prefix = self.prefix,
            stream = self.name
        )
    }

    /// What the server holds now: messages, bytes, sequences.
    pub async fn state(&self) -> stream::State {
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        stream.info().await.unwrap().state.clone()
    }

    /// The durable consumer `durable` as the server holds it now.
    pub async fn consumer(&self, durable: &str) -> consumer::Info {
        self.try_consumer(durable)
            .await
            .unwrap_or_else(|e| panic!("consumer {durable} of stream {}: {e}", self.name))
    }

    /// [`Self::consumer`], or why the server did not answer (a test that reports on a
    /// server it bounces).
    pub async fn try_consumer(&self, durable: &str) -> Result<consumer::Info, String> {
        let stream = (self.js.get_stream(&self.name).await).map_err(|e| e.to_string())?;
        stream
            .consumer_info(durable)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// The stream name for `prefix`: upper case, `-` and `.` (which stream names cannot hold)
/// as `_`.
pub fn name_for(prefix: &str) -> String {
    prefix.to_uppercase().replace(['-', '.'], "_")
}

/// A request's headers: where its reply goes and its correlation id.
pub fn request_headers(reply_to: &str, correlation: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("reply-to", reply_to);
    headers.insert("correlation-id", correlation);
    headers
}
