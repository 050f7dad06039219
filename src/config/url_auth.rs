//! Credentials written into the user-info part of `nats.url` (`nats://user:pass@host`,
//! `nats://token@host`), taken out of the URL before it reaches the NATS client.
//!
//! Why: async-nats 0.52 ignores them (the server saw user "") and logs the URL, password
//! included, at debug level on every connection attempt. So the URL handed to the client
//! never carries credentials; they are given to it as options instead, the way the `nats`
//! CLI and nats.go read them: `user:password@` is a user and password, a user part alone
//! (`token@`) is a token. Both are percent-decoded.

use super::Secret;

/// What a URL's user-info says.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlAuth {
    UserPassword { user: String, password: Secret },
    Token(Secret),
}

/// Never the values: the kind only.
impl std::fmt::Debug for UrlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlAuth::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            UrlAuth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The server URLs of a list (separated by commas), without their credentials, and the one set
/// of credentials they carried. Servers that carry none use the same: the connection has one
/// identity. URLs carrying different credentials are refused, with a message that never
/// shows them.
pub fn split_credentials(list: &str) -> Result<(Vec<String>, Option<UrlAuth>), String> {
    let mut found: Option<UrlAuth> = None;
    let mut servers = Vec::new();
    for server in list.split(',') {
        let (bare, auth) = split_one(server.trim())?;
        servers.push(bare);
        match (&found, auth) {
            (_, None) => {}
            (None, Some(auth)) => found = Some(auth),
            (Some(first), Some(auth)) if *first == auth => {}
            (Some(_), Some(_)) => {
                return Err(
                    "its URLs carry different credentials; ricochet connects with one identity: write them once, or in nats.user/password or nats.token".into(),
                )
            }
        }
    }
    Ok((servers, found))
}

/// One URL without its user-info, and what that said.
fn split_one(url: &str) -> Result<(String, Option<UrlAuth>), String> {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Ok((url.to_string(), None));
    };
    let bare = format!("{scheme}{}", &rest[at + 1..]);
    let userinfo = &rest[..at];
    let auth = match userinfo.split_once(':') {
        Some((user, password)) => UrlAuth::UserPassword {
            user: decode(user)?,
            password: Secret::new(decode(password)?),
        },
        None if userinfo.is_empty() => return Ok((bare, None)),
        None => UrlAuth::Token(Secret::new(decode(userinfo)?)),
    };
    Ok((bare, Some(auth)))
}

fn decode(part: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "the credentials in the URL are not UTF-8 once percent-decoded".into())
}

/// Whether a URL has a user-info part (`user@`, `user:pass@`).
pub fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..authority_end].contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(user: &str, password: &str) -> Option<UrlAuth> {
        Some(UrlAuth::UserPassword {
            user: user.into(),
            password: Secret::new(password),
        })
    }

    #[test]
    fn user_and_password_or_token_come_out_of_the_url_as_nats_go_reads_them() {
        assert_eq!(
            split_credentials("nats://u:s3cret@host:4222").unwrap(),
            (vec!["nats://host:4222".into()], user("u", "s3cret"))
        );
        assert_eq!(
            split_credentials("tls://t0ken@host:4222").unwrap(),
            (
                vec!["tls://host:4222".into()],
                Some(UrlAuth::Token(Secret::new("t0ken")))
            )
        );
        // An empty password is still a password (nats.go: `u:@host`).
        assert_eq!(
            split_credentials("nats://u:@host").unwrap(),
            (vec!["nats://host".into()], user("u", ""))
        );
        // Percent-encoded characters are decoded; an '@' in the password is allowed encoded.
        assert_eq!(
            split_credentials("nats://u%40x:p%3Aw%40d@host:4222")
                .unwrap()
                .1,
            user("u@x", "p:w@d")
        );
        // Without a scheme, and a list where one URL names them.
        assert_eq!(
            split_credentials("u:p@h1:4222, nats://h2:4222").unwrap(),
            (
                vec!["h1:4222".into(), "nats://h2:4222".into()],
                user("u", "p")
            )
        );
        assert_eq!(
            split_credentials("nats://h1:4222").unwrap(),
            (vec!["nats://h1:4222".into()], None)
        );
    }

    #[test]
    fn urls_with_different_credentials_are_refused_without_showing_them() {
        let error = split_credentials("nats://u:pw1@h1:4222,nats://u:pw2@h2:4222").unwrap_err();
        assert!(!error.contains("pw1") && !error.contains("pw2"), "{error}");
        let same = split_credentials("nats://u:pw@h1:4222,nats://u:pw@h2:4222").unwrap();
        assert_eq!(
            same,
            (
                vec!["nats://h1:4222".into(), "nats://h2:4222".into()],
                user("u", "pw")
            )
        );
        assert!(!format!("{:?}", same.1).contains("pw"));
    }

    #[test]
    fn userinfo_is_found_only_in_the_authority() {
        assert!(has_userinfo("http://u:p@host/x"));
        assert!(has_userinfo("http://token@host"));
        assert!(!has_userinfo("http://host/a@b"));
        assert!(!has_userinfo("http://host:4318"));
    }
}
