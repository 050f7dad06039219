//! The contract between the pipeline and a source for one message: the pipeline decides
//! (`pipeline::policy`), the source's [`Settle`] handle carries it out on its broker, and
//! says in typed outcomes what happened. Every source implements it; the pipeline is the
//! only caller.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{DeadLetter, Reply};

/// What a broker or its client said when something failed, kept as the error it was: for
/// logs and error chains. Callers branch on the variant that carries it, never on its text.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// A client library's error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// A client library's error that comes boxed.
    pub fn boxed(error: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self(Arc::from(error))
    }

    /// A failure ricochet describes in its own words (e.g. a negative confirm).
    pub fn text(text: impl Into<String>) -> Self {
        #[derive(Debug)]
        struct Text(String);
        impl fmt::Display for Text {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Text {}
        Self(Arc::new(Text(text.into())))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why a reply or dead letter did not reach the broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Undelivered {
    /// Not now (connection, broker refused it for the moment): the message should come
    /// again.
    #[error("{0}")]
    Failed(Cause),
    /// The message is no longer this replica's (its partition was revoked, its channel
    /// closed, or ricochet is stopping): leave it to its next owner, settle nothing.
    #[error("the message is no longer ours")]
    Lost,
    /// Never: no retry can publish it (no such topic, not authorised). Counted as a failed
    /// publish; the message is finished.
    #[error("{0}")]
    Dropped(Cause),
}

/// Why a settlement (ack, redelivery, termination) was not confirmed. Whatever the cause,
/// the broker still holds the message and delivers it again: nothing is lost.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SettleError {
    /// The connection or channel the message came on is gone.
    #[error("the connection the message came on is gone")]
    ConnectionLost,
    /// The broker refused it, or its client failed.
    #[error("{what}: {cause}")]
    Broker { what: &'static str, cause: Cause },
    /// The message is no longer this replica's (its Kafka partition was revoked, or
    /// rewound after an aborted transaction): its next delivery settles it.
    #[error("the message is no longer ours")]
    Lost,
}

/// How far a publish or a settlement got when its call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The broker confirmed it (or there was nothing to confirm): it counts now.
    Now,
    /// Staged in a transaction the source commits later (Kafka exactly-once). The source
    /// counts it when the transaction commits; if it aborts, the message comes again and
    /// nothing was counted twice.
    AtCommit,
}

/// What became of a message that should come again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivered {
    /// The broker has it and delivers it again after the delay (a JetStream nak, an AMQP
    /// retry-queue copy): this delivery is settled.
    ByBroker,
    /// The source runs it again itself after this delay (Kafka: the record waits in its
    /// lane); it is not settled, so the settlement is counted once, when it is final.
    Local(Duration),
}

/// What became of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLettered {
    /// Published to the route's dead-letter destination.
    Published(Confirmed),
    /// The route has no dead-letter destination.
    NoDestination,
}

/// What an at-most-once source did on receipt, before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Settled (acked, committed): the message never comes again, whatever happens next.
    Settled,
    /// The broker keeps nothing to settle (core NATS).
    NothingToSettle,
}

/// How a source publishes and settles one message. The pipeline calls these in the order
/// the settlement policy decides; a source without settlement (core NATS) leaves the
/// defaults.
pub trait Settle: Sync {
    /// The broker's limit on a reply, if this one would exceed it: `(size, limit, what)`.
    fn too_large(
        &self,
        _destination: &str,
        _reply: &Reply,
    ) -> Option<(usize, usize, &'static str)> {
        None
    }

    /// Why the broker cannot take a reply at `destination` (not a subject, a system subject,
    /// not a topic name), if it cannot.
    fn destination_problem(&self, _destination: &str) -> Option<&'static str> {
        None
    }

    /// At-most-once: settles the message on receipt, before the service is called. If this
    /// fails the message is not processed (it comes again).
    fn accept(&self) -> impl Future<Output = Result<Accepted, SettleError>> + Send {
        async { Ok(Accepted::NothingToSettle) }
    }

    /// Publishes the reply; durable sources return once the broker confirmed it.
    fn reply(
        &self,
        destination: &str,
        reply: &Reply,
    ) -> impl Future<Output = Result<Confirmed, Undelivered>> + Send;

    /// Publishes the message to the route's dead-letter destination, if it has one.
    fn dead_letter(
        &self,
        _letter: &DeadLetter<'_>,
    ) -> impl Future<Output = Result<DeadLettered, Undelivered>> + Send {
        async { Ok(DeadLettered::NoDestination) }
    }

    /// The message is done.
    fn ack(&self) -> impl Future<Output = Result<Confirmed, SettleError>> + Send {
        async { Ok(Confirmed::Now) }
    }

    /// The message should come again after `delay`.
    fn redeliver(
        &self,
        delay: Duration,
    ) -> impl Future<Output = Result<Redelivered, SettleError>> + Send {
        async move { Ok(Redelivered::Local(delay)) }
    }

    /// The message must never come again (after its dead letter).
    fn terminate(&self) -> impl Future<Output = Result<Confirmed, SettleError>> + Send {
        async { Ok(Confirmed::Now) }
    }
}
