//! Lifetime: whether anyone still waits for a request, and its deadline, for every source.
//!
//! A message's age counts from its broker's timestamp ([`Inbound::sent_at`], a fact its
//! source provides), else from its receipt. What the caller and the route allow it, each
//! from that clock, is its lifetime:
//!
//! - the route's `lifetime.max_age`;
//! - the caller's `Ricochet-Timeout` (a duration);
//! - the caller's `Ricochet-Deadline` (an absolute time, milliseconds since the Unix epoch);
//! - the broker's time-to-live ([`Inbound::expires_in`], where the publisher set one).
//!
//! A message with less than `lifetime.min_budget` of it left is expired: it is settled
//! without calling the service ([`Pipeline::expire`]). Any other gets its deadline, the
//! earliest of those and the route's `total_timeout` (counted from receipt: ricochet's own
//! budget for the call).
//!
//! Clock skew: a timestamp from the future (a producer's clock ahead of ricochet's) counts
//! as now, and a message is never younger than the time since ricochet received it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::debug;

use super::conclude::Letter;
use super::policy::Reason;
use super::{Pipeline, Processed, Route, Settled};
use crate::config::{Expired, LifetimeConfig};
use crate::invoke::{AttemptHeaders, Call};
use crate::message::reply::{DEADLINE_HEADER, TIMEOUT_HEADER};
use crate::message::{ErrorKind, Inbound, Settle, Undelivered};
use crate::telemetry::trace::MessageTrace;

/// What a message's lifetime comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The route's `lifetime.max_age`.
    MaxAge,
    /// The caller's `Ricochet-Timeout`.
    CallerTimeout,
    /// The caller's `Ricochet-Deadline`.
    CallerDeadline,
    /// The broker's time-to-live the publisher set ([`Inbound::expires_in`]).
    Expiration,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::MaxAge => "lifetime.max_age",
            Bound::CallerTimeout => TIMEOUT_HEADER,
            Bound::CallerDeadline => DEADLINE_HEADER,
            Bound::Expiration => "expiration",
        }
    }
}

/// Whether a message is still wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Call the service; nobody waits for the answer after this.
    Wanted(Instant),
    /// Nobody waits for it (`left` is below `lifetime.min_budget`): no call.
    Expired {
        bound: Bound,
        age: Duration,
        left: Duration,
    },
}

/// tokio's clock (deadlines) and the wall clock (a broker's timestamp, a caller's absolute
/// deadline), read together.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub now: Instant,
    pub wall: SystemTime,
}

impl Clocks {
    pub fn read() -> Self {
        Self {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// The message's age now: from its broker's timestamp, never less than since its receipt.
pub fn age(inbound: &Inbound, clocks: Clocks) -> Duration {
    let since_receipt = clocks
        .now
        .saturating_duration_since(Instant::from_std(inbound.received));
    // A timestamp from the future counts as now.
    let since_sent = (inbound.sent_at).map_or(Duration::ZERO, |sent| {
        clocks.wall.duration_since(sent).unwrap_or(Duration::ZERO)
    });
    since_receipt.max(since_sent)
}

/// Whether `inbound` is still wanted, and its deadline; an error (the text of a 400) when a
/// caller's header cannot be read. `total_timeout` is the route's, from receipt.
pub fn judge(
    lifetime: &LifetimeConfig,
    total_timeout: Duration,
    inbound: &Inbound,
    clocks: Clocks,
) -> Result<Judged, String> {
    let age = age(inbound, clocks);
    // The tightest of the caller's and the route's limits: what is left of it, and which.
    let mut tightest: Option<(Duration, Bound)> = None;
    let mut cut = |left: Duration, bound: Bound| {
        if tightest.is_none_or(|(l, _)| left < l) {
            tightest = Some((left, bound));
        }
    };
    if let Some(max_age) = lifetime.max_age {
        cut(max_age.saturating_sub(age), Bound::MaxAge);
    }
    if let Some(ttl) = inbound.expires_in {
        cut(ttl.saturating_sub(age), Bound::Expiration);
    }
    if let Some(value) = inbound.header(TIMEOUT_HEADER) {
        let asked = parse_timeout(value).ok_or_else(|| {
            format!("{TIMEOUT_HEADER} {value:?} is not a duration like \"1500ms\" or \"2s\"")
        })?;
        cut(asked.saturating_sub(age), Bound::CallerTimeout);
    }
    if let Some(value) = inbound.header(DEADLINE_HEADER) {
        let at = parse_deadline(value).ok_or_else(|| {
            format!(
                "{DEADLINE_HEADER} {value:?} is not a time in milliseconds since the Unix epoch"
            )
        })?;
        // Beyond what the clock can hold: no limit.
        if let Some(at) = at {
            let left = at.duration_since(clocks.wall).unwrap_or(Duration::ZERO);
            cut(left, Bound::CallerDeadline);
        }
    }
    if let Some((left, bound)) = tightest {
        if left < lifetime.min_budget {
            return Ok(Judged::Expired { bound, age, left });
        }
    }
    let received = Instant::from_std(inbound.received);
    let ours = (received + total_timeout).saturating_duration_since(clocks.now);
    let left = tightest.map_or(ours, |(left, _)| left.min(ours));
    Ok(Judged::Wanted(clocks.now + left))
}

/// The call of a wanted message: its deadline, and what each attempt tells the service.
pub fn call(lifetime: &LifetimeConfig, deadline: Instant, inbound: &Inbound) -> Call {
    let headers = match lifetime.attempt_headers {
        true => AttemptHeaders::On {
            delivered: inbound.delivered,
        },
        false => AttemptHeaders::Off,
    };
    Call { deadline, headers }
}

/// `Ricochet-Timeout`: a duration ("1500ms", "2s") or a plain number of milliseconds.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .ok()
        .or_else(|| humantime::parse_duration(value).ok())
}

/// `Ricochet-Deadline`: whole milliseconds since the Unix epoch; `Some(None)` for a time
/// beyond what the system clock can hold (no limit), `None` for anything else than a
/// number of milliseconds (negative, fractional, text, more than 64 bits).
pub fn parse_deadline(value: &str) -> Option<Option<SystemTime>> {
    let millis = value.trim().parse::<u64>().ok()?;
    Some(UNIX_EPOCH.checked_add(Duration::from_millis(millis)))
}

impl Pipeline {
    /// A message nobody waits for, as the stage found it: processed without a call, for the
    /// policy (which has [`Pipeline::expire`] settle it).
    pub(super) fn expired(
        &self,
        route: &Route,
        bound: Bound,
        age: Duration,
        left: Duration,
    ) -> Processed {
        let min_budget = route.config.lifetime.min_budget;
        let detail = match left.is_zero() {
            true => format!(
                "expired: {} passed (age {})",
                bound.as_str(),
                humantime::format_duration(round(age))
            ),
            false => format!(
                "expired: {} left before {}, less than lifetime.min_budget ({})",
                humantime::format_duration(round(left)),
                bound.as_str(),
                humantime::format_duration(min_budget)
            ),
        };
        debug!(route = %route.name, bound = bound.as_str(), ?age, ?left, "request expired; the service is not called");
        Processed {
            reply: crate::message::Reply::error(ErrorKind::Expired, &detail)
                .with_header(crate::message::reply::ATTEMPTS_HEADER, "0"),
            disposition: super::Disposition::Expired,
            error: Some(ErrorKind::Expired),
            detail: Some(detail),
        }
    }

    /// Settles an expired message without calling the service: counted; answered only when
    /// the route sets `lifetime.reply_expired` (its caller is gone); acknowledged, or
    /// dead-lettered with reason `expired` when the route sets `lifetime.expired`.
    pub(super) async fn expire<S: Settle>(
        &self,
        route: &Route,
        inbound: &Inbound,
        destination: Option<&str>,
        processed: Processed,
        settle: &S,
        trace: &MessageTrace<'_>,
    ) -> Settled {
        let lifetime = &route.config.lifetime;
        route.metrics.expired.increment(1);
        let reply = lifetime.reply_expired.then_some(processed.reply);
        if reply.is_some() {
            route.metrics.error(ErrorKind::Expired);
        }
        match lifetime.expired {
            Expired::DeadLetter => {
                let letter = Letter {
                    reason: Reason::Refused(ErrorKind::Expired),
                    detail: processed.detail,
                    last_status: ErrorKind::Expired.status().as_u16(),
                    reply,
                };
                self.give_up(route, inbound, destination, letter, settle, trace)
                    .await
            }
            Expired::Ack => {
                if let Some(reply) = reply {
                    let replied = self.reply(route, inbound, destination, reply, settle, trace);
                    if let Err(Undelivered::Lost) = replied.await {
                        return Settled::Abandoned;
                    }
                }
                self.ack(route, settle, trace).await
            }
        }
    }
}

/// A duration to the millisecond, for messages.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// A message received at the clocks' `now` less `since_receipt`, its broker's timestamp
    /// `sent_ago` before the wall clock's now.
    fn message(clocks: Clocks, since_receipt: Duration, sent_ago: Option<i64>) -> Inbound {
        let mut inbound = Inbound::new("s".into(), None, Vec::new(), Bytes::new());
        inbound.received = (clocks.now - since_receipt).into_std();
        inbound.sent_at = sent_ago.map(|ago| match ago >= 0 {
            true => clocks.wall - S(ago as u64),
            false => clocks.wall + S(ago.unsigned_abs()),
        });
        inbound
    }

    fn clocks() -> Clocks {
        Clocks {
            now: Instant::now() + S(3600),
            wall: UNIX_EPOCH + S(1_800_000_000),
        }
    }

    fn lifetime(max_age: Option<u64>) -> LifetimeConfig {
        LifetimeConfig {
            max_age: max_age.map(S),
            ..LifetimeConfig::default()
        }
    }

    #[test]
    fn age_comes_from_the_broker_and_a_future_timestamp_counts_as_now() {
        let c = clocks();
        assert_eq!(age(&message(c, S(1), Some(60)), c), S(60));
        // No timestamp (core NATS): from receipt.
        assert_eq!(age(&message(c, S(2), None), c), S(2));
        // A producer's clock ahead of ours: never younger than since receipt.
        assert_eq!(age(&message(c, S(3), Some(-120)), c), S(3));
        assert_eq!(age(&message(c, S(0), Some(-120)), c), S(0));
    }

    #[test]
    fn max_age_expires_old_messages_and_cuts_the_deadline_of_young_ones() {
        let c = clocks();
        let total = S(30);
        let old = message(c, S(1), Some(11));
        assert_eq!(
            judge(&lifetime(Some(10)), total, &old, c),
            Ok(Judged::Expired {
                bound: Bound::MaxAge,
                age: S(11),
                left: Duration::ZERO,
            })
        );
        // 4 s of its 10 left: that is its deadline, not the route's 30 s from receipt.
        let young = message(c, S(1), Some(6));
        assert_eq!(
            judge(&lifetime(Some(10)), total, &young, c),
            Ok(Judged::Wanted(c.now + S(4)))
        );
        // Without max_age the route's total timeout from receipt is the deadline.
        assert_eq!(
            judge(&lifetime(None), total, &old, c),
            Ok(Judged::Wanted(c.now + S(29)))
        );
    }

    #[test]
    fn less_than_min_budget_left_is_expired() {
        let c = clocks();
        let mut inbound = message(c, Duration::ZERO, Some(0));
        inbound
            .headers
            .push(("Ricochet-Timeout".into(), "4ms".into()));
        let judged = judge(&lifetime(None), S(30), &inbound, c).unwrap();
        assert_eq!(
            judged,
            Judged::Expired {
                bound: Bound::CallerTimeout,
                age: Duration::ZERO,
                left: MS(4),
            }
        );
        inbound.headers[0].1 = "5ms".into();
        let judged = judge(&lifetime(None), S(30), &inbound, c).unwrap();
        assert_eq!(judged, Judged::Wanted(c.now + MS(5)));
    }

    #[test]
    fn the_tightest_bound_decides_and_is_named() {
        let c = clocks();
        let mut inbound = message(c, Duration::ZERO, Some(20));
        inbound.expires_in = Some(S(15));
        let judged = judge(&lifetime(Some(60)), S(30), &inbound, c).unwrap();
        assert!(matches!(
            judged,
            Judged::Expired {
                bound: Bound::Expiration,
                ..
            }
        ));
        inbound.expires_in = Some(S(25));
        assert_eq!(
            judge(&lifetime(Some(60)), S(30), &inbound, c),
            Ok(Judged::Wanted(c.now + S(5)))
        );
        // The caller's absolute deadline, 2 s from the wall clock's now.
        let at = (c.wall + S(2)).duration_since(UNIX_EPOCH).unwrap();
        let millis = at.as_millis().to_string();
        inbound.headers.push(("ricochet-deadline".into(), millis));
        assert_eq!(
            judge(&lifetime(Some(60)), S(30), &inbound, c),
            Ok(Judged::Wanted(c.now + S(2)))
        );
    }

    #[test]
    fn unreadable_caller_headers_are_errors_and_far_deadlines_no_limit() {
        let c = clocks();
        for (name, value) in [
            ("Ricochet-Deadline", "soon"),
            ("Ricochet-Deadline", "-1"),
            ("Ricochet-Deadline", "1e12"),
            ("Ricochet-Deadline", "18446744073709551616"),
            ("Ricochet-Timeout", "later"),
        ] {
            let mut inbound = message(c, Duration::ZERO, None);
            inbound.headers.push((name.into(), value.into()));
            let error = judge(&lifetime(None), S(30), &inbound, c).unwrap_err();
            assert!(error.contains(name) && error.contains(value), "{error}");
        }
        assert_eq!(parse_deadline(" 1000 "), Some(UNIX_EPOCH.checked_add(S(1))));
        let mut far = message(c, Duration::ZERO, None);
        far.headers
            .push(("Ricochet-Deadline".into(), u64::MAX.to_string()));
        assert_eq!(
            judge(&lifetime(None), S(30), &far, c),
            Ok(Judged::Wanted(c.now + S(30)))
        );
    }
}
