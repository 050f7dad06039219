//! The HTTP client: a hyper-util keep-alive pool, one timeout per call covering the request
//! and the whole response body, a cap on the body size, and no redirects followed.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::InvokeError;
use crate::config::UpstreamConfig;

/// The service's answer, fully read.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    max_response_size: usize,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .build(connector);
        Self {
            client,
            max_response_size: usize::try_from(config.max_response_size.bytes())
                .unwrap_or(usize::MAX),
        }
    }

    /// One attempt: send, read the body, all within `timeout`.
    pub async fn call(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, InvokeError> {
        tokio::time::timeout(timeout, self.call_inner(request))
            .await
            .unwrap_or(Err(InvokeError::Timeout(timeout)))
    }

    async fn call_inner(&self, request: Request<Bytes>) -> Result<UpstreamResponse, InvokeError> {
        let response = self
            .client
            .request(request.map(Full::new))
            .await
            .map_err(|e| {
                if e.is_connect() {
                    InvokeError::Connect(describe(&e))
                } else {
                    InvokeError::Connection(describe(&e))
                }
            })?;
        let (parts, body) = response.into_parts();
        let limit = self.max_response_size;
        let body = Limited::new(body, limit).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                InvokeError::ResponseTooLarge(limit as u64)
            } else {
                InvokeError::Connection(e.to_string())
            }
        })?;
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }
}

/// The innermost cause says most ("Connection refused"); hyper's outer text says least.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = error.source();
    let mut text = error.to_string();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}
