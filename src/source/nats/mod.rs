//! The core NATS source: one queue subscription per route, and the intake loop that hands
//! each message to the pipeline within the route's `max_in_flight`. Core NATS has nothing
//! to settle: its [`Settle`] handle only publishes the reply to the inbox. The connection,
//! which JetStream routes share, is `connection.rs`'s.

use std::sync::Arc;

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

pub mod config;
mod connection;
pub mod discovery;
pub mod drops;
pub mod handover;
mod link;
pub mod publish;
mod unparsable;

pub use connection::{connect, describe, options, with_url_credentials, Nats, NatsError};
pub use handover::{KeptSubscriptions, Release, SubscriptionKey};
pub use link::{Connection, Link, LinkError};
pub use publish::{dead_letter_headers, ListingError, NatsReplier, PublishError, Unpublished};
pub use unparsable::{unparsable_seen, unparsable_within};

pub use self::config::NatsSource;
use crate::config::RouteConfig;
use crate::message::Reply;
use crate::message::{Cause, Confirmed, Inbound, Settle, Undelivered};
use crate::pipeline::{Admission, Pipeline, Policy, Route};
use crate::source::{Context, Intake, Source};
use crate::telemetry::trace::SpanSource;

use crate::route::{Captures, RouteTable};

/// What every core NATS intake shares.
pub struct Core {
    pipeline: Arc<Pipeline>,
    replier: Arc<NatsReplier>,
    /// The core NATS routes, in file order: the first match wins.
    table: RouteTable<Route>,
    /// `nats.queue_group`, for routes that name none of their own.
    queue_group: String,
}

impl Core {
    pub fn new(pipeline: Arc<Pipeline>, replier: Arc<NatsReplier>, queue_group: &str) -> Self {
        let core = (pipeline.routes().iter())
            .filter(|r| is_core(r))
            .map(|r| (r.pattern.clone(), r.clone()))
            .collect();
        Self {
            table: RouteTable::new(core),
            queue_group: queue_group.to_string(),
            pipeline,
            replier,
        }
    }
}

/// Whether `route` takes its messages from core NATS subscriptions.
pub fn is_core(route: &Route) -> bool {
    route.kind == NatsSource::KIND
}

impl NatsSource {
    /// The route's queue group: its own, else `default` (`nats.queue_group`).
    pub fn queue_group<'a>(&'a self, default: &'a str) -> &'a str {
        self.queue_group.as_deref().unwrap_or(default)
    }
}

impl Source for NatsSource {
    const KIND: &'static str = "nats";
    const DURABLE: bool = false;
    const USES_NATS: bool = true;

    fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        NatsSource::check(self, route, push)
    }

    fn policy(&self) -> Policy {
        Policy::at_most_once()
    }

    fn spans(&self, _: &RouteConfig, default_queue_group: &str) -> SpanSource {
        SpanSource {
            system: "nats",
            consumer_group: Some(self.queue_group(default_queue_group).to_string()),
        }
    }

    fn max_pending(&self, route: &RouteConfig) -> usize {
        NatsSource::max_pending(self, route)
    }

    /// Core routes are subscribed together ([`start_core`]): the first matching route wins
    /// across their subscriptions, and readiness waits for the server to confirm them all.
    fn intake(&self, _: Context) -> Option<Intake> {
        None
    }
}

/// Replies go to the request's inbox, handed to the connection (shutdown flushes them).
struct Inbox<'a>(&'a NatsReplier);

impl Settle for Inbox<'_> {
    fn too_large(&self, _: &str, reply: &Reply) -> Option<(usize, usize, &'static str)> {
        let (size, limit) = self.0.too_large(reply, &[])?;
        Some((size, limit, "the NATS server's max_payload"))
    }

    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        let published = self.0.publish(destination, reply).await;
        published
            .map(|()| Confirmed::Now)
            .map_err(|e| Undelivered::Failed(Cause::new(e)))
    }
}

/// Subscribes every core route with its queue group, or takes its subscription over from
/// `kept` (the previous generation's, with the same subject and queue group); each
/// subscription with its route and key. `kept` is used only once every new subscription is
/// made: on an error it is left whole, for its generation to take back.
pub async fn subscribe(
    client: &Client,
    core: &Core,
    kept: &mut KeptSubscriptions,
) -> anyhow::Result<Vec<(Arc<Route>, SubscriptionKey, Subscriber)>> {
    let routes: Vec<(Arc<Route>, SubscriptionKey)> = (core.table.iter())
        .map(|(_, route)| (route.clone(), SubscriptionKey::of(route, &core.queue_group)))
        .collect();
    let mut available = kept.counts();
    let mut fresh = Vec::new();
    for (route, key) in &routes {
        match available.get_mut(key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                let (subject, queue_group) = (key.subject.clone(), key.queue_group.clone());
                fresh.push(client.queue_subscribe(subject, queue_group).await?);
                info!(route = %route.name, subject = %key.subject, queue_group = %key.queue_group, "subscribed");
            }
        }
    }
    let mut fresh = fresh.into_iter();
    let mut subscribers = Vec::new();
    for (route, key) in routes {
        let subscriber = match kept.take(&key) {
            Some(subscriber) => {
                info!(route = %route.name, subject = %key.subject, queue_group = %key.queue_group, "subscription kept from the previous configuration");
                subscriber
            }
            None => fresh
                .next()
                .expect("one new subscription per route not kept"),
        };
        subscribers.push((route, key, subscriber));
    }
    Ok(subscribers)
}

impl Core {
    /// A route of this configuration that makes the subscription `key`, for a subscription
    /// given back after a refused reload.
    pub fn route_for(&self, key: &SubscriptionKey) -> Option<Arc<Route>> {
        (self.table.iter())
            .map(|(_, route)| route)
            .find(|route| SubscriptionKey::of(route, &self.queue_group) == *key)
            .cloned()
    }
}

/// Resolves once the server has processed every subscription sent before it: a message
/// to a fresh inbox on the same connection comes back only after the earlier SUBs.
pub async fn confirm_subscriptions(client: &Client) -> anyhow::Result<()> {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, "ready".into()).await?;
    probe.next().await;
    probe.unsubscribe().await?;
    Ok(())
}

/// Takes messages from one subscription until `stop`, then drains it: messages the server
/// already sent are still processed. Each message runs as a task on `tracker`. Asked
/// through `release` (a reload that keeps the subscription), it hands the subscription over
/// instead, with the messages not taken yet.
///
/// A drain ends when the server confirms it, which it cannot do while the connection is
/// down; nor can it send anything more then. So a drain on a lost connection ends as soon
/// as the messages already received are taken, and shutdown does not wait for a
/// reconnection that may never come.
pub async fn intake(
    own: Arc<Route>,
    mut subscriber: Subscriber,
    core: Arc<Core>,
    tracker: TaskTracker,
    stop: CancellationToken,
    mut release: Release,
) {
    let mut draining = false;
    let link = core.replier.link().clone();
    // Made once, not once per message: each would register with its token, be polled and
    // be unregistered again for every message taken.
    let asked = release.asked.clone().cancelled_owned();
    let stopped = stop.clone().cancelled_owned();
    tokio::pin!(asked, stopped);
    loop {
        let message = tokio::select! {
            // Biased: the messages already received are taken before a lost connection
            // ends the drain.
            biased;
            // Each at most once: either ends the loop or starts the drain, which disables both.
            _ = &mut asked, if !draining => {
                release.give(subscriber);
                return;
            }
            _ = &mut stopped, if !draining => {
                draining = true;
                // A lost connection may leave the client's command queue full: the drain
                // is not waited for then.
                tokio::select! {
                    () = drain(&mut subscriber) => {}
                    () = link.down() => {}
                }
                continue;
            }
            message = subscriber.next() => message,
            () = link.down(), if draining => {
                info!(route = %own.name, "connection to NATS down: the drain ends with the messages already received");
                break;
            }
        };
        let Some(message) = message else { break };
        let inbound = to_inbound(message);
        // The first matching route wins, even when the message came on another route's
        // subscription (overlapping patterns share the queue group). The server only
        // delivers subjects this subscription's own pattern matches, so that is the fallback.
        let (route, captures) = match core.table.find(&inbound.subject) {
            Some((route, captures)) => (route.clone(), captures),
            None => (
                own.clone(),
                own.pattern.matches(&inbound.subject).unwrap_or_default(),
            ),
        };
        route.received();
        let core = core.clone();
        // A full route never holds the intake up: up to `max_pending` messages wait for a
        // slot in their own tasks (the semaphore serves them in order), and the rest are
        // answered 503 at once, so callers learn of the overload instead of timing out.
        match route.admit() {
            Admission::Now(permit) => {
                tracker.spawn(handle(core, route, captures, inbound, permit));
            }
            Admission::Queued(line) => {
                tracker.spawn(async move {
                    if let Some(permit) = line.slot().await {
                        handle(core, route, captures, inbound, permit).await;
                    }
                });
            }
            Admission::Full => {
                tracker.spawn(async move {
                    let settle = Inbox(&core.replier);
                    core.pipeline.shed(&route, &inbound, &settle).await;
                });
            }
        }
    }
}

/// One message through the pipeline, holding its route's slot.
async fn handle(
    core: Arc<Core>,
    route: Arc<Route>,
    captures: Captures,
    inbound: Inbound,
    permit: crate::pipeline::Slot,
) {
    let taken = route.in_flight();
    let settle = Inbox(&core.replier);
    // Boxed: the handling future is a few KB, which a spawn would otherwise copy several
    // times per message.
    Box::pin(
        core.pipeline
            .deliver(&route, Some(captures), &inbound, &settle),
    )
    .await;
    drop((permit, taken));
}

/// Unsubscribes, letting messages the server already sent arrive. If that fails (the
/// connection is gone), the subscription ends by itself with the connection.
async fn drain(subscriber: &mut Subscriber) {
    if let Err(e) = subscriber.drain().await {
        error!(error = %e, "could not drain the subscription");
    }
}

/// NATS message headers in the [`Inbound`] form: every value of every name, in order.
pub fn headers(map: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else {
        return Vec::new();
    };
    map.iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |value| (name.to_owned(), value.as_str().to_owned()))
        })
        .collect()
}

fn to_inbound(message: async_nats::Message) -> Inbound {
    let headers = headers(message.headers.as_ref());
    Inbound::new(
        // as_str, not to_string: no formatting machinery per message.
        message.subject.as_str().to_owned(),
        message.reply.map(|r| r.as_str().to_owned()),
        headers,
        message.payload,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_route_subscribes_with_its_own_queue_group_else_the_default() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[nats]\nqueue_group = \"ricochet\"\n\
                    [[routes]]\nname = \"own\"\nsubject = \"a\"\npath = \"/\"\nqueue_group = \"orders-team\"\n\
                    [[routes]]\nname = \"none\"\nsubject = \"b\"\npath = \"/\"\n";
        let pipeline = crate::settings::load_str(text, Vec::new())
            .unwrap()
            .pipeline()
            .unwrap();
        let groups: Vec<Option<&str>> = (pipeline.routes().iter())
            .map(|r| r.consumer_group.as_deref())
            .collect();
        assert_eq!(groups, [Some("orders-team"), Some("ricochet")]);
    }
}
