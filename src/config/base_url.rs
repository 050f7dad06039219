//! `upstream.base_url`, read once: where the service listens, and the path every request to
//! it starts with. Two forms:
//!
//! - `http://host:port[/base/path]` or `https://...`: a service reached over TCP.
//! - `unix:///run/service.sock[:/base/path]`: a service on a Unix domain socket, for a
//!   sidecar that shares a volume with its service in the pod. The socket path is absolute
//!   and taken as written (not percent-decoded); it ends at the first `:`, after which comes
//!   the base path, as in nginx's `proxy_pass http://unix:/run/service.sock:/api`. Requests
//!   over the socket are plain HTTP/1.1 with `Host: localhost`, as
//!   `curl --unix-socket /run/service.sock http://localhost/api/...` sends them.
//!
//! Parsing is pure (no file system): validation (`validate.rs`) reports its errors with the
//! key and also looks at the socket file; the request mapping (`mapping/request.rs`) takes
//! the scheme, authority and base path of every request from [`BaseUrl::request_base`]; the
//! HTTP client (`invoke/client.rs`) takes where to connect.

use std::path::PathBuf;

use http::uri::PathAndQuery;
use http::Uri;

/// The longest socket path a Unix socket address holds on Linux (`sun_path` is 108 bytes,
/// one of them the terminating NUL): a longer one could never be connected to.
pub const SOCKET_PATH_MAX: usize = 107;

/// The `Host` header of requests over a Unix socket (the socket, not a name, says where
/// they go; services that look at `Host` get what curl and Docker clients send).
pub const SOCKET_HOST: &str = "localhost";

/// A valid `upstream.base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseUrl {
    /// `http://` or `https://`, as written (its host is resolved at each connect).
    Tcp(Uri),
    /// `unix://`.
    Unix {
        socket: PathBuf,
        /// What follows the socket path's `:`, e.g. `/api`; empty when there is none.
        base_path: String,
    },
}

/// Why a `base_url` cannot be used. Each text starts with the URL as written (credentials
/// shown as `***`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    #[error("{shown:?} is not a URL: {reason}")]
    NotAUrl { shown: String, reason: String },
    #[error("{0:?}: credentials in the URL are not sent (ricochet sends no HTTP Basic auth from a URL); remove them")]
    Credentials(String),
    #[error("{0:?} must start with http://, https:// or unix://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must not have a query; put it in the route's path")]
    Query(String),
    #[error(
        "{0:?}: a socket is written unix:// and its absolute path, as in unix:///run/service.sock"
    )]
    SocketForm(String),
    #[error("{shown:?}: the socket path is {length} bytes long; a Unix socket address holds at most {SOCKET_PATH_MAX}")]
    SocketPathTooLong { shown: String, length: usize },
    #[error("{0:?}: ':' after the socket path starts the base path, which begins with '/', as in unix:///run/service.sock:/api")]
    BasePath(String),
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, BaseUrlError> {
        match url.get(..5) {
            Some(scheme) if scheme.eq_ignore_ascii_case("unix:") => parse_unix(url),
            _ => parse_tcp(url).map(BaseUrl::Tcp),
        }
    }

    /// Scheme, authority and base path of every request: the URL itself over TCP,
    /// `http://localhost<base_path>` over a socket.
    pub fn request_base(&self) -> Uri {
        match self {
            BaseUrl::Tcp(uri) => uri.clone(),
            BaseUrl::Unix { base_path, .. } => {
                let path = if base_path.is_empty() { "/" } else { base_path };
                Uri::builder()
                    .scheme("http")
                    .authority(SOCKET_HOST)
                    .path_and_query(path)
                    .build()
                    // `parse` checked the base path as a URI path.
                    .unwrap_or_default()
            }
        }
    }
}

fn parse_tcp(url: &str) -> Result<Uri, BaseUrlError> {
    let shown = || super::redact_url(url);
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| BaseUrlError::NotAUrl {
            shown: shown(),
            reason: e.to_string(),
        })?;
    if super::has_userinfo(url) {
        return Err(BaseUrlError::Credentials(shown()));
    }
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(BaseUrlError::Scheme(shown()));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(BaseUrlError::NoHost(shown()));
    }
    if uri.query().is_some() {
        return Err(BaseUrlError::Query(shown()));
    }
    Ok(uri)
}

/// `unix://` + an absolute path + optionally `:` and a base path.
fn parse_unix(url: &str) -> Result<BaseUrl, BaseUrlError> {
    // No credentials can be written in this form: the text is shown as it is.
    let shown = || url.to_string();
    let Some(rest) = url[5..].strip_prefix("//").filter(|r| r.starts_with('/')) else {
        return Err(BaseUrlError::SocketForm(shown()));
    };
    if rest.contains('?') {
        return Err(BaseUrlError::Query(shown()));
    }
    if let Some(c) = rest.chars().find(|c| c.is_control() || *c == '#') {
        return Err(BaseUrlError::NotAUrl {
            shown: shown(),
            reason: format!("{c:?} has no place in a socket URL"),
        });
    }
    let (socket, base_path) = rest.split_once(':').unwrap_or((rest, ""));
    if socket.len() > SOCKET_PATH_MAX {
        return Err(BaseUrlError::SocketPathTooLong {
            shown: shown(),
            length: socket.len(),
        });
    }
    if !(base_path.is_empty() || base_path.starts_with('/')) {
        return Err(BaseUrlError::BasePath(shown()));
    }
    // The base path is a URI path like that of an http:// base URL (percent-encoded).
    if !base_path.is_empty() {
        PathAndQuery::try_from(base_path).map_err(|e| BaseUrlError::NotAUrl {
            shown: shown(),
            reason: e.to_string(),
        })?;
    }
    Ok(BaseUrl::Unix {
        socket: PathBuf::from(socket),
        base_path: base_path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(socket: &str, base_path: &str) -> BaseUrl {
        BaseUrl::Unix {
            socket: socket.into(),
            base_path: base_path.into(),
        }
    }

    #[test]
    fn a_socket_url_names_an_absolute_path_and_after_a_colon_a_base_path() {
        let cases = [
            ("unix:///run/svc.sock", unix("/run/svc.sock", "")),
            ("UNIX:///run/svc.sock", unix("/run/svc.sock", "")),
            ("unix:///run/svc.sock:/api", unix("/run/svc.sock", "/api")),
            (
                "unix:///run/svc.sock:/api/v1/",
                unix("/run/svc.sock", "/api/v1/"),
            ),
            // nginx's form ends the socket path with ':' even without a base path.
            ("unix:///run/svc.sock:", unix("/run/svc.sock", "")),
            ("unix:///tmp/a b/%41.sock", unix("/tmp/a b/%41.sock", "")),
        ];
        for (url, expected) in cases {
            assert_eq!(BaseUrl::parse(url), Ok(expected), "{url}");
        }
    }

    #[test]
    fn requests_over_a_socket_are_http_to_localhost_under_the_base_path() {
        let base = |url: &str| BaseUrl::parse(url).unwrap().request_base();
        assert_eq!(base("unix:///run/svc.sock"), "http://localhost/");
        assert_eq!(base("unix:///run/svc.sock:/api/"), "http://localhost/api/");
        assert_eq!(base("https://h:8443/x"), "https://h:8443/x");
    }

    #[test]
    fn malformed_socket_urls_are_refused_with_what_to_write() {
        let long = format!("unix:///{}", "s".repeat(SOCKET_PATH_MAX));
        let cases = [
            (
                "unix://run/svc.sock",
                "a socket is written unix:// and its absolute path",
            ),
            ("unix:/run/svc.sock", "a socket is written unix://"),
            ("unix:run.sock", "a socket is written unix://"),
            ("unix://", "a socket is written unix://"),
            ("unix:///run/svc.sock:api", "which begins with '/'"),
            ("unix:///run/svc.sock:/api?x=1", "must not have a query"),
            ("unix:///run/svc.sock#x", "'#' has no place"),
            ("unix:///run/s\u{0}.sock", "has no place"),
            ("unix:///run/svc.sock:/a b", "is not a URL"),
            (
                long.as_str(),
                "the socket path is 108 bytes long; a Unix socket address holds at most 107",
            ),
        ];
        for (url, expected) in cases {
            let text = BaseUrl::parse(url).unwrap_err().to_string();
            assert!(text.contains(expected), "{url}: {text}");
        }
        let longest = format!("unix:///{}", "s".repeat(SOCKET_PATH_MAX - 1));
        assert!(BaseUrl::parse(&longest).is_ok());
    }

    #[test]
    fn tcp_urls_are_checked_as_before() {
        let text = |url: &str| BaseUrl::parse(url).unwrap_err().to_string();
        assert_eq!(
            text("ftp://h"),
            "\"ftp://h\" must start with http://, https:// or unix://"
        );
        assert!(text("http://u:secret@h").starts_with("\"http://***@h\": credentials"));
        assert!(text("http://h/?q=1").contains("must not have a query"));
        assert!(BaseUrl::parse("http://127.0.0.1:8080/api").is_ok());
    }
}
