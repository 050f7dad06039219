//! Whether the process still works: what `/healthz` answers.
//!
//! Readiness (`admin::Health`) says whether ricochet can serve *now*; it recovers by itself
//! (a reconnect, a consumer bound again). Liveness says whether it ever will again without a
//! restart. It fails, for good, when part of the machinery is gone:
//!
//! - a panic on any thread or task (a dependency's connection task included: async-nats'
//!   task ends with it and every subscription goes quiet while its connection state still
//!   says connected);
//! - an intake (a route's subscription, consumer or queue) that ended while ricochet was not
//!   stopping it (`generation.rs` watches each one);
//! - the NATS client's connection task ending on its own (after a reconnect refused for good,
//!   such as an authorization violation), seen as the end of a subscription of its own.
//!
//! Each failure is logged once at error level, counted in `ricochet_liveness_failures_total`
//! by cause, and listed in `/healthz`'s answer (503) so an orchestrator restarts the process.

use std::sync::{Mutex, OnceLock};

use tracing::error;

use crate::telemetry::metrics::LIVENESS_FAILURES;

/// What ended the process's usefulness; the `cause` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Panic,
    IntakeEnded,
    NatsClientEnded,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Panic => "panic",
            Cause::IntakeEnded => "intake_ended",
            Cause::NatsClientEnded => "nats_client_ended",
        }
    }
}

/// At most this many reasons are kept (the first ones: they are the likely causes).
const KEPT: usize = 8;
/// A panic's message is cut to this many characters in the reason.
const MESSAGE_CHARS: usize = 200;

/// The process-wide record of failures; see the module doc.
#[derive(Debug, Default)]
pub struct Liveness {
    reasons: Mutex<Vec<String>>,
}

impl Liveness {
    /// Records a failure: logged, counted, kept for `/healthz`.
    pub fn failed(&self, cause: Cause, reason: String) {
        error!(cause = cause.as_str(), %reason, "ricochet is no longer live: restart it");
        metrics::counter!(LIVENESS_FAILURES, "cause" => cause.as_str()).increment(1);
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        if reasons.len() < KEPT {
            reasons.push(reason);
        }
    }

    /// `Ok` while nothing failed, else every reason kept.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.clone())
        }
    }
}

/// The liveness of this process.
pub fn global() -> &'static Liveness {
    static LIVENESS: OnceLock<Liveness> = OnceLock::new();
    LIVENESS.get_or_init(Liveness::default)
}

/// Makes every panic, on any thread, a liveness failure (the default report to stderr
/// still follows). Called once at start-up; a second call adds nothing.
pub fn watch_panics() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            global().failed(Cause::Panic, panic_reason(info));
            report(info);
        }));
    });
}

fn panic_reason(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = (payload.downcast_ref::<&str>().copied())
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let message: String = message.chars().take(MESSAGE_CHARS).collect();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    match info.location() {
        Some(at) => format!(
            "thread {thread} panicked at {}:{}: {message}",
            at.file(),
            at.line()
        ),
        None => format!("thread {thread} panicked: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_kept_and_reported_until_the_process_ends() {
        let liveness = Liveness::default();
        assert_eq!(liveness.check(), Ok(()));
        liveness.failed(Cause::IntakeEnded, "the intake of route a ended".into());
        for n in 0..20 {
            liveness.failed(Cause::IntakeEnded, format!("later {n}"));
        }
        let reasons = liveness.check().unwrap_err();
        assert_eq!(reasons.len(), KEPT, "bounded");
        assert_eq!(
            reasons[0], "the intake of route a ended",
            "the first is kept"
        );
    }

    #[test]
    fn a_panic_on_another_thread_fails_the_process() {
        watch_panics();
        let ended = std::thread::Builder::new()
            .name("doomed".into())
            .spawn(|| panic!("injected: {}", "x".repeat(500)))
            .unwrap()
            .join();
        assert!(ended.is_err());
        let reasons = global().check().unwrap_err();
        let reason = (reasons.iter())
            .find(|r| r.contains("injected"))
            .expect("the panic is a reason");
        assert!(reason.starts_with("thread doomed panicked at src/telemetry/liveness.rs:"));
        assert!(reason.len() < 300, "the message is cut: {reason}");
    }

    #[tokio::test]
    async fn a_panic_in_a_task_fails_the_process() {
        watch_panics();
        let task = tokio::spawn(async { panic!("task machinery gone") });
        assert!(task.await.unwrap_err().is_panic());
        let reasons = global().check().unwrap_err();
        assert!(reasons.iter().any(|r| r.contains("task machinery gone")));
    }
}
