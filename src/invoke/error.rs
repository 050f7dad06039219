//! Why one HTTP call produced no usable response.

use std::time::Duration;

use crate::message::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the service cannot be reached: {0}")]
    Connect(String),
    #[error("the connection to the service failed: {0}")]
    Connection(String),
    #[error("the service's response body is larger than {0} bytes")]
    ResponseTooLarge(u64),
}

impl InvokeError {
    /// The error reply this becomes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InvokeError::Timeout(_) => ErrorKind::Timeout,
            InvokeError::Connect(_)
            | InvokeError::Connection(_)
            | InvokeError::ResponseTooLarge(_) => ErrorKind::UpstreamUnavailable,
        }
    }
}
