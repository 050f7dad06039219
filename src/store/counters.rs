//! The reply store's counters (names in `telemetry::metrics`), per route, registered at
//! zero so that a dashboard sees every series from the start.

use metrics::Counter;

use crate::telemetry::metrics::{
    REPLY_STORE_FAILURES, REPLY_STORE_LOOKUPS, REPLY_STORE_UNPROTECTED,
};

/// The `result` label of `ricochet_reply_store_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    HitAfterWait,
    Miss,
    TakenOver,
    Busy,
}

impl Lookup {
    pub const ALL: [Lookup; 5] = [
        Lookup::Hit,
        Lookup::HitAfterWait,
        Lookup::Miss,
        Lookup::TakenOver,
        Lookup::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::HitAfterWait => "hit_after_wait",
            Lookup::Miss => "miss",
            Lookup::TakenOver => "taken_over",
            Lookup::Busy => "busy",
        }
    }
}

/// The `operation` label of `ricochet_reply_store_failures_total`: the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Lookup,
    Store,
    Release,
}

/// The `reason` label of `ricochet_reply_store_unprotected_total`: a call or reply the
/// store does not protect from a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprotected {
    /// The store could not be asked; the route calls anyway (`on_unavailable = "call"`).
    Unavailable,
    /// The reply is larger than the store takes.
    TooLarge,
    /// The reply could not be stored.
    StoreFailed,
}

impl Unprotected {
    pub const ALL: [Unprotected; 3] = [
        Unprotected::Unavailable,
        Unprotected::TooLarge,
        Unprotected::StoreFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unprotected::Unavailable => "unavailable",
            Unprotected::TooLarge => "too_large",
            Unprotected::StoreFailed => "store_failed",
        }
    }
}

const OPERATIONS: [(Step, &str); 3] = [
    (Step::Lookup, "lookup"),
    (Step::Store, "store"),
    (Step::Release, "release"),
];

/// The route's store counters, registered at zero.
#[derive(Debug)]
pub struct StoreMetrics {
    lookups: Vec<Counter>,
    failures: Vec<Counter>,
    unprotected: Vec<Counter>,
}

impl StoreMetrics {
    pub(super) fn new(route: &str, source: &'static str) -> Self {
        let route = route.to_string();
        let counter = |name: &'static str, label: &'static str, value: &'static str| {
            let counter = metrics::counter!(name, "route" => route.clone(), "source" => source, label => value);
            counter.increment(0);
            counter
        };
        Self {
            lookups: (Lookup::ALL.iter())
                .map(|l| counter(REPLY_STORE_LOOKUPS, "result", l.as_str()))
                .collect(),
            failures: (OPERATIONS.iter())
                .map(|(_, o)| counter(REPLY_STORE_FAILURES, "operation", o))
                .collect(),
            unprotected: (Unprotected::ALL.iter())
                .map(|u| counter(REPLY_STORE_UNPROTECTED, "reason", u.as_str()))
                .collect(),
        }
    }

    pub fn lookup(&self, result: Lookup) {
        self.lookups[result as usize].increment(1);
    }

    pub fn failed(&self, operation: Step) {
        self.failures[operation as usize].increment(1);
    }

    pub fn unprotected(&self, reason: Unprotected) {
        self.unprotected[reason as usize].increment(1);
    }
}
