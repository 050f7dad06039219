//! Core subscriptions kept across a reload. A reload whose new configuration still has a
//! core subscription with the same subject and queue group takes the running one over
//! instead of subscribing again and draining the old: nothing is unsubscribed, so no request
//! can fall between the two.
//!
//! Why not drain: async-nats forgets a draining subscription as soon as its UNSUB is written,
//! without waiting for the server to confirm it, so a request the server routed to it in the
//! meantime (a round trip's worth under load) arrives for a subscription the client no
//! longer knows and is dropped without a trace; its caller times out. A drain still ends the
//! subscriptions a reload removes or changes, where that window remains.

use std::collections::HashMap;

use async_nats::Subscriber;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Pipeline, Route};

/// What identifies a core subscription to the server: its subject and queue group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionKey {
    pub subject: String,
    pub queue_group: String,
}

impl SubscriptionKey {
    /// The subscription a core route makes: its pattern's subject, its own queue group or
    /// `default_group`.
    pub fn of(route: &Route, default_group: &str) -> Self {
        Self {
            subject: route.pattern.subscription_subject(),
            queue_group: (route.consumer_group.as_deref())
                .unwrap_or(default_group)
                .to_string(),
        }
    }
}

/// The core routes' subscriptions `pipeline` makes, in file order.
pub fn keys(pipeline: &Pipeline, default_group: &str) -> Vec<SubscriptionKey> {
    (pipeline.routes().iter())
        .filter(|r| super::is_core(r))
        .map(|r| SubscriptionKey::of(r, default_group))
        .collect()
}

/// Subscriptions taken over from the previous generation, by key (two routes of one
/// configuration may make the same subscription).
#[derive(Default)]
pub struct KeptSubscriptions(HashMap<SubscriptionKey, Vec<Subscriber>>);

impl KeptSubscriptions {
    pub fn add(&mut self, key: SubscriptionKey, subscriber: Subscriber) {
        self.0.entry(key).or_default().push(subscriber);
    }

    /// A kept subscription for `key`, if one is left.
    pub fn take(&mut self, key: &SubscriptionKey) -> Option<Subscriber> {
        self.0.get_mut(key).and_then(Vec::pop)
    }

    /// How many subscriptions are kept for each key.
    pub fn counts(&self) -> HashMap<SubscriptionKey, usize> {
        (self.0.iter()).map(|(k, v)| (k.clone(), v.len())).collect()
    }

    /// Every kept subscription, by key.
    pub fn drain(&mut self) -> impl Iterator<Item = (SubscriptionKey, Subscriber)> + '_ {
        (self.0.drain())
            .flat_map(|(key, subscribers)| subscribers.into_iter().map(move |s| (key.clone(), s)))
    }

    pub fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The generation's side of one running core intake: asks it to give its subscription up.
pub struct Handle {
    pub key: SubscriptionKey,
    release: CancellationToken,
    given: oneshot::Receiver<Subscriber>,
}

/// The intake's side: told to give its subscription up, it stops taking messages and hands
/// the subscription over with the messages it has not taken yet.
pub struct Release {
    pub(super) asked: CancellationToken,
    pub(super) give: Option<oneshot::Sender<Subscriber>>,
}

/// A pair for one intake of `key`.
pub fn pair(key: SubscriptionKey) -> (Handle, Release) {
    let (give, given) = oneshot::channel();
    let release = CancellationToken::new();
    let handle = Handle {
        key,
        release: release.clone(),
        given,
    };
    (
        handle,
        Release {
            asked: release,
            give: Some(give),
        },
    )
}

impl Handle {
    /// Whether the intake ended because it handed its subscription over (an expected end).
    pub fn released(&self) -> CancellationToken {
        self.release.clone()
    }

    /// Asks the intake for its subscription; `None` when it had already ended (its
    /// subscription or connection gone).
    pub async fn take(self) -> Option<Subscriber> {
        self.release.cancel();
        self.given.await.ok()
    }
}

impl Release {
    /// Hands `subscriber` over to whoever asked.
    pub(super) fn give(&mut self, subscriber: Subscriber) {
        if let Some(give) = self.give.take() {
            // The asking side waits for it; gone only if the reload itself was dropped.
            let _ = give.send(subscriber);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_keeps_its_subscription_only_with_the_same_subject_and_queue_group() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[nats]\nqueue_group = \"ricochet\"\n\
                    [[routes]]\nname = \"own\"\nsubject = \"orders.{id}\"\npath = \"/\"\nqueue_group = \"team\"\n\
                    [[routes]]\nname = \"default\"\nsubject = \"a.>\"\npath = \"/\"\n";
        let pipeline = crate::settings::load_str(text, Vec::new())
            .unwrap()
            .pipeline()
            .unwrap();
        let key = |subject: &str, group: &str| SubscriptionKey {
            subject: subject.into(),
            queue_group: group.into(),
        };
        assert_eq!(
            keys(&pipeline, "ricochet"),
            [key("orders.*", "team"), key("a.>", "ricochet")]
        );
    }
}
