//! The adaptive concurrency limit of a route with `max_in_flight = "auto"`: Envoy's
//! adaptive-concurrency gradient controller, with AIMD's decrease on overload signals. A
//! small pure type; its clock and its samples come from the caller
//! ([`super::concurrency::Concurrency`], fed by every HTTP attempt of the invoker).
//!
//! - **Min RTT**: at start and then every `min_rtt_interval`, the limit drops to `min` and
//!   the median latency of `MIN_RTT_SAMPLES` attempts started at that concurrency is the
//!   service's latency without queueing (`min_rtt`). The limit before the measurement is
//!   restored after it.
//! - **Gradient**: every `sample_interval`, the median latency of the window's attempts
//!   (`sample_rtt`) gives `gradient = min_rtt * (1 + TOLERANCE) / sample_rtt`, clamped to
//!   [0.5, 2]; the new limit is `gradient * limit + sqrt(gradient * limit)` (the square root
//!   is headroom, so the limit keeps probing upwards). Latency at the min RTT lets the limit
//!   grow; latency above it (requests queueing inside the service) makes it fall.
//! - **Overload**: a window with an overload signal (an attempt timed out, a connection
//!   could not be made or broke, a 503 or a 429) multiplies the limit by `BACKOFF` instead,
//!   whatever its latency.
//! - **Not limited by the limit**: a window whose busiest moment used less than half of the
//!   limit does not raise it (Netflix's Gradient2 rule): an idle route keeps its limit
//!   rather than growing it to `max` and letting a burst through.
//!
//! Invariant: `min <= limit <= max` after every call, whatever the samples (a property test
//! holds it).

use std::time::Duration;

use tokio::time::Instant;

/// The latency allowed above the min RTT before the limit falls (Envoy's `buffer`, 25%).
pub const TOLERANCE: f64 = 0.25;
/// The limit's factor after a window with an overload signal (Netflix's AIMD default).
pub const BACKOFF: f64 = 0.9;
/// Attempts at `min` concurrency whose median is the min RTT (Envoy's `request_count` is
/// 50; fewer keep the dip short at little cost in precision).
pub const MIN_RTT_SAMPLES: usize = 25;
/// The clamp of the gradient (Envoy's): the limit at most halves or doubles per window.
const GRADIENT: (f64, f64) = (0.5, 2.0);

/// The algorithm's settings (the route's `[routes.concurrency]` table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    pub min: usize,
    pub max: usize,
    pub sample_interval: Duration,
    pub min_rtt_interval: Duration,
}

/// What one attempt tells the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The service answered (any status but 503 and 429): its latency is a sample.
    Answered,
    /// A timeout, a failed or broken connection, a 503 or a 429: the service is overloaded.
    Overload,
}

/// One attempt's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// From the request sent to the response's head (or the failure).
    pub rtt: Duration,
    /// Slots in use when the attempt started (its own included).
    pub in_flight: usize,
    pub signal: Signal,
}

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Down to `min` to measure the min RTT.
    MeasuringMinRtt,
    /// The min RTT is measured: the limit before it is back.
    MinRttMeasured,
    /// The window's latency against the min RTT.
    Gradient,
    /// An overload signal in the window.
    Overload,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MeasuringMinRtt => "measuring_min_rtt",
            Reason::MinRttMeasured => "min_rtt_measured",
            Reason::Gradient => "gradient",
            Reason::Overload => "overload",
        }
    }
}

/// A change of the limit, for the caller to apply and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: usize,
    pub to: usize,
    pub reason: Reason,
    /// The window's median latency (gradient changes only).
    pub sample_rtt: Option<Duration>,
}

#[derive(Debug)]
enum Phase {
    /// At `min`, collecting latencies for the min RTT; `restore` afterwards.
    Measuring { restore: usize },
    /// The window since `started`.
    Sampling { started: Instant },
}

/// The adaptive limit of one route (see the module's doc).
#[derive(Debug)]
pub struct Gradient {
    tuning: Tuning,
    limit: usize,
    min_rtt: Option<Duration>,
    phase: Phase,
    /// Latencies of the current window or measurement (reused, never shrunk).
    rtts: Vec<Duration>,
    overload: bool,
    peak_in_flight: usize,
    /// When the next min RTT measurement starts.
    next_measurement: Instant,
}

impl Gradient {
    /// Starts by measuring the min RTT, at `min`. `tuning.min` is raised to 1 and
    /// `tuning.max` to `min` if the configuration checks let less through.
    pub fn new(mut tuning: Tuning, now: Instant) -> Self {
        tuning.min = tuning.min.max(1);
        tuning.max = tuning.max.max(tuning.min);
        Self {
            limit: tuning.min,
            min_rtt: None,
            phase: Phase::Measuring {
                restore: tuning.min,
            },
            rtts: Vec::with_capacity(MIN_RTT_SAMPLES),
            overload: false,
            peak_in_flight: 0,
            next_measurement: now + tuning.min_rtt_interval,
            tuning,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The last measured min RTT; `None` until the first measurement ends.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Takes one attempt's sample at `now`; the limit's change, if any.
    pub fn record(&mut self, now: Instant, sample: Sample) -> Option<Change> {
        match self.phase {
            Phase::Measuring { restore } => {
                // Only attempts that started at the measuring concurrency: those still
                // running from before the dip queued behind each other.
                if sample.signal == Signal::Answered && sample.in_flight <= self.tuning.min {
                    self.rtts.push(sample.rtt);
                }
                if self.rtts.len() < MIN_RTT_SAMPLES {
                    return None;
                }
                self.min_rtt = Some(median(&mut self.rtts));
                self.start_window(now);
                self.next_measurement = now + self.tuning.min_rtt_interval;
                self.set(restore, Reason::MinRttMeasured, None)
            }
            Phase::Sampling { started } => {
                match sample.signal {
                    Signal::Answered => self.rtts.push(sample.rtt),
                    Signal::Overload => self.overload = true,
                }
                self.peak_in_flight = self.peak_in_flight.max(sample.in_flight);
                if now.duration_since(started) < self.tuning.sample_interval {
                    return None;
                }
                if now >= self.next_measurement {
                    let restore = self.limit;
                    self.rtts.clear();
                    self.phase = Phase::Measuring { restore };
                    return self.set(self.tuning.min, Reason::MeasuringMinRtt, None);
                }
                let change = self.end_window();
                self.start_window(now);
                change
            }
        }
    }

    /// The new limit from the window that just ended.
    fn end_window(&mut self) -> Option<Change> {
        let limit = self.limit as f64;
        if self.overload {
            let to = (limit * BACKOFF).floor() as usize;
            return self.set(to, Reason::Overload, None);
        }
        let min_rtt = self.min_rtt?;
        if self.rtts.is_empty() {
            return None;
        }
        let sample_rtt = median(&mut self.rtts).max(Duration::from_nanos(1));
        let gradient = (min_rtt.as_secs_f64() * (1.0 + TOLERANCE) / sample_rtt.as_secs_f64())
            .clamp(GRADIENT.0, GRADIENT.1);
        let scaled = gradient * limit;
        let to = (scaled + scaled.sqrt()) as usize;
        if to > self.limit && self.peak_in_flight * 2 < self.limit {
            // The limit is not what holds the route back: no reason to raise it.
            return None;
        }
        self.set(to, Reason::Gradient, Some(sample_rtt))
    }

    fn start_window(&mut self, now: Instant) {
        self.phase = Phase::Sampling { started: now };
        self.rtts.clear();
        self.overload = false;
        self.peak_in_flight = 0;
    }

    /// Sets the limit, within the bounds; the change if there is one.
    fn set(&mut self, to: usize, reason: Reason, sample_rtt: Option<Duration>) -> Option<Change> {
        let to = to.clamp(self.tuning.min, self.tuning.max);
        let from = std::mem::replace(&mut self.limit, to);
        (from != to).then_some(Change {
            from,
            to,
            reason,
            sample_rtt,
        })
    }
}

/// The median of `rtts` (the upper one of an even count); `rtts` is not empty.
fn median(rtts: &mut [Duration]) -> Duration {
    let middle = rtts.len() / 2;
    *rtts.select_nth_unstable(middle).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn tuning() -> Tuning {
        Tuning {
            min: 3,
            max: 256,
            sample_interval: 100 * MS,
            min_rtt_interval: Duration::from_secs(60),
        }
    }

    /// A service of `workers` workers taking `work` per request; requests beyond the
    /// workers queue inside it (first come, first served).
    struct Service {
        workers: usize,
        work: Duration,
    }

    impl Service {
        /// The latency at `concurrency` requests in the service.
        fn rtt(&self, concurrency: usize) -> Duration {
            let queued = concurrency.max(self.workers) as u32;
            self.work * queued / self.workers as u32
        }
    }

    /// A load above the service's capacity for `span`: every slot busy, each completion
    /// one sample. The limit after each sample, with its time.
    fn overload(
        gradient: &mut Gradient,
        service: &Service,
        now: &mut Instant,
        span: Duration,
    ) -> Vec<(Instant, usize)> {
        let end = *now + span;
        let mut seen = Vec::new();
        while *now < end {
            let concurrency = gradient.limit();
            let rtt = service.rtt(concurrency);
            *now += rtt / concurrency as u32;
            let sample = Sample {
                rtt,
                in_flight: concurrency,
                signal: Signal::Answered,
            };
            gradient.record(*now, sample);
            seen.push((*now, gradient.limit()));
        }
        seen
    }

    fn range(seen: &[(Instant, usize)], from: Instant) -> (usize, usize) {
        let after = seen.iter().filter(|(at, _)| *at >= from).map(|(_, l)| *l);
        (after.clone().min().unwrap(), after.max().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn measures_the_min_rtt_at_min_then_settles_near_the_services_workers() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        assert_eq!((gradient.limit(), gradient.min_rtt()), (3, None));
        let service = Service {
            workers: 8,
            work: 10 * MS,
        };
        let seen = overload(&mut gradient, &service, &mut now, Duration::from_secs(10));
        assert_eq!(gradient.min_rtt(), Some(10 * MS));
        // Equilibrium: 1.25 x 8 + sqrt(10) = 13; latency 16 ms, not 80 ms as at 64.
        let (low, high) = range(&seen, now - Duration::from_secs(5));
        assert!(low >= 8 && high <= 16, "settled between {low} and {high}");
    }

    #[tokio::test(start_paused = true)]
    async fn rises_to_max_while_latency_stays_at_the_min_rtt() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        let service = Service {
            workers: 10_000,
            work: 10 * MS,
        };
        let seen = overload(&mut gradient, &service, &mut now, Duration::from_secs(3));
        let windows_to_max = seen.iter().position(|(_, l)| *l == 256).unwrap();
        assert!(windows_to_max > 0);
        assert_eq!(range(&seen, seen[windows_to_max].0), (256, 256));
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_services_capacity_down_and_up_within_a_second() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        let mut service = Service {
            workers: 32,
            work: 10 * MS,
        };
        overload(&mut gradient, &service, &mut now, Duration::from_secs(5));
        let at_32 = gradient.limit();
        assert!((32..=64).contains(&at_32), "{at_32} at 32 workers");
        service.workers = 8;
        let start = now;
        let seen = overload(&mut gradient, &service, &mut now, Duration::from_secs(3));
        let (low, high) = range(&seen, start + Duration::from_secs(1));
        assert!(
            low >= 8 && high <= 16,
            "{low}..{high} within a second of 8 workers"
        );
        service.workers = 32;
        let start = now;
        let seen = overload(&mut gradient, &service, &mut now, Duration::from_secs(3));
        let (low, high) = range(&seen, start + Duration::from_secs(1));
        assert!(
            low >= 32 && high <= 64,
            "{low}..{high} within a second of 32 workers"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn overload_signals_lower_the_limit_by_the_backoff_down_to_min() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        let fast = Service {
            workers: 10_000,
            work: 10 * MS,
        };
        overload(&mut gradient, &fast, &mut now, Duration::from_secs(3));
        assert_eq!(gradient.limit(), 256);
        // Every attempt times out at the min RTT's latency: only the signal says so.
        let mut limits = vec![gradient.limit()];
        for _ in 0..100 {
            now += 100 * MS;
            let timeout = Sample {
                rtt: 10 * MS,
                in_flight: gradient.limit(),
                signal: Signal::Overload,
            };
            if let Some(change) = gradient.record(now, timeout) {
                assert_eq!(change.reason, Reason::Overload);
                assert_eq!(change.to, ((change.from as f64 * BACKOFF) as usize).max(3));
                limits.push(change.to);
            }
        }
        assert_eq!(&limits[..3], &[256, 230, 207]);
        assert_eq!(gradient.limit(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_that_does_not_use_its_limit_does_not_raise_it() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        let service = Service {
            workers: 8,
            work: 10 * MS,
        };
        overload(&mut gradient, &service, &mut now, Duration::from_secs(5));
        let settled = gradient.limit();
        // A trickle: two at a time, at the min RTT, for 10 s.
        for _ in 0..1000 {
            now += 10 * MS;
            let idle = Sample {
                rtt: 10 * MS,
                in_flight: 2,
                signal: Signal::Answered,
            };
            assert_eq!(gradient.record(now, idle), None);
        }
        assert_eq!(gradient.limit(), settled);
    }

    #[tokio::test(start_paused = true)]
    async fn measures_the_min_rtt_again_and_follows_a_slower_service() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        let mut service = Service {
            workers: 8,
            work: 10 * MS,
        };
        overload(&mut gradient, &service, &mut now, Duration::from_secs(5));
        // A slow database: every request takes twice as long, the workers are the same.
        service.work = 20 * MS;
        let seen = overload(&mut gradient, &service, &mut now, Duration::from_secs(65));
        assert_eq!(gradient.min_rtt(), Some(20 * MS));
        // It dipped to min for the measurement, and settled as before after it.
        assert!(seen.iter().any(|(_, l)| *l == 3));
        let (low, high) = range(&seen, now - Duration::from_secs(2));
        assert!(low >= 8 && high <= 16, "{low}..{high}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_min_rtt_counts_only_attempts_started_at_min_concurrency() {
        let mut now = Instant::now();
        let mut gradient = Gradient::new(tuning(), now);
        for _ in 0..MIN_RTT_SAMPLES * 2 {
            now += MS;
            let queued = Sample {
                rtt: 80 * MS,
                in_flight: 64,
                signal: Signal::Answered,
            };
            assert_eq!(gradient.record(now, queued), None);
            let timeout = Sample {
                rtt: MS,
                in_flight: 1,
                signal: Signal::Overload,
            };
            assert_eq!(gradient.record(now, timeout), None);
        }
        assert_eq!(gradient.min_rtt(), None);
        for i in 0..MIN_RTT_SAMPLES {
            let alone = Sample {
                rtt: (10 + i as u32 % 3) * MS,
                in_flight: 3,
                signal: Signal::Answered,
            };
            let change = gradient.record(now, alone);
            assert!(change.is_none(), "still at min: {change:?}");
        }
        assert_eq!(gradient.min_rtt(), Some(11 * MS));
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1usize..20,
            span in 0usize..100,
            samples in proptest::collection::vec((0u64..2_000, 0u64..500, 0usize..400, any::<bool>()), 1..400),
        ) {
            let tuning = Tuning { min, max: min + span, sample_interval: 10 * MS, min_rtt_interval: Duration::from_secs(1) };
            let mut now = Instant::now();
            let mut gradient = Gradient::new(tuning, now);
            for (step, rtt, in_flight, overload) in samples {
                now += Duration::from_millis(step);
                let signal = if overload { Signal::Overload } else { Signal::Answered };
                let sample = Sample { rtt: Duration::from_millis(rtt), in_flight, signal };
                let change = gradient.record(now, sample);
                prop_assert!((min..=min + span).contains(&gradient.limit()));
                if let Some(change) = change {
                    prop_assert_eq!(change.to, gradient.limit());
                    prop_assert_ne!(change.from, change.to);
                }
            }
        }
    }
}
