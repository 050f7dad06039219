//! One classification per attempt, read by everything else: the retry loop (retry or not),
//! the breaker (did the service fail), metrics and the reply.
//!
//! - success: 2xx and the route's `success_statuses`;
//! - retryable: what the route's `retry_on` lists (by default 408, 429, 502, 503, 504,
//!   connect failures, broken connections and attempt timeouts; durable sources add every
//!   other 5xx but 501 and 505, see `config::defaults::retry_on`);
//! - permanent: everything else. A permanent answer is still the service's answer and goes
//!   back to the caller unchanged.
//!
//! Independently, an attempt counts as a *failure of the service* (for the breaker) when it
//! is retryable, a 5xx, or no answer at all; a 4xx is the service working as intended.

use http::StatusCode;

use super::InvokeError;
use crate::config::{RetryCondition, RetryOn, RouteConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Worth another attempt: the service may answer differently later.
    Retryable,
    /// The service's final word (or a failure that another attempt cannot fix).
    Permanent,
}

/// The classification of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    /// Counts against the service's health (the circuit breaker).
    pub failed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Classifier {
    success_statuses: StatusSet,
    retry_statuses: StatusSet,
    retry_conditions: Vec<RetryCondition>,
}

/// A set of HTTP status codes (100 to 639), one bit each: a lookup is one shift, however
/// many statuses a route retries.
#[derive(Debug, Clone, Default)]
struct StatusSet([u64; 10]);

impl StatusSet {
    fn insert(&mut self, status: u16) {
        if let Some(word) = self.0.get_mut(usize::from(status / 64)) {
            *word |= 1 << (status % 64);
        }
    }

    fn contains(&self, status: u16) -> bool {
        (self.0.get(usize::from(status / 64))).is_some_and(|word| word & (1 << (status % 64)) != 0)
    }
}

impl Classifier {
    /// `durable`: whether the route's source can redeliver, for the default `retry_on`.
    pub fn new(route: &RouteConfig, durable: bool) -> Self {
        let mut classifier = Self::default();
        for status in &route.success_statuses {
            classifier.success_statuses.insert(*status);
        }
        for on in route.retry_on(durable) {
            match on {
                RetryOn::Status(status) => classifier.retry_statuses.insert(status),
                RetryOn::Condition(condition) => classifier.retry_conditions.push(condition),
            }
        }
        classifier
    }

    pub fn classify(&self, result: Result<StatusCode, &InvokeError>) -> Verdict {
        match result {
            Ok(status)
                if status.is_success() || self.success_statuses.contains(status.as_u16()) =>
            {
                Verdict {
                    class: Class::Success,
                    failed: false,
                }
            }
            Ok(status) => {
                let retryable = self.retry_statuses.contains(status.as_u16());
                Verdict {
                    class: if retryable {
                        Class::Retryable
                    } else {
                        Class::Permanent
                    },
                    failed: retryable || status.is_server_error(),
                }
            }
            Err(error) => {
                let condition = match error {
                    InvokeError::Connect(_) => Some(RetryCondition::ConnectFailure),
                    InvokeError::Connection(_) => Some(RetryCondition::Reset),
                    InvokeError::Timeout(_) => Some(RetryCondition::Timeout),
                    InvokeError::ResponseTooLarge(_) => None,
                };
                let retryable = condition.is_some_and(|c| self.retry_conditions.contains(&c));
                Verdict {
                    class: if retryable {
                        Class::Retryable
                    } else {
                        Class::Permanent
                    },
                    // An oversized body is a contract problem, not an unhealthy service.
                    failed: condition.is_some(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoke::ConnectError;
    use crate::settings::load_str;
    use std::time::Duration;

    fn classifier(extra: &str) -> Classifier {
        let text = format!(
            "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/\"\n{extra}"
        );
        let settings = load_str(&text, Vec::new()).unwrap();
        let durable = settings.sources[0].durable();
        Classifier::new(&settings.config.routes[0], durable)
    }

    fn status(c: &Classifier, code: u16) -> Verdict {
        c.classify(Ok(StatusCode::from_u16(code).unwrap()))
    }

    const SUCCESS: Verdict = Verdict {
        class: Class::Success,
        failed: false,
    };
    const RETRY: Verdict = Verdict {
        class: Class::Retryable,
        failed: true,
    };

    #[test]
    fn default_classification() {
        let c = classifier("");
        assert_eq!(status(&c, 200), SUCCESS);
        assert_eq!(status(&c, 204), SUCCESS);
        for code in [408, 429, 502, 503, 504] {
            assert_eq!(status(&c, code), RETRY, "{code}");
        }
        assert_eq!(
            status(&c, 400),
            Verdict {
                class: Class::Permanent,
                failed: false
            }
        );
        assert_eq!(
            status(&c, 404),
            Verdict {
                class: Class::Permanent,
                failed: false
            }
        );
        assert_eq!(
            status(&c, 500),
            Verdict {
                class: Class::Permanent,
                failed: true
            }
        );
        assert_eq!(
            status(&c, 302),
            Verdict {
                class: Class::Permanent,
                failed: false
            }
        );
        for error in [
            InvokeError::Timeout(Duration::from_secs(1)),
            InvokeError::Connect(ConnectError::Tcp(
                std::io::ErrorKind::ConnectionRefused.into(),
            )),
            InvokeError::Connection("reset".into()),
        ] {
            assert_eq!(c.classify(Err(&error)), RETRY, "{error}");
        }
        let big = InvokeError::ResponseTooLarge(10);
        assert_eq!(
            c.classify(Err(&big)),
            Verdict {
                class: Class::Permanent,
                failed: false
            }
        );
    }

    #[test]
    fn durable_sources_retry_server_errors_but_501_and_505() {
        for source in ["jetstream", "kafka"] {
            let table = match source {
                "jetstream" => "[routes.jetstream]\nstream = \"S\"\n",
                _ => "[routes.kafka]\nbrokers = \"k:9092\"\n",
            };
            let c = classifier(&format!("source = \"{source}\"\n{table}"));
            for code in [408, 429, 500, 502, 503, 504, 507, 511, 599] {
                assert_eq!(status(&c, code), RETRY, "{source} {code}");
            }
            for code in [501, 505] {
                let verdict = status(&c, code);
                assert_eq!(verdict.class, Class::Permanent, "{source} {code}");
                assert!(verdict.failed, "a 5xx still counts against the breaker");
            }
            for code in [400, 404, 409, 422] {
                assert_eq!(status(&c, code).class, Class::Permanent, "{source} {code}");
            }
            let reset = InvokeError::Connection("reset".into());
            assert_eq!(c.classify(Err(&reset)), RETRY);
        }
        // A route's own list replaces the default, durable or not.
        let c = classifier("source = \"jetstream\"\n[routes.retry]\nretry_on = [503]\n[routes.jetstream]\nstream = \"S\"\n");
        assert_eq!(status(&c, 500).class, Class::Permanent);
        assert_eq!(status(&c, 503), RETRY);
    }

    #[test]
    fn status_sets_hold_every_status_and_nothing_else() {
        let mut set = StatusSet::default();
        for status in [100, 200, 404, 500, 599, 639] {
            set.insert(status);
        }
        for status in 0..700u16 {
            let expected = [100, 200, 404, 500, 599, 639].contains(&status);
            assert_eq!(set.contains(status), expected, "{status}");
        }
        set.insert(700); // out of range: ignored, no panic
        assert!(!set.contains(700));
    }

    #[test]
    fn routes_choose_what_succeeds_and_what_is_retried() {
        let c =
            classifier("success_statuses = [404]\n[routes.retry]\nretry_on = [500, \"reset\"]\n");
        assert_eq!(status(&c, 404), SUCCESS);
        assert_eq!(status(&c, 500), RETRY);
        assert_eq!(
            status(&c, 503),
            Verdict {
                class: Class::Permanent,
                failed: true
            }
        );
        let timeout = InvokeError::Timeout(Duration::from_secs(1));
        assert_eq!(
            c.classify(Err(&timeout)),
            Verdict {
                class: Class::Permanent,
                failed: true
            }
        );
        let reset = InvokeError::Connection("reset".into());
        assert_eq!(c.classify(Err(&reset)), RETRY);
    }
}
