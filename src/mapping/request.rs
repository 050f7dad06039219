//! `Inbound` -> `http::Request`: method and path from the route, headers filtered, body
//! unchanged. The scheme and authority always come from `upstream.base_url`; for a service
//! on a Unix socket they are `http://localhost` (`config::BaseUrl::request_base`), the
//! base path and the route's path mapped by the same rules.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request, Uri};

use super::headers::{self, HeaderFilter};
use super::path::TemplateError;
use super::PathTemplate;
use crate::config::{BaseUrl, BaseUrlError, RouteConfig, UpstreamConfig};
use crate::invoke::retry::IDEMPOTENCY_KEY;
use crate::message::Inbound;
use crate::route::Pattern;

/// Why a message could not become an HTTP request. Always the caller's fault: a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("subject token {{{name}}} {reason}")]
    HostileToken { name: String, reason: &'static str },
    #[error("header {0:?} is not a valid HTTP header")]
    Header(String),
    #[error("header {name:?} cannot become an HTTP header: its value is {why}")]
    Unreadable { name: String, why: String },
    #[error("the request path is not a valid URI")]
    Uri,
}

/// Why a route's request mapping could not be prepared at start-up. Validation checks all of
/// these first, so one here means validation missed something; the texts are the causes'.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    BaseUrl(BaseUrlError),
    #[error("base_url has no scheme")]
    NoScheme,
    #[error("base_url has no host")]
    NoHost,
    #[error("{0}")]
    Method(http::method::InvalidMethod),
    #[error("{0}")]
    Path(TemplateError),
    #[error("{0}")]
    ContentType(http::header::InvalidHeaderValue),
}

/// Everything needed to build the HTTP request of one route, prepared at start-up.
#[derive(Debug, Clone)]
pub struct RequestMapping {
    method: Method,
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of `upstream.base_url`, without a trailing '/'.
    base_path: String,
    template: PathTemplate,
    content_type: Option<HeaderValue>,
    headers: HeaderFilter,
    /// The URI, made once, of a route whose path captures nothing.
    fixed: Option<Uri>,
}

impl RequestMapping {
    /// Built from a validated config; an error here means validation missed something.
    pub fn new(
        route: &RouteConfig,
        upstream: &UpstreamConfig,
        pattern: &Pattern,
    ) -> Result<Self, SetupError> {
        let base = BaseUrl::parse(&upstream.base_url).map_err(SetupError::BaseUrl)?;
        let parts = base.request_base().into_parts();
        let mut mapping = Self {
            method: Method::from_bytes(route.method.as_bytes()).map_err(SetupError::Method)?,
            scheme: parts.scheme.ok_or(SetupError::NoScheme)?,
            authority: parts.authority.ok_or(SetupError::NoHost)?,
            base_path: parts
                .path_and_query
                .map(|p| p.path().trim_end_matches('/').to_string())
                .unwrap_or_default(),
            template: PathTemplate::parse(&route.path, pattern.capture_names())
                .map_err(SetupError::Path)?,
            content_type: route
                .content_type
                .as_deref()
                .map(HeaderValue::from_str)
                .transpose()
                .map_err(SetupError::ContentType)?,
            headers: HeaderFilter::from_config(&route.request_headers),
            fixed: None,
        };
        // A path that cannot be a URI stays an error of each message, as for any path.
        if mapping.template.is_fixed() {
            mapping.fixed = mapping.uri(&[]).ok();
        }
        Ok(mapping)
    }

    /// The request's URI: the base URL's scheme, authority and path, then the route's path
    /// filled with `captures`.
    fn uri(&self, captures: &[&str]) -> Result<Uri, MapError> {
        if let Some(uri) = &self.fixed {
            return Ok(uri.clone());
        }
        let mut path = self.base_path.clone();
        self.template.render_into(captures, &mut path)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| MapError::Uri)
    }

    pub fn build(&self, inbound: &Inbound, captures: &[&str]) -> Result<Request<Bytes>, MapError> {
        let uri = self.uri(captures)?;
        if let Some(header) = (inbound.unreadable.iter()).find(|h| self.headers.forwards(&h.name)) {
            return Err(MapError::Unreadable {
                name: header.name.clone(),
                why: header.why.clone(),
            });
        }
        let mut headers = headers::to_http(&inbound.headers, &self.headers)?;
        if let Some(key) = &inbound.idempotency_key {
            // Durable sources: the same key on every redelivery, unless the message has one.
            if let Ok(value) = HeaderValue::from_str(key) {
                headers.entry(IDEMPOTENCY_KEY).or_insert(value);
            }
        }
        if let Some(content_type) = &self.content_type {
            headers
                .entry(CONTENT_TYPE)
                .or_insert_with(|| content_type.clone());
        }
        let mut request = Request::new(inbound.payload.clone());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::load_str;

    fn mapping(base_url: &str, extra: &str) -> (RequestMapping, Pattern) {
        let text = format!(
            "[upstream]\nbase_url = \"{base_url}\"\n[[routes]]\nname = \"r\"\nsubject = \"orders.{{id}}.get\"\nmethod = \"GET\"\npath = \"/orders/{{id}}\"\n{extra}"
        );
        let config = load_str(&text, Vec::new()).unwrap().config;
        let pattern = Pattern::parse(&config.routes[0].subject).unwrap();
        let m = RequestMapping::new(&config.routes[0], &config.upstream, &pattern).unwrap();
        (m, pattern)
    }

    fn inbound(headers: &[(&str, &str)]) -> Inbound {
        Inbound::new(
            "orders.42.get".into(),
            Some("_INBOX.x".into()),
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            Bytes::from_static(b"{\"a\":1}"),
        )
    }

    #[test]
    fn durable_sources_add_their_idempotency_key_unless_the_message_has_one() {
        let (m, _) = mapping("http://h:1", "");
        let mut plain = inbound(&[]);
        plain.idempotency_key = Some("ORDERS:42".into());
        let request = m.build(&plain, &["1"]).unwrap();
        assert_eq!(request.headers()["idempotency-key"], "ORDERS:42");
        let mut own = inbound(&[("Idempotency-Key", "caller-1")]);
        own.idempotency_key = Some("ORDERS:43".into());
        let request = m.build(&own, &["1"]).unwrap();
        let keys: Vec<_> = request
            .headers()
            .get_all("idempotency-key")
            .iter()
            .collect();
        assert_eq!(keys, ["caller-1"], "the message's own key is kept, alone");
        // Core NATS has none.
        let request = m.build(&inbound(&[]), &["1"]).unwrap();
        assert!(request.headers().get("idempotency-key").is_none());
    }

    #[test]
    fn a_path_without_captures_is_made_once_and_is_the_same_uri() {
        let text = "[upstream]\nbase_url = \"http://h:1/api\"\n[[routes]]\nname = \"r\"\nsubject = \"orders.*\"\npath = \"/orders?all=1\"\n";
        let config = load_str(text, Vec::new()).unwrap().config;
        let pattern = Pattern::parse(&config.routes[0].subject).unwrap();
        let m = RequestMapping::new(&config.routes[0], &config.upstream, &pattern).unwrap();
        assert!(m.fixed.is_some());
        for _ in 0..2 {
            let request = m.build(&inbound(&[]), &[]).unwrap();
            assert_eq!(request.uri(), "http://h:1/api/orders?all=1");
        }
        let (captured, _) = mapping("http://h:1", "");
        assert!(captured.fixed.is_none());
    }

    #[test]
    fn builds_method_uri_headers_and_body() {
        let (m, _) = mapping(
            "http://127.0.0.1:8080/api/",
            "content_type = \"application/json\"",
        );
        let request = m.build(&inbound(&[("X-Id", "7")]), &["42"]).unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "http://127.0.0.1:8080/api/orders/42");
        assert_eq!(request.headers()["x-id"], "7");
        assert_eq!(request.headers()["content-type"], "application/json");
        assert_eq!(request.body().as_ref(), b"{\"a\":1}");
    }

    #[test]
    fn a_header_without_a_text_form_is_refused_unless_the_route_would_not_forward_it() {
        let unreadable = |name: &str| crate::message::UnreadableHeader {
            name: name.into(),
            why: "bytes that are not UTF-8".into(),
        };
        let (m, _) = mapping("http://h:1", "");
        let mut message = inbound(&[("X-Ok", "1")]);
        message.unreadable.push(unreadable("Authorization"));
        let err = m.build(&message, &["1"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header \"Authorization\" cannot become an HTTP header: its value is bytes that are not UTF-8"
        );
        // Never forwarded whatever its value: a reserved name, or one the deny list names.
        let (m, _) = mapping("http://h:1", "[routes.request_headers]\ndeny = [\"x-bin\"]");
        let mut message = inbound(&[("X-Ok", "1")]);
        message.unreadable.push(unreadable("Nats-Anything"));
        message.unreadable.push(unreadable("X-Bin"));
        let request = m.build(&message, &["1"]).unwrap();
        assert_eq!(request.headers()["x-ok"], "1");
        assert!(request.headers().get("x-bin").is_none());
    }

    #[test]
    fn over_a_unix_socket_the_same_rules_build_a_request_to_localhost() {
        let (m, _) = mapping("unix:///run/svc.sock:/api/", "");
        let request = m.build(&inbound(&[("X-Id", "7")]), &["42"]).unwrap();
        assert_eq!(request.uri(), "http://localhost/api/orders/42");
        assert_eq!(request.headers()["x-id"], "7");
        let (m, _) = mapping("unix:///run/svc.sock", "");
        let request = m.build(&inbound(&[]), &["a/b"]).unwrap();
        assert_eq!(request.uri(), "http://localhost/orders/a%2Fb");
        for token in ["@evil.com", "evil.com:80", "//evil.com"] {
            let request = m.build(&inbound(&[]), &[token]).unwrap();
            assert_eq!(request.uri().authority().unwrap(), "localhost", "{token}");
        }
        assert!(m.build(&inbound(&[]), &[".."]).is_err());
    }

    #[test]
    fn message_content_type_wins_over_route_default() {
        let (m, _) = mapping("http://h:1", "content_type = \"application/json\"");
        let request = m
            .build(&inbound(&[("Content-Type", "text/plain")]), &["1"])
            .unwrap();
        assert_eq!(request.headers()["content-type"], "text/plain");
    }

    #[test]
    fn a_token_cannot_change_the_authority() {
        let (m, _) = mapping("http://127.0.0.1:8080", "");
        for token in ["@evil.com", "evil.com:80", "//evil.com", "http:%2F%2Fevil"] {
            let request = m.build(&inbound(&[]), &[token]).unwrap();
            assert_eq!(
                request.uri().authority().unwrap(),
                "127.0.0.1:8080",
                "{token}"
            );
            assert_eq!(request.uri().scheme_str(), Some("http"));
            assert!(request.uri().path().starts_with("/orders/"));
        }
        assert!(m.build(&inbound(&[]), &["..%2f"]).is_err());
    }
}
