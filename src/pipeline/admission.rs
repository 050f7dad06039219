//! Admission: the first step of the flow after a source has a message, the same for every
//! source. A durable source asks [`Route::admission`] before it takes a message (the
//! breaker's gate: nothing taken while the circuit is open, one probe at a time while it
//! is half-open; then a `max_in_flight` slot); a source whose broker cannot keep messages
//! for it (request-reply without a stream) asks [`Route::admit`] (a slot, a place in the `max_pending` line, or refused).
//! Every message a source takes is held by a [`Taken`] guard, which keeps
//! `ricochet_messages_received_total` and `ricochet_in_flight_messages` true on every path.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::TryAcquireError;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::Route;
use crate::invoke::breaker::State;
pub use crate::invoke::Slot;

/// The line of messages waiting for a slot of a full route, at most `max` long (the
/// source's `max_pending`; durable sources leave such messages in the broker).
#[derive(Debug)]
pub struct Queue {
    waiting: AtomicUsize,
    max: usize,
}

impl Queue {
    pub(super) fn new(max: usize) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place in the line; false when it is full.
    fn join(&self) -> bool {
        (self.waiting)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Route::admit`] gives a message that must not hold its intake up.
pub enum Admission {
    /// A slot, free at once.
    Now(Slot),
    /// A place in the route's waiting line: [`InLine::slot`] waits for a slot.
    Queued(InLine),
    /// No slot and the line is full (or the route closed): the message is refused.
    Full,
}

/// A place in a full route's waiting line, given back when it is dropped: once its message
/// has a slot, or if that message is abandoned on the way.
pub struct InLine(Arc<Route>);

impl InLine {
    /// Waits for a slot; `None` once the route is closed.
    pub async fn slot(self) -> Option<Slot> {
        self.0.limit.slot().await
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.0.queue.leave();
    }
}

/// What a durable source holds before it takes a message: a slot of the route's
/// `max_in_flight`, given while the breaker admits calls.
pub struct Admitted {
    pub permit: Slot,
    /// The breaker is probing the service: take one message, and take the next only once
    /// that one's call has its verdict ([`Admitted::run`] waits for it).
    pub probe: bool,
}

impl Admitted {
    /// Runs the message's `work` as a task on `tracker`, holding the slot until it ends. A
    /// probe is waited for, so that one probe at a time reaches the service.
    pub async fn run(self, tracker: &TaskTracker, work: impl Future<Output = ()> + Send + 'static) {
        let Admitted { permit, probe } = self;
        let task = tracker.spawn(async move {
            work.await;
            drop(permit);
        });
        if probe {
            let _ = task.await;
        }
    }
}

/// A message a source has taken, from then until it is finished (settled, abandoned or
/// dropped on any path): counted once as received, and in flight while this lives.
pub struct Taken {
    in_flight: metrics::Gauge,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
    }
}

impl Route {
    /// The source has taken a message (every delivery counts, a redelivery too): received,
    /// and in flight until the guard is dropped.
    pub fn take(&self) -> Taken {
        self.received();
        self.in_flight()
    }

    /// Counts a message received. A source whose messages may wait inside ricochet (its
    /// `max_pending` line) counts them on arrival and puts them in flight only once they
    /// have a slot ([`Route::in_flight`]): one waiting in the line, or shed, is received but
    /// not in flight.
    pub fn received(&self) {
        self.metrics.received.increment(1);
    }

    /// A received message is in flight until the guard is dropped.
    pub fn in_flight(&self) -> Taken {
        self.metrics.in_flight.increment(1.0);
        Taken {
            in_flight: self.metrics.in_flight.clone(),
        }
    }

    /// Durable sources, before taking a message: waits while the circuit is open (taking
    /// messages then would only use up their deliveries), then for a slot. `None` once the
    /// route is closed. Sources race it against their own stop conditions.
    pub async fn admission(&self) -> Option<Admitted> {
        let breaker = &self.invoker.breaker;
        loop {
            if breaker.admits().is_err() {
                debug!(route = %self.name, "circuit open: taking nothing until it admits a call");
                breaker.admitted().await;
                continue;
            }
            let probe = breaker.state() != State::Closed;
            let permit = self.slot().await?;
            return Some(Admitted { permit, probe });
        }
    }

    /// Up to `n` more slots, only those free at once (a batch beyond the first message).
    pub fn free_slots(&self, n: usize) -> Vec<Slot> {
        (0..n).map_while(|_| self.limit.try_slot().ok()).collect()
    }

    /// A slot of the route's `max_in_flight`: at once when one is free, else counted as
    /// throttled and waited for. `None` once the route is closed.
    pub async fn slot(&self) -> Option<Slot> {
        match self.limit.try_slot() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => {
                self.metrics.throttled.increment(1);
                self.limit.slot().await
            }
        }
    }

    /// For an intake that must not wait (no broker keeps its messages): a slot at once, else a place in the
    /// waiting line of `max_pending` (counted as throttled), else refused.
    pub fn admit(self: &Arc<Self>) -> Admission {
        match self.limit.try_slot() {
            Ok(permit) => Admission::Now(permit),
            Err(TryAcquireError::NoPermits) if self.queue.join() => {
                self.metrics.throttled.increment(1);
                Admission::Queued(InLine(self.clone()))
            }
            Err(_) => Admission::Full,
        }
    }
}
