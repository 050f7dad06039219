//! The shared reply store: one route's replies on NATS JetStream key-value, so that a
//! request whose reply is stored is answered again without calling the service, on any
//! replica and after any redelivery (`pipeline/store.rs` is the stage that uses it).
//!
//! One entry per request (`key`): a digest of the route, the message's idempotency key,
//! its subject and its payload. An entry is a claim (a delivery is calling the service
//! until its lease ends) or the reply (`encoding`). A delivery claims a key by writing only
//! where nothing, a deleted entry or an expired claim is (compare-and-set on the revision
//! it saw), so of two concurrent deliveries one calls and the other waits for its reply.
//! Entries expire with the bucket's `max_age` (the route's `ttl`).

mod counters;
pub mod encoding;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{debug, info};

pub use self::counters::{Lookup, Step, StoreMetrics, Unprotected};
use self::encoding::{decode, encode_claim, encode_reply, Entry};
use crate::config::ReplyStoreConfig;
use crate::message::{Inbound, Reply};

/// The request header a caller's own idempotency key arrives in (core NATS has no other).
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// How long a claim may outlive its call's deadline: storing the reply, and clocks of
/// replicas that disagree a little.
pub const LEASE_SLACK: Duration = Duration::from_secs(2);

/// Polling a claim of another delivery: from this interval, doubling...
const POLL_FIRST: Duration = Duration::from_millis(20);
/// ...up to this one.
const POLL_MAX: Duration = Duration::from_millis(500);

/// A store entry's key: hex SHA-256 of the route, the idempotency key, the subject and
/// the payload. A request with the same key but another body or subject is another entry:
/// whoever knows a key cannot read the reply of a different request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKey(String);

impl StoreKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the store could not be asked or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no NATS connection for the reply store")]
    NoConnection,
    #[error("reply store bucket {bucket:?}: {cause}")]
    Bucket { bucket: String, cause: String },
    #[error("reply store {operation}: {cause}")]
    Request {
        operation: &'static str,
        cause: String,
    },
}

fn request(operation: &'static str) -> impl FnOnce(String) -> StoreError {
    move |cause| StoreError::Request { operation, cause }
}

/// What a delivery found when it asked for its key.
#[derive(Debug)]
pub enum Acquired {
    /// Nobody had answered or is calling: this delivery calls and stores the reply.
    Ours(Found),
    /// The reply, stored by an earlier delivery.
    Stored(Reply, Found),
    /// Another delivery is calling and its lease outlasts this message's deadline: it
    /// comes again (or, without redelivery, its caller gets a timeout).
    Busy,
}

/// How the key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Absent (never stored, expired, released) or unreadable: claimed.
    Free,
    /// Claimed by another delivery: waited for it.
    AfterWait,
    /// Claimed by another delivery whose lease ended (it died, or its replica's clock is
    /// far off): taken over.
    TakenOver,
    /// Stored already.
    AtOnce,
}

/// What became of a reply after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Stored,
    /// Larger than the server takes in one message: not stored, the claim released.
    TooLarge {
        size: usize,
        limit: usize,
    },
}

/// One route's reply store.
pub struct ReplyStore {
    pub config: ReplyStoreConfig,
    route: String,
    /// Given once the generation has its NATS connection.
    client: OnceLock<async_nats::Client>,
    /// Bound (or created) on first use, so that a store that is down at start is a store
    /// that is unavailable for the messages of that time, not a route that never starts.
    bucket: tokio::sync::OnceCell<kv::Store>,
    pub metrics: StoreMetrics,
}

impl std::fmt::Debug for ReplyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStore")
            .field("bucket", &self.config.bucket)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl ReplyStore {
    pub fn new(config: &ReplyStoreConfig, route: &str, source: &'static str) -> Self {
        Self {
            config: config.clone(),
            route: route.to_string(),
            client: OnceLock::new(),
            bucket: tokio::sync::OnceCell::new(),
            metrics: StoreMetrics::new(route, source),
        }
    }

    /// The NATS connection the store is asked on.
    pub fn connect(&self, client: async_nats::Client) {
        let _ = self.client.set(client);
    }

    /// The message's entry key, when it has an idempotency key: the request's own
    /// `Idempotency-Key` header, else its source's (a `Nats-Msg-Id` or stream position, a
    /// Kafka record's position, an AMQP message id).
    pub fn key(&self, inbound: &Inbound) -> Option<StoreKey> {
        let id = (inbound.header(IDEMPOTENCY_KEY_HEADER)).or(inbound.idempotency_key.as_deref())?;
        let mut digest = Sha256::new();
        for part in [
            self.route.as_bytes(),
            id.as_bytes(),
            inbound.subject.as_bytes(),
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.update(&inbound.payload);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // Per keyed message: hex by table, not through the formatting machinery.
        let hex = (digest.finalize().iter())
            .flat_map(|byte| [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]])
            .map(char::from)
            .collect();
        Some(StoreKey(hex))
    }

    async fn bucket(&self) -> Result<&kv::Store, StoreError> {
        let client = self.client.get().ok_or(StoreError::NoConnection)?;
        let bucket = &self.config.bucket;
        let failed = |cause: String| StoreError::Bucket {
            bucket: bucket.clone(),
            cause,
        };
        self.bucket
            .get_or_try_init(|| async {
                let mut context = async_nats::jetstream::new(client.clone());
                context.set_timeout(self.config.timeout);
                let timeout = self.config.timeout;
                match within(timeout, context.get_key_value(bucket.as_str())).await {
                    Ok(Ok(store)) => return Ok(store),
                    Ok(Err(e)) if e.kind() == kv_missing() => {}
                    Ok(Err(e)) => return Err(failed(e.to_string())),
                    Err(()) => return Err(failed("timed out".into())),
                }
                // The bucket's stream, made as async-nats' `create_key_value` makes it. Not
                // through that call: it first reads the account's JetStream info, which
                // async-nats 0.52 cannot parse from servers before 2.10 (no
                // `reserved_memory`), so it failed on every 2.9 server.
                let stream = async_nats::jetstream::stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some(
                        "ricochet: replies by request, served again on redelivery".into(),
                    ),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age: self.config.ttl,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    num_replicas: 1,
                    discard: async_nats::jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                };
                let created = within(timeout, context.get_or_create_stream(stream)).await;
                created
                    .map_err(|()| failed("timed out".into()))?
                    .map_err(|e| failed(e.to_string()))?;
                let opened = within(timeout, context.get_key_value(bucket.as_str())).await;
                let store = opened
                    .map_err(|()| failed("timed out".into()))?
                    .map_err(|e| failed(e.to_string()))?;
                info!(bucket = %bucket, ttl = ?self.config.ttl, "reply store bucket created");
                Ok(store)
            })
            .await
    }

    /// Finds the key's reply, or claims the key for this delivery until `lease_until_ms`;
    /// waits for another delivery's claim at most until `deadline` (this message's own).
    pub async fn acquire(
        &self,
        key: &StoreKey,
        lease_until_ms: u64,
        deadline: Instant,
    ) -> Result<Acquired, StoreError> {
        let bucket = self.bucket().await?;
        let claim = encode_claim(lease_until_ms);
        let mut found = Found::Free;
        let mut poll = POLL_FIRST;
        // Write the claim where nothing is (revision 0); else read what is there.
        let mut write = Some(0);
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) && Instant::now() >= deadline {
                return Ok(Acquired::Busy);
            }
            if let Some(expected) = write.take() {
                if self.cas(bucket, key, claim.clone(), expected).await? {
                    return Ok(Acquired::Ours(found));
                }
            }
            let Some(entry) = self.entry(bucket, key).await? else {
                // Gone between the write and the read (expired, purged): write again.
                write = Some(0);
                continue;
            };
            if entry.operation != Operation::Put {
                // Released (deleted) or purged: free.
                write = Some(entry.revision);
                continue;
            }
            match decode(&entry.value) {
                Ok(Entry::Reply(reply)) => {
                    let found = match found {
                        Found::AfterWait => Found::AfterWait,
                        _ => Found::AtOnce,
                    };
                    return Ok(Acquired::Stored(reply, found));
                }
                Ok(Entry::Claim { lease_until_ms }) if lease_until_ms > now_ms() => {
                    if Instant::now() + poll > deadline {
                        return Ok(Acquired::Busy);
                    }
                    // Read it again after a while: a reply, a release, or the same claim.
                    found = Found::AfterWait;
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(POLL_MAX);
                }
                Ok(Entry::Claim { .. }) => {
                    debug!(route = %self.route, "a claim whose lease ended: taken over");
                    found = Found::TakenOver;
                    write = Some(entry.revision);
                }
                Err(e) => {
                    debug!(route = %self.route, error = %e, "an entry this ricochet cannot read: replaced");
                    write = Some(entry.revision);
                }
            }
        }
    }

    /// Writes `value` if the key's last revision is `expected` (0: no entry); false when
    /// it is not.
    async fn cas(
        &self,
        bucket: &kv::Store,
        key: &StoreKey,
        value: Bytes,
        expected: u64,
    ) -> Result<bool, StoreError> {
        let written = within(
            self.config.timeout,
            bucket.update(key.as_str(), value, expected),
        )
        .await
        .map_err(|()| request("claim")("timed out".into()))?;
        match written {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(request("claim")(e.to_string())),
        }
    }

    async fn entry(
        &self,
        bucket: &kv::Store,
        key: &StoreKey,
    ) -> Result<Option<kv::Entry>, StoreError> {
        within(self.config.timeout, bucket.entry(key.as_str()))
            .await
            .map_err(|()| request("lookup")("timed out".into()))?
            .map_err(|e| request("lookup")(e.to_string()))
    }

    /// Stores the reply under `key` (replacing this delivery's claim), unless it is larger
    /// than one message of the server may be: then the claim is released.
    pub async fn keep(&self, key: &StoreKey, reply: &Reply) -> Result<Kept, StoreError> {
        let bucket = self.bucket().await?;
        let value = encode_reply(reply);
        let limit = (self.client.get())
            .map(|c| c.server_info().max_payload)
            .unwrap_or(usize::MAX);
        if value.len() > limit {
            self.release(key).await?;
            return Ok(Kept::TooLarge {
                size: value.len(),
                limit,
            });
        }
        within(self.config.timeout, bucket.put(key.as_str(), value))
            .await
            .map_err(|()| request("store")("timed out".into()))?
            .map_err(|e| request("store")(e.to_string()))?;
        Ok(Kept::Stored)
    }

    /// Gives the key up (the call did not answer finally): the next delivery calls.
    pub async fn release(&self, key: &StoreKey) -> Result<(), StoreError> {
        let bucket = self.bucket().await?;
        within(self.config.timeout, bucket.delete(key.as_str()))
            .await
            .map_err(|()| request("release")("timed out".into()))?
            .map_err(|e| request("release")(e.to_string()))
    }
}

fn kv_missing() -> async_nats::jetstream::context::KeyValueErrorKind {
    async_nats::jetstream::context::KeyValueErrorKind::GetBucket
}

/// `future`, given up after `limit`: the client's own timeouts do not cover every step.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> Result<T, ()> {
    tokio::time::timeout(limit, future).await.map_err(|_| ())
}

/// The Unix time in milliseconds: leases are compared across replicas.
pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(route: &str) -> ReplyStore {
        let config: ReplyStoreConfig = toml::from_str("on_unavailable = \"call\"").unwrap();
        ReplyStore::new(&config, route, "nats")
    }

    fn inbound(subject: &str, key: Option<&str>, own: Option<&str>, payload: &str) -> Inbound {
        let headers = own.map(|k| vec![(IDEMPOTENCY_KEY_HEADER.to_string(), k.to_string())]);
        let mut inbound = Inbound::new(
            subject.into(),
            None,
            headers.unwrap_or_default(),
            payload.to_string().into(),
        );
        inbound.idempotency_key = key.map(str::to_string);
        inbound
    }

    fn key(store: &ReplyStore, inbound: &Inbound) -> String {
        store.key(inbound).expect("keyed").0
    }

    #[test]
    fn an_entry_key_is_hex_of_route_id_subject_and_payload_each_of_which_changes_it() {
        let orders = store("orders");
        let base = key(&orders, &inbound("a.b", Some("k"), None, "body"));
        assert_eq!(base.len(), 64);
        assert!(base
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // The same request on a redelivery: the same entry.
        assert_eq!(key(&orders, &inbound("a.b", Some("k"), None, "body")), base);
        for other in [
            key(&store("billing"), &inbound("a.b", Some("k"), None, "body")),
            key(&orders, &inbound("a.b", Some("k2"), None, "body")),
            key(&orders, &inbound("a.c", Some("k"), None, "body")),
            key(&orders, &inbound("a.b", Some("k"), None, "body!")),
            // Parts are length-prefixed: moving bytes between them is another entry.
            key(&orders, &inbound("a.b", Some("ka"), None, "ody")),
        ] {
            assert_ne!(other, base);
        }
        // The request's own Idempotency-Key wins over the source's.
        assert_eq!(
            key(&orders, &inbound("a.b", Some("src"), Some("k"), "body")),
            base
        );
        // No key at all: no entry, the service is simply called.
        assert!(orders.key(&inbound("a.b", None, None, "body")).is_none());
    }
}
