//! Which headers cross between messages and HTTP.
//!
//! Never crossing, in either direction: hop-by-hop headers (`Connection` and those it names,
//! `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, every `Proxy-*`), `Host`,
//! `Content-Length`, the broker's own headers (`Nats-*`), ricochet's own (`Ricochet-*`),
//! which ricochet sets itself, and the forwarding headers (`Forwarded`, `X-Forwarded-*`):
//! a service behind its sidecar may trust those as a proxy's word, and no message comes
//! from an HTTP client whose address they could name. On top of that each route has an allow list
//! (empty = everything) and a deny list.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::MapError;
use crate::config::HeaderFilterConfig;

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Allow/deny lists of one direction of one route.
#[derive(Debug, Clone, Default)]
pub struct HeaderFilter {
    allow: Vec<HeaderName>,
    deny: Vec<HeaderName>,
}

impl HeaderFilter {
    /// Names were checked by config validation; an invalid one is skipped here.
    pub fn from_config(config: &HeaderFilterConfig) -> Self {
        let parse = |names: &[String]| {
            names
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        Self {
            allow: parse(&config.allow),
            deny: parse(&config.deny),
        }
    }

    fn permits(&self, name: &HeaderName) -> bool {
        (self.allow.is_empty() || self.allow.contains(name)) && !self.deny.contains(name)
    }

    /// Whether a message header of this name would reach the service (a name that is not a
    /// valid HTTP header name would, and be refused there).
    pub fn forwards(&self, name: &str) -> bool {
        !is_reserved(name)
            && HeaderName::from_bytes(name.as_bytes()).map_or(true, |n| self.permits(&n))
    }
}

/// Headers ricochet never forwards, whatever the route's lists say. Compared ignoring
/// ASCII case, without a lowercased copy.
fn is_reserved(name: &str) -> bool {
    let is = |word: &str| name.eq_ignore_ascii_case(word);
    let starts = |prefix: &str| {
        (name.as_bytes().get(..prefix.len()))
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    HOP_BY_HOP.iter().any(|hop| is(hop))
        || is("host")
        || is("content-length")
        || starts("proxy-")
        || starts("nats-")
        || starts("ricochet-")
        || is("forwarded")
        || starts("x-forwarded-")
}

/// Response header names common enough to be kept as static text in replies, not copied
/// into each reply (the same lowercase text as the service's `http::HeaderName`).
static COMMON: [(HeaderName, &str); 10] = [
    (header::CONTENT_TYPE, "content-type"),
    (header::DATE, "date"),
    (header::SERVER, "server"),
    (header::CACHE_CONTROL, "cache-control"),
    (header::ETAG, "etag"),
    (header::LAST_MODIFIED, "last-modified"),
    (header::CONTENT_ENCODING, "content-encoding"),
    (header::LOCATION, "location"),
    (header::VARY, "vary"),
    (header::EXPIRES, "expires"),
];

/// A response header's name as a reply header's: static text for the common ones.
fn reply_name(name: &HeaderName) -> crate::message::reply::HeaderName {
    match COMMON.iter().find(|(common, _)| common == name) {
        Some((_, text)) => crate::message::reply::HeaderName::Borrowed(*text),
        None => crate::message::reply::HeaderName::Owned(name.as_str().to_string()),
    }
}

/// Names listed in `Connection` headers: hop-by-hop for this one message.
fn connection_listed<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// Message headers -> HTTP request headers. A header that is not valid HTTP is an error
/// (the message gets a 400) rather than silently dropped: a name that is not a token, a
/// value with a control character other than tab (CR, LF, NUL, DEL).
pub fn to_http(headers: &[(String, String)], filter: &HeaderFilter) -> Result<HeaderMap, MapError> {
    let listed = connection_listed(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_reserved(name) || listed.iter().any(|l| name.eq_ignore_ascii_case(l)) {
            continue;
        }
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| MapError::Header(name.clone()))?;
        if !filter.permits(&header_name) {
            continue;
        }
        // Bytes, not `from_str`: text beyond ASCII (`café`) is carried as its UTF-8 bytes,
        // which HTTP allows in a value; control characters (CR, LF, NUL) are still refused.
        let header_value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| MapError::Header(name.clone()))?;
        out.append(header_name, header_value);
    }
    Ok(out)
}

/// HTTP response headers -> reply headers. Values are kept as the service sent their
/// bytes, obs-text (`café` in UTF-8, raw bytes 0x80-0xFF) included: Kafka and AMQP replies
/// carry them unchanged, and the NATS publisher drops, and names, what NATS cannot carry
/// (see `source::nats::publish`).
pub fn from_http(headers: &HeaderMap, filter: &HeaderFilter) -> crate::message::ReplyHeaders {
    let listed = connection_listed(
        headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
    );
    // Room for the headers ricochet adds (status, attempts, correlation id, error).
    let mut reply = crate::message::ReplyHeaders::with_capacity(headers.len() + 4);
    let kept = headers.iter().filter(|(name, _)| {
        !is_reserved(name.as_str())
            && !listed.iter().any(|l| l == name.as_str())
            && filter.permits(name)
    });
    for (name, value) in kept {
        reply.push((
            reply_name(name),
            bytes::Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reserved_headers_never_reach_http() {
        let headers = pairs(&[
            ("X-Request-Id", "abc"),
            ("Connection", "close, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "5"),
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("Proxy-Anything", "x"),
            ("Transfer-Encoding", "chunked"),
            ("Host", "evil.example"),
            ("Content-Length", "999"),
            ("Nats-Msg-Id", "m1"),
            ("Nats-Expected-Stream", "S"),
            ("Ricochet-Status", "200"),
            ("traceparent", "00-abc-def-01"),
            ("Accept", "a"),
            ("Accept", "b"),
        ]);
        let out = to_http(&headers, &HeaderFilter::default()).unwrap();
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-request-id", "traceparent", "accept"]);
        assert_eq!(out.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn allow_and_deny_lists_apply() {
        let headers = pairs(&[("X-A", "1"), ("X-B", "2"), ("X-C", "3")]);
        let filter = HeaderFilter::from_config(&HeaderFilterConfig {
            allow: vec!["x-a".into(), "X-B".into()],
            deny: vec!["x-b".into()],
        });
        let out = to_http(&headers, &filter).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out["x-a"], "1");
    }

    #[test]
    fn invalid_http_headers_are_an_error() {
        let err = to_http(&pairs(&[("Bad Name", "x")]), &HeaderFilter::default()).unwrap_err();
        assert!(matches!(err, MapError::Header(n) if n == "Bad Name"));
        let err =
            to_http(&pairs(&[("X-Ok", "line\nbreak")]), &HeaderFilter::default()).unwrap_err();
        assert!(matches!(err, MapError::Header(_)));
    }

    #[test]
    fn response_headers_drop_reserved_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("2"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("nats-msg-id", HeaderValue::from_static("spoof"));
        headers.insert("x-trace", HeaderValue::from_static("t"));
        let out = from_http(&headers, &HeaderFilter::default());
        let out: Vec<(&str, &[u8])> = out.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        assert_eq!(
            out,
            [
                ("content-type", &b"application/json"[..]),
                ("x-trace", &b"t"[..])
            ]
        );
    }

    #[test]
    fn common_response_header_names_keep_their_text() {
        for (name, text) in &COMMON {
            assert_eq!(name.as_str(), *text);
            assert_eq!(reply_name(name), *text);
        }
        let custom = HeaderName::from_static("x-order");
        assert_eq!(reply_name(&custom), "x-order");
    }

    #[test]
    fn reserved_names_match_in_any_case_and_only_whole_or_as_prefixes() {
        for name in [
            "HOST",
            "Content-Length",
            "proxy-x",
            "NATS-MSG-ID",
            "Ricochet-Status",
            "X-Forwarded-For",
            "Forwarded",
            "te",
            "Upgrade",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in [
            "hosts",
            "content-lengthy",
            "proxy",
            "nats",
            "x-forwarded",
            "tea",
            "é-nats-",
        ] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn response_header_values_keep_their_bytes_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert("x-name", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        headers.insert("x-binary", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        headers.append("x-name", HeaderValue::from_static("second"));
        let out = from_http(&headers, &HeaderFilter::default());
        let out: Vec<(&str, &[u8])> = out.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        assert_eq!(
            out,
            [
                ("x-name", &b"caf\xc3\xa9"[..]),
                ("x-name", &b"second"[..]),
                ("x-binary", &b"\xff\xfe"[..]),
            ]
        );
    }
}
