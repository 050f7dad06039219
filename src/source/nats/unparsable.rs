//! When the NATS client last dropped its connection over a message it could not parse.
//!
//! async-nats ends its connection when the server relays a message it cannot parse (see
//! docs/security.md, "NATS header blocks"); everything else on the wire after that message
//! is lost with it. On JetStream that means the messages delivered in the same pull: each
//! such drop uses up one of their `max_deliver` deliveries, and the unparsable message, the
//! oldest pending, comes first in every pull after its redelivery. So for a while after a
//! drop a JetStream route pulls one message at a time: the unparsable one then costs its own
//! deliveries only. The logging layer that sees the client's drop records it here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds after [`epoch`] of the last drop, plus one (0: none yet).
static LAST: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The client dropped its connection over a message it could not parse, now.
pub fn unparsable_seen() {
    let millis = epoch().elapsed().as_millis() as u64;
    LAST.store(millis + 1, Ordering::Relaxed);
}

/// Whether such a drop happened within `window` before now.
pub fn unparsable_within(window: Duration) -> bool {
    let last = LAST.load(Ordering::Relaxed);
    if last == 0 {
        return false;
    }
    let now = epoch().elapsed().as_millis() as u64 + 1;
    now.saturating_sub(last) <= window.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_is_remembered_for_the_window_asked_about() {
        let _ = epoch();
        unparsable_seen();
        assert!(unparsable_within(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!unparsable_within(Duration::from_millis(5)));
    }
}
