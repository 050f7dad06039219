//! One classification per attempt: success, retryable or permanent. Retry, breaker, metrics
//! and settlement all read this one answer instead of judging statuses on their own.

use http::StatusCode;

use super::InvokeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Worth another attempt: the service may answer differently later.
    Retryable,
    /// The service's final word (or a request that can never work).
    Permanent,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::Retryable => "retryable",
            Class::Permanent => "permanent",
        }
    }
}

/// Classifies the result of one attempt.
pub fn classify(result: &Result<StatusCode, &InvokeError>) -> Class {
    match result {
        Ok(status) if status.is_success() => Class::Success,
        Ok(status) => match status.as_u16() {
            408 | 429 | 502 | 503 | 504 => Class::Retryable,
            _ => Class::Permanent,
        },
        Err(InvokeError::ResponseTooLarge(_)) => Class::Permanent,
        Err(InvokeError::Timeout(_) | InvokeError::Connect(_) | InvokeError::Connection(_)) => {
            Class::Retryable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses_and_errors_are_classified() {
        let status = |code: u16| classify(&Ok(StatusCode::from_u16(code).unwrap()));
        assert_eq!(status(200), Class::Success);
        assert_eq!(status(204), Class::Success);
        assert_eq!(status(503), Class::Retryable);
        assert_eq!(status(429), Class::Retryable);
        assert_eq!(status(400), Class::Permanent);
        assert_eq!(status(500), Class::Permanent);
        assert_eq!(status(301), Class::Permanent);
        let timeout = InvokeError::Timeout(Duration::from_secs(1));
        assert_eq!(classify(&Err(&timeout)), Class::Retryable);
        let big = InvokeError::ResponseTooLarge(10);
        assert_eq!(classify(&Err(&big)), Class::Permanent);
    }
}
