//! The settlement policy: what becomes of a request message once its processing is done,
//! the same for every source. Pure: the pipeline carries the decision out through the
//! source's [`crate::message::Settle`] handle.
//!
//! | processed | delivery | then |
//! |---|---|---|
//! | answered (any status the route does not retry) | any | [`Action::Answer`]: reply, ack |
//! | can never be delivered (refused, unmappable) | any | [`Action::GiveUp`]: dead letter, error reply, terminate |
//! | retryable, deliveries left | at-least-once | [`Action::Redeliver`] after the nth delay |
//! | retryable, deliveries used up | at-least-once | [`Action::GiveUp`] with [`Reason::Exhausted`] |
//! | retryable | at-most-once | [`Action::Answer`] with the error reply (nothing comes again) |
//! | expired (nobody waits for it) | any | [`Action::Expire`]: ack, or dead letter as the route says |
//!
//! And when the reply itself could not be published: redeliver (the message is processed
//! again), or on the last delivery give up with [`Reason::PublishFailed`].

use std::time::Duration;

use super::{Disposition, Processed};
use crate::config::Delivery;
use crate::message::ErrorKind;

/// One route's settlement settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// At-most-once: the message was settled on receipt; nothing is redelivered.
    pub at_most_once: bool,
    /// Deliveries after which a retryable failure is dead-lettered; `None`: never.
    pub max_deliveries: Option<u32>,
    /// The key that sets `max_deliveries`, named in the dead letter's reason.
    pub exhausted_reason: &'static str,
    /// Delay before the nth redelivery; the last repeats. Empty: at once.
    pub delays: Vec<Duration>,
}

impl Policy {
    /// Request-reply without a stream: nothing to settle, nothing comes again.
    pub fn at_most_once() -> Self {
        Self {
            at_most_once: true,
            max_deliveries: Some(1),
            exhausted_reason: "max_deliver",
            delays: Vec::new(),
        }
    }

    pub fn durable(
        delivery: Delivery,
        max_deliveries: Option<u32>,
        exhausted_reason: &'static str,
        delays: Vec<Duration>,
    ) -> Self {
        Self {
            at_most_once: delivery == Delivery::AtMostOnce,
            max_deliveries,
            exhausted_reason,
            delays,
        }
    }

    /// What to do with a message after its `delivered`th processing.
    pub fn decide(&self, processed: &Processed, delivered: u32) -> Action {
        match processed.disposition {
            Disposition::Answered => Action::Answer,
            Disposition::Expired => Action::Expire,
            Disposition::Undeliverable => Action::GiveUp(
                processed
                    .error
                    .map_or(Reason::Undeliverable, Reason::Refused),
            ),
            Disposition::Retry if self.at_most_once => Action::Answer,
            Disposition::Retry if self.last(delivered) => Action::GiveUp(Reason::Exhausted),
            Disposition::Retry => Action::Redeliver(self.delay(delivered)),
        }
    }

    /// What to do when the reply of the `delivered`th processing could not be published.
    pub fn reply_failed(&self, delivered: u32) -> Action {
        if self.at_most_once {
            // Settled on receipt: the reply is lost with it.
            Action::Answer
        } else if self.last(delivered) {
            Action::GiveUp(Reason::PublishFailed)
        } else {
            Action::Redeliver(self.delay(delivered))
        }
    }

    /// When the dead letter could not be published: the message comes again.
    pub fn dead_letter_failed(&self, delivered: u32) -> Duration {
        self.delay(delivered)
    }

    fn last(&self, delivered: u32) -> bool {
        self.max_deliveries.is_some_and(|max| delivered >= max)
    }

    /// The delay before redelivery after the `delivered`th delivery: the nth entry, the
    /// last repeating.
    pub fn delay(&self, delivered: u32) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        (self.delays.get(index).or(self.delays.last()))
            .copied()
            .unwrap_or_default()
    }
}

/// What becomes of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish the reply (if the message has a destination), then ack.
    Answer,
    /// No reply yet: the message comes again after the delay.
    Redeliver(Duration),
    /// Dead letter, error reply (unless the reply is what failed), terminate.
    GiveUp(Reason),
    /// Nobody waits for it: settled as the route's `lifetime` says, without a call.
    Expire,
}

/// Why a message was given up: the dead letter's `Ricochet-Dead-Letter-Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Retryable failures used up the route's deliveries.
    Exhausted,
    /// ricochet refused it (too large, unmappable, no route, bad reply destination, ...).
    Refused(ErrorKind),
    /// The service's answer cannot be carried (a response larger than allowed).
    Undeliverable,
    /// Its reply could not be published on the last delivery.
    PublishFailed,
}

impl Reason {
    pub fn as_str(self, policy: &Policy) -> &'static str {
        match self {
            Reason::Exhausted => policy.exhausted_reason,
            Reason::Refused(kind) => kind.as_str(),
            Reason::Undeliverable => "undeliverable",
            Reason::PublishFailed => "publish_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Reply;

    fn processed(disposition: Disposition, error: Option<ErrorKind>) -> Processed {
        Processed {
            reply: Reply::error(ErrorKind::UpstreamUnavailable, "x"),
            disposition,
            error,
            detail: None,
        }
    }

    fn jetstream() -> Policy {
        let delays = [1, 5, 30].map(Duration::from_secs).to_vec();
        Policy::durable(Delivery::AtLeastOnce, Some(3), "max_deliver", delays)
    }

    #[test]
    fn answers_are_replied_and_acked_on_any_delivery() {
        let answered = processed(Disposition::Answered, None);
        for delivered in 1..=5 {
            assert_eq!(jetstream().decide(&answered, delivered), Action::Answer);
        }
    }

    #[test]
    fn retryable_failures_come_again_with_the_nth_delay_until_the_last_delivery() {
        let policy = jetstream();
        let retry = processed(Disposition::Retry, Some(ErrorKind::Timeout));
        assert_eq!(
            policy.decide(&retry, 1),
            Action::Redeliver(Duration::from_secs(1))
        );
        assert_eq!(
            policy.decide(&retry, 2),
            Action::Redeliver(Duration::from_secs(5))
        );
        assert_eq!(policy.decide(&retry, 3), Action::GiveUp(Reason::Exhausted));
        assert_eq!(Reason::Exhausted.as_str(&policy), "max_deliver");
        // The last delay repeats.
        let forever = Policy::durable(
            Delivery::AtLeastOnce,
            None,
            "dead_letter_after",
            vec![Duration::from_secs(1), Duration::from_secs(2)],
        );
        assert_eq!(
            forever.decide(&retry, 1),
            Action::Redeliver(Duration::from_secs(1))
        );
        assert_eq!(
            forever.decide(&retry, 2),
            Action::Redeliver(Duration::from_secs(2))
        );
        assert_eq!(
            forever.decide(&retry, 1000),
            Action::Redeliver(Duration::from_secs(2))
        );
    }

    #[test]
    fn refused_messages_are_given_up_at_once_with_their_kind() {
        let policy = jetstream();
        let refused = processed(Disposition::Undeliverable, Some(ErrorKind::PayloadTooLarge));
        assert_eq!(
            policy.decide(&refused, 1),
            Action::GiveUp(Reason::Refused(ErrorKind::PayloadTooLarge))
        );
        assert_eq!(
            Reason::Refused(ErrorKind::PayloadTooLarge).as_str(&policy),
            "payload_too_large"
        );
        let unnamed = processed(Disposition::Undeliverable, None);
        assert_eq!(
            policy.decide(&unnamed, 1),
            Action::GiveUp(Reason::Undeliverable)
        );
    }

    #[test]
    fn at_most_once_answers_retryable_failures_and_never_redelivers() {
        for policy in [
            Policy::at_most_once(),
            Policy::durable(
                Delivery::AtMostOnce,
                Some(5),
                "max_deliver",
                vec![Duration::from_secs(1)],
            ),
        ] {
            let retry = processed(Disposition::Retry, Some(ErrorKind::CircuitOpen));
            assert_eq!(policy.decide(&retry, 1), Action::Answer);
            assert_eq!(policy.reply_failed(1), Action::Answer);
            let refused = processed(Disposition::Undeliverable, Some(ErrorKind::BadRequest));
            assert!(matches!(policy.decide(&refused, 1), Action::GiveUp(_)));
        }
    }

    #[test]
    fn a_reply_that_failed_comes_again_then_is_given_up() {
        let policy = jetstream();
        assert_eq!(
            policy.reply_failed(1),
            Action::Redeliver(Duration::from_secs(1))
        );
        assert_eq!(
            policy.reply_failed(3),
            Action::GiveUp(Reason::PublishFailed)
        );
        assert_eq!(Reason::PublishFailed.as_str(&policy), "publish_failed");
        assert_eq!(policy.dead_letter_failed(2), Duration::from_secs(5));
    }
}
