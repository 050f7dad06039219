//! Why one HTTP call produced no usable response: the attempt's error, which the classifier
//! (`classify.rs`) turns into a verdict, the retry policy (`retry.rs`) reads, and the
//! pipeline turns into an error reply (its [`InvokeError::kind`]).

use std::time::Duration;

use crate::message::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the service did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection could be made, so nothing was sent: any request may be retried.
    #[error("the service cannot be reached: {0}")]
    Connect(ConnectError),
    /// A connection broke while the request or its response was under way. A message for
    /// logs and replies only: callers branch on the variant.
    #[error("the connection to the service failed: {0}")]
    Connection(String),
    #[error("the service's response body is larger than {0} bytes")]
    ResponseTooLarge(u64),
}

/// Which step of making a connection to the service failed. The texts are those of the
/// error replies and logs (the innermost cause says most: "Connection refused").
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The TCP connect failed (refused, unreachable, the name did not resolve).
    #[error("{0}")]
    Tcp(std::io::Error),
    /// The connect to the service's Unix socket failed: no such file (the service has not
    /// created it, or removed it), nobody listening on it, or no permission.
    #[error("{0}")]
    Socket(std::io::Error),
    #[error("TLS handshake timed out after {0:?}")]
    TlsTimedOut(Duration),
    #[error("TLS handshake failed: {}", innermost(.0))]
    Tls(std::io::Error),
    /// The HTTP/1 handshake on the new connection failed.
    #[error("{}", innermost(.0))]
    Handshake(hyper::Error),
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

// Not `#[from]`: that would also make it the error's source, and a chain printed whole
// would say the cause twice (the text above already ends with it).
impl From<ConnectError> for InvokeError {
    fn from(e: ConnectError) -> Self {
        InvokeError::Connect(e)
    }
}

/// The text of the innermost cause of `error` (hyper's and rustls' outer texts say least).
pub(super) fn innermost(error: &dyn std::error::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = error.source();
    let mut text = error.to_string();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts end up in error replies and logs: the words stay.
    #[test]
    fn connect_failures_read_as_before() {
        let text = |e: ConnectError| InvokeError::from(e).to_string();
        let second = Duration::from_secs(1);
        assert_eq!(
            text(ConnectError::TimedOut(second)),
            "the service cannot be reached: connect timed out after 1s"
        );
        assert_eq!(
            text(ConnectError::TlsTimedOut(second)),
            "the service cannot be reached: TLS handshake timed out after 1s"
        );
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            text(ConnectError::Tcp(refused)),
            "the service cannot be reached: refused"
        );
        let inner = std::io::Error::other("UnknownIssuer");
        let tls =
            std::io::Error::other(Box::new(inner) as Box<dyn std::error::Error + Send + Sync>);
        assert_eq!(
            text(ConnectError::Tls(tls)),
            "the service cannot be reached: TLS handshake failed: UnknownIssuer"
        );
    }
}
