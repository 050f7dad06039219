//! A route's in-flight limit: the slots admission hands out (one per message a source
//! takes, `pipeline::admission`), fixed at `max_in_flight`, or moved by the adaptive limit
//! (`max_in_flight = "auto"`, [`super::adaptive`]) from the latency and overload signals of
//! every HTTP attempt, which the invoker reports here ([`Concurrency::record`]).
//!
//! The slots are a semaphore's permits. A rising limit adds permits; a falling one removes
//! free permits at once and, for the rest, keeps a debt that the next [`Slot`]s given back
//! pay off (they are forgotten instead of returned), so that
//! `free permits + slots in use - debt = limit` at all times and no slot is ever taken
//! from a message that holds it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tracing::debug;

use super::adaptive::{Gradient, Sample, Signal, Tuning};
use crate::config::RouteConfig;
use crate::telemetry::metrics::ConcurrencyMetrics;

/// The in-flight limit of one route.
#[derive(Debug)]
pub struct Concurrency {
    permits: Arc<Semaphore>,
    /// `max_in_flight`, when fixed.
    fixed: usize,
    /// `None` for a fixed `max_in_flight`: nothing is measured, nothing changes.
    adaptive: Option<Arc<Adaptive>>,
}

#[derive(Debug)]
struct Adaptive {
    route: String,
    gradient: Mutex<Gradient>,
    /// The limit now (what the gradient last set), for the slots in use.
    limit: AtomicUsize,
    /// Slots to forget when given back: the limit fell below the slots in use.
    debt: AtomicUsize,
    metrics: ConcurrencyMetrics,
}

/// One slot of the route's limit, held while its message is processed.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    adaptive: Option<Arc<Adaptive>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        let paid = (adaptive.debt).fetch_update(Ordering::SeqCst, Ordering::SeqCst, |debt| {
            debt.checked_sub(1)
        });
        if let (Ok(_), Some(permit)) = (paid, self.permit.take()) {
            permit.forget();
        }
    }
}

impl Concurrency {
    pub fn new(route: &RouteConfig) -> Self {
        let table = route.adaptive();
        let metrics = ConcurrencyMetrics::new(&route.name, table.is_some());
        let (limit, adaptive) = match table {
            Some(table) => {
                let tuning = Tuning {
                    min: table.min,
                    max: table.max,
                    sample_interval: table.sample_interval,
                    min_rtt_interval: table.min_rtt_interval,
                };
                let gradient = Gradient::new(tuning, Instant::now());
                let limit = gradient.limit();
                let adaptive = Adaptive {
                    route: route.name.clone(),
                    gradient: Mutex::new(gradient),
                    limit: AtomicUsize::new(limit),
                    debt: AtomicUsize::new(0),
                    metrics: metrics.clone(),
                };
                (limit, Some(Arc::new(adaptive)))
            }
            None => (route.max_in_flight_bound(), None),
        };
        metrics.limit.set(limit as f64);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            fixed: limit,
            adaptive,
        }
    }

    /// A slot if one is free now.
    pub fn try_slot(&self) -> Result<Slot, TryAcquireError> {
        let permit = self.permits.clone().try_acquire_owned()?;
        Ok(self.slot_of(permit))
    }

    /// Waits for a slot; `None` once the route is closed.
    pub async fn slot(&self) -> Option<Slot> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(self.slot_of(permit))
    }

    fn slot_of(&self, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            permit: Some(permit),
            adaptive: self.adaptive.clone(),
        }
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        match &self.adaptive {
            Some(adaptive) => adaptive.limit.load(Ordering::SeqCst),
            None => self.fixed,
        }
    }

    /// Slots in use now, when the limit adapts (what an attempt's sample carries); `None`
    /// for a fixed limit, which measures nothing.
    pub fn sampling(&self) -> Option<usize> {
        self.adaptive.as_ref().map(|_| self.in_use())
    }

    fn in_use(&self) -> usize {
        let Some(adaptive) = &self.adaptive else {
            return 0;
        };
        let limit = adaptive.limit.load(Ordering::SeqCst);
        let debt = adaptive.debt.load(Ordering::SeqCst);
        (limit + debt).saturating_sub(self.permits.available_permits())
    }

    /// One attempt's latency and signal, with the slots in use when it started (from
    /// [`Concurrency::sampling`]), ended at `now` (the caller's clock reading, saving a
    /// second one). Moves the limit when its window ends.
    pub fn record(&self, now: Instant, rtt: Duration, in_flight: usize, signal: Signal) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        let sample = Sample {
            rtt,
            in_flight,
            signal,
        };
        let mut gradient = adaptive.gradient.lock().unwrap_or_else(|e| e.into_inner());
        let Some(change) = gradient.record(now, sample) else {
            return;
        };
        let min_rtt = gradient.min_rtt();
        // Applied under the lock: changes happen in order.
        self.resize(adaptive, change.from, change.to);
        drop(gradient);
        adaptive.metrics.limit.set(change.to as f64);
        if let (Some(min_rtt), Some(gauge)) = (min_rtt, &adaptive.metrics.min_rtt) {
            gauge.set(min_rtt.as_secs_f64());
        }
        debug!(
            route = %adaptive.route,
            from = change.from,
            to = change.to,
            reason = change.reason.as_str(),
            min_rtt = ?min_rtt,
            sample_rtt = ?change.sample_rtt,
            "concurrency limit changed"
        );
    }

    fn resize(&self, adaptive: &Adaptive, from: usize, to: usize) {
        adaptive.limit.store(to, Ordering::SeqCst);
        if to > from {
            let rise = to - from;
            let paid = (adaptive.debt)
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |debt| {
                    Some(debt - debt.min(rise))
                })
                .map_or(0, |debt| debt.min(rise));
            self.permits.add_permits(rise - paid);
        } else {
            let fall = from - to;
            let removed = self.permits.forget_permits(fall);
            adaptive.debt.fetch_add(fall - removed, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> RouteConfig {
        let text = format!("name = \"r\"\nsubject = \"s\"\npath = \"/\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_limit_hands_out_max_in_flight_slots_and_never_changes() {
        let limit = Concurrency::new(&route("max_in_flight = 2"));
        let (a, b) = (limit.try_slot().unwrap(), limit.try_slot().unwrap());
        assert!(matches!(limit.try_slot(), Err(TryAcquireError::NoPermits)));
        assert_eq!(limit.sampling(), None);
        limit.record(Instant::now(), Duration::from_secs(9), 2, Signal::Overload);
        drop((a, b));
        assert_eq!((limit.available(), limit.limit()), (2, 2));
    }

    /// The limit falls while every slot is in use: the slots given back are forgotten
    /// until the slots in use fit the new limit; no slot is taken from its holder.
    #[tokio::test(start_paused = true)]
    async fn a_falling_limit_takes_back_slots_only_as_they_are_given_back() {
        let table = "max_in_flight = \"auto\"\n[concurrency]\nmin = 2\nmax = 10\nsample_interval = \"100ms\"";
        let limit = Concurrency::new(&route(table));
        assert_eq!(limit.limit(), 2);
        let adaptive = limit.adaptive.as_ref().unwrap();
        let held: Vec<Slot> = (0..2).map(|_| limit.try_slot().unwrap()).collect();
        limit.resize(adaptive, 2, 10);
        let mut held: Vec<Slot> = held
            .into_iter()
            .chain((0..8).map(|_| limit.try_slot().unwrap()))
            .collect();
        assert!(limit.try_slot().is_err());
        assert_eq!(limit.sampling(), Some(10));
        limit.resize(adaptive, 10, 4);
        assert_eq!(adaptive.debt.load(Ordering::SeqCst), 6);
        held.truncate(5);
        assert_eq!((limit.available(), limit.sampling()), (0, Some(5)));
        assert!(limit.try_slot().is_err());
        // Rising again pays the rest of the debt first: 1 left, so 2 of 3 become free.
        limit.resize(adaptive, 4, 7);
        assert_eq!((limit.available(), limit.sampling()), (2, Some(5)));
        held.clear();
        assert_eq!((limit.available(), limit.limit()), (7, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn overload_samples_lower_the_limit_and_free_slots_down_to_min() {
        let table = "max_in_flight = \"auto\"\n[concurrency]\nmin = 2\nmax = 10";
        let limit = Concurrency::new(&route(table));
        let ms = Duration::from_millis(1);
        for _ in 0..super::super::adaptive::MIN_RTT_SAMPLES {
            limit.record(Instant::now(), 10 * ms, 1, Signal::Answered);
        }
        // Twice the limit every window while the latency stays at the min RTT...
        for _ in 0..20 {
            tokio::time::advance(100 * ms).await;
            limit.record(Instant::now(), 10 * ms, limit.limit(), Signal::Answered);
        }
        assert_eq!((limit.limit(), limit.available()), (10, 10));
        // ...and 10% less per window with a timeout in it, down to min.
        for _ in 0..40 {
            tokio::time::advance(100 * ms).await;
            limit.record(Instant::now(), 5 * ms, limit.limit(), Signal::Overload);
        }
        assert_eq!((limit.limit(), limit.available()), (2, 2));
    }
}
