//! Circuit breaker, one per route. Every attempt asks for a permit and reports whether it
//! failed (the classification's verdict); the breaker decides when to stop calling.
//!
//! - Closed -> Open after `consecutive_failures` failures in a row, or when at least
//!   `minimum_calls` of the last `window_calls` attempts were made and `failure_rate` of them
//!   failed.
//! - Open for `break_duration`, doubled on every trip that follows within
//!   `max_break_duration` of the last close, capped at `max_break_duration`.
//! - Then half-open: up to `half_open_probes` probes go through; that many successes close
//!   the breaker, one failure opens it again.
//!
//! The breaker is also a gate: durable sources stop taking messages while it would refuse
//! a call and wait on [`Breaker::admitted`], which resolves when the break is over or a
//! probe slot frees (state changes are published on a watch channel; nothing polls).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::BreakerConfig;
use crate::telemetry::metrics::{CIRCUIT_STATE, CIRCUIT_TRANSITIONS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Calls are refused until the instant.
    Open {
        until: Instant,
    },
    HalfOpen,
}

impl State {
    fn gauge_value(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen => 2.0,
        }
    }

    /// `closed`, `open` or `half_open`: the `to` label of transitions, and `/readyz`'s word.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a refusal says while half-open probes are under way: ask again soon.
const HALF_OPEN_BUSY: Duration = Duration::from_millis(50);

/// The breaker refused the call; the service is not called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When the breaker will let a probe through (zero while probes are under way).
    pub retry_in: Duration,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    /// Outcomes of the last `window_calls` attempts while closed; `true` = failed.
    window: VecDeque<bool>,
    window_failures: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Counts half-open rounds, so a probe of an earlier round cannot decide this one.
    round: u64,
    trips: u32,
    closed_since: Instant,
}

#[derive(Debug)]
pub struct Breaker {
    route: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    signal: watch::Sender<State>,
    state_gauge: Gauge,
    /// Indexed like `State::gauge_value`.
    transitions: [Counter; 3],
}

/// Permission for one attempt. Report its outcome with [`Permit::record`]; a permit dropped
/// unreported (the attempt was cancelled) only frees its probe slot.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// The half-open round this probe belongs to; `None` for calls while closed.
    probe: Option<u64>,
    done: bool,
}

impl Permit<'_> {
    pub fn record(mut self, failed: bool) {
        self.done = true;
        self.breaker.record(self.probe, Some(failed));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.probe, None);
        }
    }
}

impl Breaker {
    pub fn new(route: &str, config: &BreakerConfig) -> Self {
        let transition = |to: &'static str| counter!(CIRCUIT_TRANSITIONS, "route" => route.to_string(), "to" => to);
        let state_gauge = gauge!(CIRCUIT_STATE, "route" => route.to_string());
        state_gauge.set(0.0);
        Self {
            route: route.to_string(),
            config: config.clone(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                window: VecDeque::new(),
                window_failures: 0,
                probes_in_flight: 0,
                probe_successes: 0,
                round: 0,
                trips: 0,
                closed_since: Instant::now(),
            }),
            signal: watch::channel(State::Closed).0,
            state_gauge,
            transitions: [
                transition("closed"),
                transition("open"),
                transition("half_open"),
            ],
        }
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Open, with its break not over yet: no call would be let through now.
    pub fn refusing(&self) -> bool {
        matches!(self.state(), State::Open { until } if until > Instant::now())
    }

    /// Resolves once a call would be let through ([`Self::admits`]): at once while closed;
    /// while open, when the break is over; while half-open with every probe slot taken, when
    /// a probe ends. Durable sources wait on this instead of taking messages the breaker
    /// would refuse.
    pub async fn admitted(&self) {
        let mut changes = self.signal.subscribe();
        loop {
            // Marked seen before the check: a change after it wakes the wait below.
            let state = *changes.borrow_and_update();
            if self.admits().is_ok() {
                return;
            }
            match state {
                State::Open { until } => tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = changes.changed() => {}
                },
                State::Closed | State::HalfOpen => {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        if !self.config.enabled {
            return Ok(self.permit(None));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Ok(self.permit(None)),
            State::Open { until } if now < until => Err(Rejected {
                retry_in: until - now,
            }),
            State::Open { .. } => {
                self.transition(&mut inner, State::HalfOpen);
                inner.round += 1;
                inner.probes_in_flight = 1;
                inner.probe_successes = 0;
                Ok(self.permit(Some(inner.round)))
            }
            State::HalfOpen => {
                if inner.probes_in_flight + inner.probe_successes < self.config.half_open_probes {
                    inner.probes_in_flight += 1;
                    Ok(self.permit(Some(inner.round)))
                } else {
                    Err(Rejected {
                        retry_in: HALF_OPEN_BUSY,
                    })
                }
            }
        }
    }

    /// Whether a call would be let through now, without taking a permit; else how long to
    /// wait before asking again. Durable sources check this before pulling.
    pub fn admits(&self) -> Result<(), Duration> {
        if !self.config.enabled {
            return Ok(());
        }
        let inner = self.lock();
        match inner.state {
            State::Closed => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else {
                    Ok(())
                }
            }
            State::HalfOpen
                if inner.probes_in_flight + inner.probe_successes
                    < self.config.half_open_probes =>
            {
                Ok(())
            }
            State::HalfOpen => Err(HALF_OPEN_BUSY),
        }
    }

    fn permit(&self, probe: Option<u64>) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            done: false,
        }
    }

    /// `failed`: the attempt's verdict, or `None` when it was cancelled.
    fn record(&self, probe: Option<u64>, failed: Option<bool>) {
        if !self.config.enabled {
            return;
        }
        let mut inner = self.lock();
        if let Some(round) = probe {
            if inner.state != State::HalfOpen || inner.round != round {
                return;
            }
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            match failed {
                Some(true) => self.trip(&mut inner),
                Some(false) => {
                    inner.probe_successes += 1;
                    if inner.probe_successes >= self.config.half_open_probes {
                        self.close(&mut inner);
                    }
                }
                // A cancelled probe frees its slot: wake whoever waits to be admitted.
                None => {
                    self.signal.send_replace(inner.state);
                }
            }
            return;
        }
        let (State::Closed, Some(failed)) = (inner.state, failed) else {
            return;
        };
        if failed {
            inner.consecutive_failures += 1;
            inner.window_failures += 1;
        } else {
            inner.consecutive_failures = 0;
        }
        inner.window.push_back(failed);
        if inner.window.len() > self.config.window_calls as usize
            && inner.window.pop_front() == Some(true)
        {
            inner.window_failures -= 1;
        }
        let calls = inner.window.len() as u32;
        let rate_exceeded = calls >= self.config.minimum_calls
            && f64::from(inner.window_failures) >= self.config.failure_rate * f64::from(calls);
        if inner.consecutive_failures >= self.config.consecutive_failures || rate_exceeded {
            self.trip(&mut inner);
        }
    }

    fn trip(&self, inner: &mut Inner) {
        let now = Instant::now();
        if inner.state == State::Closed
            && now.duration_since(inner.closed_since) >= self.config.max_break_duration
        {
            inner.trips = 0;
        }
        inner.trips = inner.trips.saturating_add(1);
        let factor = 2u32.saturating_pow(inner.trips - 1);
        let open_for = self
            .config
            .break_duration
            .saturating_mul(factor)
            .min(self.config.max_break_duration);
        warn!(route = %self.route, ?open_for, trips = inner.trips, "circuit breaker opened: the service is failing");
        self.reset_counts(inner);
        self.transition(
            inner,
            State::Open {
                until: now + open_for,
            },
        );
    }

    fn close(&self, inner: &mut Inner) {
        info!(route = %self.route, "circuit breaker closed: the service answers again");
        inner.closed_since = Instant::now();
        self.reset_counts(inner);
        self.transition(inner, State::Closed);
    }

    fn reset_counts(&self, inner: &mut Inner) {
        inner.consecutive_failures = 0;
        inner.window.clear();
        inner.window_failures = 0;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        if to == State::HalfOpen {
            info!(route = %self.route, "circuit breaker half-open: probing the service");
        }
        inner.state = to;
        self.state_gauge.set(to.gauge_value());
        self.transitions[to.gauge_value() as usize].increment(1);
        self.signal.send_replace(to);
        tracing::debug!(route = %self.route, to = to.name(), "circuit breaker transition");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(change: impl FnOnce(&mut BreakerConfig)) -> Breaker {
        let mut config = BreakerConfig {
            consecutive_failures: 3,
            break_duration: Duration::from_secs(1),
            max_break_duration: Duration::from_secs(5),
            ..BreakerConfig::default()
        };
        change(&mut config);
        Breaker::new("test", &config)
    }

    fn call(b: &Breaker, failed: bool) -> Result<(), Rejected> {
        b.try_acquire().map(|permit| permit.record(failed))
    }

    /// Whether `admitted` resolves within `within` (paused clock: time only moves when every
    /// task waits).
    async fn admitted_within(b: &Breaker, within: Duration) -> bool {
        tokio::time::timeout(within, b.admitted()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_is_open_while_closed_and_opens_when_the_break_is_over() {
        let b = breaker(|_| {});
        assert!(admitted_within(&b, Duration::ZERO).await, "closed: at once");
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        assert!(matches!(b.state(), State::Open { .. }));
        let started = Instant::now();
        assert!(
            !admitted_within(&b, Duration::from_millis(999)).await,
            "shut during the break"
        );
        assert!(
            admitted_within(&b, Duration::from_millis(2)).await,
            "open once the break is over"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_waits_for_a_busy_probe_and_opens_when_it_ends() {
        let b = breaker(|_| {});
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.try_acquire().expect("the probe");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(
            !admitted_within(&b, Duration::from_secs(10)).await,
            "the one slot is taken"
        );
        // A cancelled probe frees its slot.
        let (gate, ()) = tokio::join!(admitted_within(&b, Duration::from_secs(1)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(probe);
        });
        assert!(gate, "admitted once the probe slot is free");
        // A successful probe closes the breaker: admitted.
        let probe = b.try_acquire().unwrap();
        let (gate, ()) = tokio::join!(admitted_within(&b, Duration::from_secs(1)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            probe.record(false);
        });
        assert!(gate);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_refuses_calls() {
        let b = breaker(|_| {});
        call(&b, true).unwrap();
        call(&b, true).unwrap();
        call(&b, false).unwrap(); // a success resets the run
        call(&b, true).unwrap();
        call(&b, true).unwrap();
        assert_eq!(b.state(), State::Closed);
        call(&b, true).unwrap();
        assert!(matches!(b.state(), State::Open { .. }));
        let rejected = b.try_acquire().unwrap_err();
        assert_eq!(rejected.retry_in, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_over_the_window() {
        let b = breaker(|c| {
            c.consecutive_failures = 100;
            c.window_calls = 10;
            c.minimum_calls = 10;
            c.failure_rate = 0.5;
        });
        // Alternating outcomes never make a run, but half of them fail.
        for i in 0..9 {
            call(&b, i % 2 == 0).unwrap();
        }
        assert_eq!(b.state(), State::Closed, "below minimum_calls");
        call(&b, true).unwrap();
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_slide_out_of_the_window() {
        let b = breaker(|c| {
            c.consecutive_failures = 100;
            c.window_calls = 4;
            c.minimum_calls = 4;
            c.failure_rate = 0.75;
        });
        for failed in [true, true, false, false, true, false, true] {
            call(&b, failed).unwrap();
            assert_eq!(b.state(), State::Closed);
        }
        call(&b, true).unwrap(); // the last four are now T F T T: 3 of 4 failed
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_success_closes() {
        let b = breaker(|_| {});
        let mut states = b.signal.subscribe();
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        assert!(matches!(*states.borrow_and_update(), State::Open { .. }));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(b.try_acquire().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.try_acquire().expect("one probe after the break");
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            HALF_OPEN_BUSY,
            "only one probe at a time"
        );
        assert_eq!(b.admits(), Err(HALF_OPEN_BUSY));
        probe.record(false);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(*states.borrow_and_update(), State::Closed);
        call(&b, false).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_longer_up_to_the_cap() {
        let b = breaker(|_| {});
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        let mut breaks = Vec::new();
        for _ in 0..4 {
            let State::Open { until } = b.state() else {
                panic!("open")
            };
            let open_for = until - Instant::now();
            breaks.push(open_for.as_secs());
            tokio::time::advance(open_for).await;
            call(&b, true).unwrap(); // the probe fails
        }
        assert_eq!(breaks, [1, 2, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_reset_after_staying_closed() {
        let b = breaker(|_| {});
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&b, false).unwrap(); // probe succeeds: closed
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        let State::Open { until } = b.state() else {
            panic!("open")
        };
        assert_eq!(
            until - Instant::now(),
            Duration::from_secs(2),
            "tripped again soon: longer"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        call(&b, false).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        let State::Open { until } = b.state() else {
            panic!("open")
        };
        assert_eq!(
            until - Instant::now(),
            Duration::from_secs(1),
            "healthy for a while: back to the base"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn several_probes_must_all_succeed() {
        let b = breaker(|c| c.half_open_probes = 2);
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = b.try_acquire().unwrap();
        let second = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        first.record(false);
        assert_eq!(b.state(), State::HalfOpen);
        drop(second); // cancelled: frees its slot, decides nothing
        assert_eq!(b.state(), State::HalfOpen);
        call(&b, false).unwrap();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_of_an_earlier_round_decides_nothing() {
        let b = breaker(|c| c.half_open_probes = 2);
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let slow_probe = b.try_acquire().unwrap();
        call(&b, true).unwrap(); // the other probe fails: open again (2 s)
        tokio::time::advance(Duration::from_secs(2)).await;
        let fresh = b.try_acquire().unwrap(); // round two
        slow_probe.record(false); // round one's late success
        assert_eq!(b.state(), State::HalfOpen, "a stale success must not close");
        fresh.record(false);
        call(&b, false).unwrap();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn admits_tells_when_to_ask_again() {
        let b = breaker(|_| {});
        assert_eq!(b.admits(), Ok(()));
        for _ in 0..3 {
            call(&b, true).unwrap();
        }
        assert_eq!(b.admits(), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admits(), Ok(()), "the break is over: a probe may go");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_never_opens() {
        let b = breaker(|c| c.enabled = false);
        for _ in 0..50 {
            call(&b, true).unwrap();
        }
        assert_eq!(b.state(), State::Closed);
    }
}
