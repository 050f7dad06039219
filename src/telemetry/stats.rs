//! Per-route request statistics: what the pipeline records of every finished message for
//! the service discovery API's STATS answer (served by the source whose
//! broker has that API).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::message::reply::SERVICE_ERROR_HEADER;
use crate::message::Reply;

/// What the service discovery API's STATS reports of one route: messages finished, those answered with an error status
/// (>= 400: ricochet's own errors and the service's), the last of them, and the time from
/// receipt to the finished message.
#[derive(Debug, Default)]
pub struct RequestStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RequestStats {
    /// One finished message: `failed` is its error (`"<status>:<description>"`) if its
    /// reply had an error status.
    pub fn record(&self, elapsed: Duration, failed: Option<String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_ns.fetch_add(nanos, Ordering::Relaxed);
        if let Some(error) = failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        }
    }

    /// The error a reply stands for, in the discovery API's `"<code>:<description>"` form, if its
    /// status is an error. Only error replies allocate.
    pub fn error_of(reply: &Reply) -> Option<String> {
        let status = reply.status.as_u16();
        (status >= 400).then(|| {
            let description = reply.header(SERVICE_ERROR_HEADER).unwrap_or("");
            format!("{status}:{description}")
        })
    }

    /// Messages finished, those with an error status, total processing time (ns), the
    /// last error.
    pub fn totals(&self) -> (u64, u64, u64, String) {
        let requests = self.requests.load(Ordering::Relaxed);
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        (
            requests,
            self.errors.load(Ordering::Relaxed),
            self.processing_ns.load(Ordering::Relaxed),
            last.clone().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ErrorKind;

    #[test]
    fn stats_count_requests_errors_the_last_error_and_processing_time() {
        let stats = RequestStats::default();
        let ok = Reply::from_response(
            http::StatusCode::OK,
            &http::HeaderMap::new(),
            bytes::Bytes::new(),
            &Default::default(),
        );
        assert_eq!(RequestStats::error_of(&ok), None);
        stats.record(Duration::from_millis(3), RequestStats::error_of(&ok));
        let timeout = Reply::error(ErrorKind::Timeout, "the service did not answer within 1s");
        let failed = RequestStats::error_of(&timeout);
        assert_eq!(
            failed.as_deref(),
            Some("504:the service did not answer within 1s")
        );
        stats.record(Duration::from_millis(5), failed);
        assert_eq!(
            stats.totals(),
            (
                2,
                1,
                8_000_000,
                "504:the service did not answer within 1s".into()
            )
        );
    }
}
