//! What the NATS connection's losses mean for a wait on the server.
//!
//! The server answers a confirmation (a publish ack, a double ack, a flush) on the
//! connection it was asked on, so one asked on a connection that is lost never comes. A wait
//! for it ends when the connection is lost instead of running into its timeout (5 s); after a
//! server restart that frees the permits of every message in flight at once, so pulling
//! resumes as soon as the connection is back. A confirmation the server answers the same way
//! when asked twice is asked for again once the connection is back
//! ([`Link::confirmed_again`]): an ack or term (the server answers an ack of a message
//! already acknowledged too), a publish with `Nats-Msg-Id` (the stream keeps one copy).
//! The settlement of a message delivered on a connection since lost is awaited for 1 s
//! only ([`Link::settled`]): a restarted server may have forgotten the delivery and then
//! never answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Event;
use tokio::sync::watch;

/// How long [`Link::confirmed_again`] waits for the connection to come back.
const BACK_WITHIN: Duration = Duration::from_secs(5);
/// How many times [`Link::confirmed_again`] asks again.
const ASK_AGAIN: usize = 2;
/// How long [`Link::settled`] waits for the server to answer the settlement of a delivery
/// made on a connection since lost (the server answers one it knows within milliseconds).
const FORGOTTEN_AFTER: Duration = Duration::from_secs(1);

/// Why a wait for a confirmation ended without one. `E` is the error of the confirmation
/// itself (the server's answer, or the client's), kept as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError<E> {
    /// The connection the confirmation was asked on was lost first (and, for
    /// [`Link::confirmed_again`], not back in time or lost again every time).
    #[error("the connection to NATS was lost before the server confirmed")]
    ConnectionLost,
    /// [`Link::settled`] gave up on a delivery from a connection since lost.
    #[error(
        "no answer within {FORGOTTEN_AFTER:?} to the settlement of a message delivered before \
         the connection was lost (a server restarted since may have forgotten that delivery)"
    )]
    Forgotten,
    /// The confirmation's own error (a refusal by the server, a timeout of the client).
    #[error(transparent)]
    Failed(E),
}

/// Which connection something happened on: the count of losses before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection(u64);

/// The connection's losses and whether it is up, from its events.
#[derive(Debug, Clone)]
pub struct Link {
    losses: Arc<watch::Sender<u64>>,
    up: Arc<watch::Sender<bool>>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            losses: Arc::new(watch::Sender::new(0)),
            up: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Link {
    /// Told every event of the connection.
    pub(super) fn observe(&self, event: &Event) {
        match event {
            Event::Disconnected => {
                self.up.send_replace(false);
                self.losses.send_modify(|losses| *losses += 1);
            }
            Event::Connected => {
                self.up.send_replace(true);
            }
            _ => {}
        }
    }

    /// Waits for `confirmation`, asked for on this connection when it is first polled, or
    /// ends with [`LinkError::ConnectionLost`] when the connection is lost first.
    pub async fn confirmed<T, E>(
        &self,
        confirmation: impl Future<Output = Result<T, E>>,
    ) -> Result<T, LinkError<E>> {
        match self.once(confirmation).await {
            Ok(done) => Ok(done),
            Err(Some(e)) => Err(LinkError::Failed(e)),
            Err(None) => Err(LinkError::ConnectionLost),
        }
    }

    /// The connection now (see [`Connection`]).
    pub fn connection(&self) -> Connection {
        Connection(*self.losses.borrow())
    }

    /// [`Link::confirmed`] for a confirmation that may be asked for twice: when the
    /// connection is lost first, `ask` is called again once it is back (within 5 s), at most
    /// twice more.
    pub async fn confirmed_again<T, E, F, Fut>(&self, ask: F) -> Result<T, LinkError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.asked_again(None, ask).await
    }

    /// [`Link::confirmed_again`] for the settlement (ack, term) of a JetStream message
    /// delivered on connection `delivered_on`. Once that connection is gone, an answer is
    /// awaited for at most [`FORGOTTEN_AFTER`] (then [`LinkError::Forgotten`]): a server
    /// restarted since may
    /// have lost the delivery (nats-server 2.15 with `sync_interval: always` does, after a
    /// kill) and then never answers its settlement, while the message comes again anyway.
    pub async fn settled<T, E, F, Fut>(
        &self,
        delivered_on: Connection,
        ask: F,
    ) -> Result<T, LinkError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.asked_again(Some(delivered_on), ask).await
    }

    async fn asked_again<T, E, F, Fut>(
        &self,
        delivered_on: Option<Connection>,
        ask: F,
    ) -> Result<T, LinkError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut again = ASK_AGAIN;
        loop {
            let answer = match delivered_on {
                Some(on) if on != self.connection() => {
                    let answer = tokio::time::timeout(FORGOTTEN_AFTER, self.once(ask())).await;
                    answer.map_err(|_| LinkError::Forgotten)?
                }
                _ => self.once(ask()).await,
            };
            match answer {
                Ok(done) => return Ok(done),
                Err(Some(e)) => return Err(LinkError::Failed(e)),
                Err(None) if again > 0 && self.back_within(BACK_WITHIN).await => again -= 1,
                Err(None) => return Err(LinkError::ConnectionLost),
            }
        }
    }

    /// The confirmation, its error, or `None` when the connection was lost first.
    async fn once<T, E>(
        &self,
        confirmation: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Option<E>> {
        // Watched before the confirmation is asked for: a loss after it is seen.
        let mut losses = self.losses();
        tokio::select! {
            biased;
            done = confirmation => done.map_err(Some),
            () = losses.next() => Err(None),
        }
    }

    /// Whether the connection is up, or comes up within `wait`.
    async fn back_within(&self, wait: Duration) -> bool {
        let mut up = self.up.subscribe();
        let back = tokio::time::timeout(wait, up.wait_for(|up| *up)).await;
        matches!(back, Ok(Ok(_)))
    }

    /// Resolves while the connection is down (at once if it is down now).
    pub async fn down(&self) {
        let mut up = self.up.subscribe();
        // The sender lives as long as this link.
        if up.wait_for(|up| !*up).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The losses from now on.
    pub fn losses(&self) -> Losses {
        Losses(self.losses.subscribe())
    }
}

/// The losses of a connection after a moment (see [`Link::losses`]).
pub struct Losses(watch::Receiver<u64>);

impl Losses {
    /// Resolves at the next loss.
    pub async fn next(&mut self) {
        // The sender lives as long as the link that made this.
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Loses `link`'s connection after `after`, and has it back `down` later.
    async fn flap(link: &Link, after: Duration, down: Duration) {
        tokio::time::sleep(after).await;
        link.observe(&Event::Disconnected);
        tokio::time::sleep(down).await;
        link.observe(&Event::Connected);
    }

    /// A confirmation that comes only after `after` (past its connection's loss, say).
    async fn late<T>(after: Duration, value: T) -> Result<T, String> {
        tokio::time::sleep(after).await;
        Ok(value)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_a_confirmation_ends_when_the_connection_is_lost() {
        let link = Link::default();
        link.observe(&Event::Connected);
        // Confirmed: its answer.
        let answered = link.confirmed(async { Ok::<_, String>(7) }).await;
        assert_eq!(answered, Ok(7));
        // Refused by the server: its error.
        let refused = link.confirmed(async { Err::<(), _>("no stream") }).await;
        assert_eq!(refused, Err(LinkError::Failed("no stream")));
        // A confirmation that would come only after its 5 s timeout: the loss ends it.
        let waiting = tokio::spawn({
            let link = link.clone();
            async move {
                let started = tokio::time::Instant::now();
                let result = link.confirmed(late(Duration::from_secs(5), ())).await;
                (result, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        link.observe(&Event::Disconnected);
        let (result, waited) = waiting.await.unwrap();
        assert_eq!(result, Err(LinkError::ConnectionLost));
        assert_eq!(waited, Duration::from_millis(100));
        // A loss before the wait began is not this wait's, nor are other events.
        link.observe(&Event::Connected);
        let later = link.confirmed(late(Duration::from_secs(1), "acked"));
        assert_eq!(later.await, Ok("acked"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmation_lost_with_the_connection_is_asked_for_again_once_it_is_back() {
        let link = Link::default();
        link.observe(&Event::Connected);
        let asked = Arc::new(AtomicUsize::new(0));
        let ask = || {
            asked.fetch_add(1, Ordering::SeqCst);
            late(Duration::from_secs(1), "acked")
        };
        // Lost after 100 ms, back 2 s later: asked again, confirmed 1 s after that.
        let flapping = flap(&link, Duration::from_millis(100), Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let (answer, ()) = tokio::join!(link.confirmed_again(ask), flapping);
        assert_eq!(answer, Ok("acked"));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert_eq!(started.elapsed(), Duration::from_millis(3100));

        // Not back within 5 s: the loss is the answer, and nobody is asked again.
        asked.store(0, Ordering::SeqCst);
        let gone = {
            let link = link.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                link.observe(&Event::Disconnected);
            }
        };
        let (answer, ()) = tokio::join!(link.confirmed_again(ask), gone);
        assert_eq!(answer, Err(LinkError::ConnectionLost));
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        // The server's own error is not asked again.
        link.observe(&Event::Connected);
        asked.store(0, Ordering::SeqCst);
        let refusing = || {
            asked.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("stream full") }
        };
        let refused = link.confirmed_again(refusing).await;
        assert_eq!(refused, Err(LinkError::Failed("stream full")));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    /// A settlement of a message delivered on a connection since lost: the server restarted
    /// may never answer it (it forgot the delivery), so it is given up after 1 s instead of
    /// the 5 s of its own timeout; on the connection it came on, it waits as long as it takes.
    #[tokio::test(start_paused = true)]
    async fn a_settlement_of_a_delivery_from_a_lost_connection_waits_one_second() {
        let link = Link::default();
        link.observe(&Event::Connected);
        let delivered_on = link.connection();
        // On the same connection: the answer, however late.
        let answer = link.settled(delivered_on, || late(Duration::from_secs(3), "acked"));
        assert_eq!(answer.await, Ok("acked"));

        // Lost and back before the ack is asked: 1 s, then given up.
        link.observe(&Event::Disconnected);
        link.observe(&Event::Connected);
        assert_ne!(link.connection(), delivered_on);
        let started = tokio::time::Instant::now();
        let unanswered = link.settled(delivered_on, || late(Duration::from_secs(5), ()));
        assert_eq!(unanswered.await, Err(LinkError::Forgotten));
        assert_eq!(started.elapsed(), FORGOTTEN_AFTER);
        // A server that knows the delivery answers within that second.
        let known = link.settled(delivered_on, || late(Duration::from_millis(2), "acked"));
        assert_eq!(known.await, Ok("acked"));

        // Asked on its own connection, lost meanwhile: asked again once back, then bounded.
        let delivered_on = link.connection();
        let asked = Arc::new(AtomicUsize::new(0));
        let ask = || {
            asked.fetch_add(1, Ordering::SeqCst);
            late(Duration::from_secs(5), ())
        };
        let flapping = flap(
            &link,
            Duration::from_millis(100),
            Duration::from_millis(400),
        );
        let started = tokio::time::Instant::now();
        let (answer, ()) = tokio::join!(link.settled(delivered_on, ask), flapping);
        assert_eq!(answer, Err(LinkError::Forgotten));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(500) + FORGOTTEN_AFTER
        );
    }
}
