//! `http::Response` -> [`Reply`], and the error replies ricochet produces itself.
//!
//! Every reply carries the HTTP status in `Ricochet-Status`. Replies with status >= 400 also
//! carry `Nats-Service-Error` and `Nats-Service-Error-Code`, the NATS service API convention.
//! Errors ricochet produces itself add `Ricochet-Error: <kind>` and a JSON body
//! `{"error": "...", "code": N}`.
//!
//! Header values are bytes ([`ReplyHeaders`]): Kafka and AMQP replies carry them as the
//! service sent them (`café` as UTF-8, obs-text, raw bytes) and a Kafka correlation id as
//! the request had it; each publisher decides what its broker can carry (NATS: UTF-8 only).

use bytes::Bytes;
use http::StatusCode;

use super::headers::{self, HeaderFilter};
use crate::message::reply::{
    status_text, ERROR_KIND_HEADER, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER, STATUS_HEADER,
};
use crate::message::{ErrorKind, Reply};
use crate::validate::Violation;

impl Reply {
    /// The service's own answer.
    pub fn from_response(
        status: StatusCode,
        response_headers: &http::HeaderMap,
        body: Bytes,
        filter: &HeaderFilter,
    ) -> Self {
        let mut headers = headers::from_http(response_headers, filter);
        headers.push((STATUS_HEADER.into(), status_text(status)));
        if status.as_u16() >= 400 {
            let description = match status.canonical_reason() {
                Some(reason) => Bytes::from_static(reason.as_bytes()),
                None => Bytes::from(format!("HTTP {}", status.as_u16())),
            };
            headers.push((SERVICE_ERROR_HEADER.into(), description));
            headers.push((SERVICE_ERROR_CODE_HEADER.into(), status_text(status)));
        }
        Self {
            status,
            headers,
            body,
        }
    }

    /// An error ricochet answers itself. `detail` must not contain secrets: it is sent to
    /// the caller.
    pub fn error(kind: ErrorKind, detail: &str) -> Self {
        let status = kind.status();
        let body = serde_json::json!({ "error": detail, "code": status.as_u16() });
        Self::own(kind, detail, body)
    }

    /// An error reply that lists what a message (or response) violated:
    /// `{"error": "...", "code": N, "violations": [{"instance_path", "schema_path", "message"}]}`.
    /// The list is bounded by the validator (count and text length).
    pub fn invalid(kind: ErrorKind, detail: &str, violations: &[Violation]) -> Self {
        let status = kind.status();
        let body = serde_json::json!({
            "error": detail,
            "code": status.as_u16(),
            "violations": violations,
        });
        Self::own(kind, detail, body)
    }

    fn own(kind: ErrorKind, detail: &str, body: serde_json::Value) -> Self {
        let status = kind.status();
        Self {
            status,
            headers: [
                ("Content-Type", "application/json".to_string()),
                (STATUS_HEADER, status.as_str().to_string()),
                (ERROR_KIND_HEADER, kind.as_str().to_string()),
                (SERVICE_ERROR_HEADER, single_line(detail)),
                (SERVICE_ERROR_CODE_HEADER, status.as_str().to_string()),
            ]
            .into_iter()
            .collect(),
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Header values cannot hold line breaks.
fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn success_carries_status_and_headers_but_no_error_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-order", HeaderValue::from_static("42"));
        let reply = Reply::from_response(
            StatusCode::CREATED,
            &h,
            Bytes::from_static(b"ok"),
            &HeaderFilter::default(),
        );
        assert_eq!(reply.header("Ricochet-Status"), Some("201"));
        assert_eq!(reply.header("x-order"), Some("42"));
        assert_eq!(reply.header(SERVICE_ERROR_HEADER), None);
        assert_eq!(reply.body.as_ref(), b"ok");
    }

    #[test]
    fn service_errors_follow_the_nats_service_convention() {
        let reply = Reply::from_response(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Bytes::from_static(b"nope"),
            &HeaderFilter::default(),
        );
        assert_eq!(reply.header(SERVICE_ERROR_HEADER), Some("Not Found"));
        assert_eq!(reply.header(SERVICE_ERROR_CODE_HEADER), Some("404"));
        assert_eq!(reply.header(ERROR_KIND_HEADER), None);
        assert_eq!(reply.body.as_ref(), b"nope");
    }

    #[test]
    fn validation_errors_list_their_violations() {
        let violations = [Violation::new(
            "/qty",
            "/properties/qty/minimum",
            "0 is less than 1",
        )];
        let reply = Reply::invalid(ErrorKind::Validation, "2 violations", &violations);
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.header(ERROR_KIND_HEADER), Some("validation"));
        assert_eq!(reply.header(SERVICE_ERROR_CODE_HEADER), Some("400"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "2 violations", "code": 400, "violations": [
                {"instance_path": "/qty", "schema_path": "/properties/qty/minimum", "message": "0 is less than 1"}
            ]})
        );
    }

    #[test]
    fn own_errors_have_json_bodies() {
        let reply = Reply::error(ErrorKind::Timeout, "upstream did not answer within 5s\n");
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.header(ERROR_KIND_HEADER), Some("timeout"));
        assert_eq!(reply.header(SERVICE_ERROR_CODE_HEADER), Some("504"));
        assert!(!reply.header(SERVICE_ERROR_HEADER).unwrap().contains('\n'));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["code"], 504);
        assert_eq!(body["error"], "upstream did not answer within 5s\n");
    }
}
