//! Span export: OTLP/HTTP with protobuf bodies, written straight from the SDK's
//! [`SpanData`](opentelemetry_sdk::trace::SpanData) as the bytes of an
//! `ExportTraceServiceRequest` (opentelemetry-proto's trace.proto, common.proto and
//! resource.proto) when each span ends ([`BatchProcessor`]), posted in batches through a
//! hyper client that runs on ricochet's runtime ([`OtlpExporter`]).
//!
//! opentelemetry-otlp built opentelemetry-proto's types from every span (a `String` per
//! attribute key and value, a `Vec` per id) and then encoded them with prost: about 28,000
//! instructions per request in all, more than the whole of tracing's budget. Here the bytes
//! are written in one pass into the buffer that becomes the request's body. What goes on
//! the wire is the same message: every span under the one resource, grouped by
//! instrumentation scope.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use tracing::warn;

mod batch;
mod protobuf;

pub use batch::{BatchProcessor, Limits};

/// What the exporter says it is, as opentelemetry-otlp 0.31.1 (the exporter before this
/// one) said it: collectors see the same requests as before.
const USER_AGENT: &str = "OTel-OTLP-Exporter-Rust/0.31.1";

/// Posts request bodies to an OTLP/HTTP traces endpoint.
#[derive(Debug)]
pub struct OtlpExporter {
    endpoint: Uri,
    timeout: Duration,
    headers: HeaderMap,
    client: Client,
    runtime: tokio::runtime::Handle,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

impl OtlpExporter {
    /// Posts to `endpoint`, each export given at most `timeout`. Must be made on ricochet's
    /// runtime: the requests run there.
    pub fn new(endpoint: &str, timeout: Duration) -> anyhow::Result<Self> {
        let endpoint: Uri = (endpoint.parse())
            .map_err(|e| anyhow::anyhow!("tracing: the OTLP endpoint is not a URI: {e}"))?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let (headers, left_out) = request_headers(env_headers());
        for why in left_out {
            warn!("tracing: a header of OTEL_EXPORTER_OTLP_(TRACES_)HEADERS is not sent: {why}");
        }
        Ok(Self {
            endpoint,
            timeout,
            headers,
            client,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Posts one body, within `timeout`.
    async fn post(&self, body: Bytes) -> Result<(), String> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.endpoint.clone();
        *request.headers_mut() = self.headers.clone();
        let client = self.client.clone();
        let timeout = self.timeout;
        let call = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request).await.map_err(|e| e.to_string())?;
                let (parts, body) = response.into_parts();
                // Read to the end, so the connection is kept for the next export.
                body.collect().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(parts.status)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "the collector did not answer within {}",
                    humantime::format_duration(timeout)
                )),
            }
        });
        // A task that ended abnormally is a failed export too. Neither the endpoint nor
        // the collector's answer is told (they may carry credentials).
        match call.await {
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) => Err(format!("the collector answered {status}")),
            Ok(Err(e)) => Err(e),
            Err(ended) => Err(ended.to_string()),
        }
    }
}

/// `Content-Type`, `User-Agent` and the headers of `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or
/// `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,...`, values percent-decoded), which win, as
/// with opentelemetry-otlp; and why each header left out is left out (not valid HTTP),
/// naming it when its name is valid, never with its value.
fn request_headers(extra: Vec<(String, String)>) -> (HeaderMap, Vec<String>) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    let mut left_out = Vec::new();
    for (name, value) in extra {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(name), Ok(mut value)) => {
                // Such a header usually carries a credential: marked so that no debug
                // output of the HTTP stack shows it.
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            (Ok(name), Err(_)) => left_out.push(format!(
                "the value of {name} is not a valid HTTP header value (control characters or non-ASCII text?)"
            )),
            // A name that is not a token may be text pasted in the wrong place: not shown.
            (Err(_), _) => left_out.push("a header name is not a valid HTTP header name".into()),
        }
    }
    (headers, left_out)
}

fn env_headers() -> Vec<(String, String)> {
    let value = std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"));
    value.map(|v| parse_headers(&v)).unwrap_or_default()
}

fn parse_headers(value: &str) -> Vec<(String, String)> {
    (value.split_terminator(','))
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            let (key, value) = (key.trim(), value.trim());
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8();
            let value = decoded.map(|v| v.into_owned()).unwrap_or(value.to_string());
            (!key.is_empty() && !value.is_empty()).then(|| (key.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_from_the_environment_are_parsed_as_opentelemetry_otlp_did() {
        assert_eq!(
            parse_headers(" authorization = Bearer%20abc , x-empty=, =v,x-tenant=acme"),
            vec![
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-tenant".to_string(), "acme".to_string()),
            ]
        );
        let (headers, left_out) = request_headers(parse_headers("user-agent=mine,x-tenant=acme"));
        assert!(left_out.is_empty());
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(
            headers["user-agent"], "mine",
            "the environment's headers win"
        );
        assert_eq!(headers["x-tenant"], "acme");
        assert!(headers["x-tenant"].is_sensitive(), "may carry a credential");
        assert!(format!("{:?}", headers["x-tenant"]).contains("Sensitive"));
        assert_eq!(request_headers(Vec::new()).0["user-agent"], USER_AGENT);
    }

    #[test]
    fn headers_that_are_not_valid_http_are_left_out_and_said_without_their_value() {
        let (headers, left_out) = request_headers(vec![
            ("authorization".into(), "Bearer s3cret\nline".into()),
            ("bad name".into(), "tok3n".into()),
            ("x-tenant".into(), "acme".into()),
        ]);
        assert_eq!(headers["x-tenant"], "acme");
        assert!(headers.get("authorization").is_none());
        assert_eq!(headers.len(), 3, "content-type, user-agent, x-tenant");
        assert_eq!(left_out.len(), 2, "{left_out:?}");
        assert!(left_out[0].contains("authorization"), "{left_out:?}");
        assert!(left_out[1].contains("name"), "{left_out:?}");
        let said = left_out.join(" ");
        for secret in ["s3cret", "tok3n", "bad name"] {
            assert!(!said.contains(secret), "{said}");
        }
    }
}
