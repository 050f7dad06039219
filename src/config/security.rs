//! Security settings shared by the connections ricochet opens: TLS files and credentials
//! for NATS (`[nats]`, `[nats.tls]`), the upstream (`[upstream.tls]`), the TLS table type a
//! source may reuse (`[routes.amqp.tls]`), secret files, and the checks of files and TLS
//! tables every source's checks call. Kafka's own security keys are in
//! `source/kafka/security.rs`.
//!
//! Secrets are [`Secret`]s or `*_file` paths; a file is read when the connection is made,
//! never printed. The sources and the invoker turn these settings into their client's
//! options (`source/nats`, `invoke/tls.rs`, `KafkaConfig::properties`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Secret;

/// `[nats.tls]`: TLS to the NATS server. A `tls://` URL or any key here turns TLS on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// PEM file of the CA(s) that sign the server's certificate; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Start TLS before the server's INFO (a server with `handshake_first`).
    #[serde(default)]
    pub first: bool,
}

impl NatsTlsConfig {
    pub fn enabled(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.first
    }
}

/// `[upstream.tls]` (for an `https` base URL) and `[routes.amqp.tls]` (for `amqps://`):
/// the server's certificate must name the URL's host, which is also the SNI.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFilesConfig {
    /// PEM file of the CA(s) that sign the server's certificate; default: the system's
    /// roots (AMQP: in addition to them).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for a server that asks for one; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A secret that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {key} {path}: {source}")]
pub struct SecretFileError {
    key: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// Reads a secret from a file, without its trailing newline.
pub fn read_secret_file(key: &'static str, path: &Path) -> Result<Secret, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

/// A path key whose file must exist.
pub fn check_file(push: &mut dyn FnMut(&str, String), key: &str, file: &Option<PathBuf>) {
    if let Some(path) = file {
        if !path.is_file() {
            push(key, format!("{} is not a readable file", path.display()));
        }
    }
}

/// `[nats.tls]` and the NATS credentials beyond user/password/token.
pub(super) fn check_nats(nats: &super::NatsConfig, push: &mut impl FnMut(&str, String)) {
    let tls = &nats.tls;
    check_tls_files(
        "nats.tls",
        &tls.ca_file,
        &tls.cert_file,
        &tls.key_file,
        push,
    );
    for (key, file) in [
        ("nats.password_file", &nats.password_file),
        ("nats.token_file", &nats.token_file),
        ("nats.nkey_seed_file", &nats.nkey_seed_file),
    ] {
        check_file(push, key, file);
    }
    let pairs = [
        (
            "nats.password",
            nats.password.is_some(),
            nats.password_file.is_some(),
        ),
        (
            "nats.token",
            nats.token.is_some(),
            nats.token_file.is_some(),
        ),
        (
            "nats.nkey_seed",
            nats.nkey_seed.is_some(),
            nats.nkey_seed_file.is_some(),
        ),
    ];
    for (key, value, file) in pairs {
        if value && file {
            push(
                &format!("{key}_file"),
                format!("use either {key} or {key}_file"),
            );
        }
    }
    let methods = [
        nats.user.is_some(),
        nats.token.is_some() || nats.token_file.is_some(),
        nats.nkey_seed.is_some() || nats.nkey_seed_file.is_some(),
        nats.creds_file.is_some(),
    ];
    if methods.iter().filter(|set| **set).count() > 1 {
        push(
            "nats",
            "use one way to authenticate: user/password, token, nkey_seed or creds_file".into(),
        );
    }
    if let Some(seed) = &nats.nkey_seed {
        // The parser's message is not shown: it may quote the seed.
        if nkeys::KeyPair::from_seed(seed.expose()).is_err() {
            push(
                "nats.nkey_seed",
                "not a valid NKey seed (it starts with \"SU\"; not shown: it is a secret)".into(),
            );
        }
    }
}

/// A TLS table's files (under key `prefix`): a client certificate comes with its key, and
/// every file named exists.
pub fn check_tls_files(
    prefix: &str,
    ca_file: &Option<PathBuf>,
    cert_file: &Option<PathBuf>,
    key_file: &Option<PathBuf>,
    push: &mut dyn FnMut(&str, String),
) {
    if cert_file.is_some() != key_file.is_some() {
        push(
            &format!("{prefix}.cert_file"),
            "a client certificate needs its key: set both cert_file and key_file".into(),
        );
    }
    for (name, file) in [
        ("ca_file", ca_file),
        ("cert_file", cert_file),
        ("key_file", key_file),
    ] {
        check_file(&mut *push, &format!("{prefix}.{name}"), file);
    }
}

impl TlsFilesConfig {
    /// The table at `prefix` against its URL: any of its settings needs `url` to start
    /// with `scheme` (said as `url_key`), and its files must be readable, a certificate
    /// with its key.
    pub fn check(
        &self,
        prefix: &str,
        (url, url_key, scheme): (&str, &str, &str),
        push: &mut dyn FnMut(&str, String),
    ) {
        let set = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if set && !url.starts_with(scheme) {
            push(prefix, format!("TLS settings need an {scheme} {url_key}"));
        }
        check_tls_files(prefix, &self.ca_file, &self.cert_file, &self.key_file, push);
    }
}

/// `[upstream.tls]` against the base URL's scheme.
pub(super) fn check_upstream(
    upstream: &super::UpstreamConfig,
    push: &mut impl FnMut(&str, String),
) {
    let url = (upstream.base_url.as_str(), "base_url", "https://");
    upstream.tls.check("upstream.tls", url, push);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_tls_table_names_its_own_keys() {
        let upstream: crate::config::UpstreamConfig = toml::from_str(
            "base_url = \"https://h:1\"\n[tls]\nca_file = \"/nowhere/ca.pem\"\nkey_file = \"/nowhere/k.pem\"\n",
        )
        .unwrap();
        let mut keys = Vec::new();
        super::check_upstream(&upstream, &mut |key: &str, _| keys.push(key.to_string()));
        assert_eq!(
            keys,
            [
                "upstream.tls.cert_file",
                "upstream.tls.ca_file",
                "upstream.tls.key_file"
            ],
            "a key without its certificate, and two files that do not exist"
        );
        let nats: crate::config::NatsConfig =
            toml::from_str("[tls]\ncert_file = \"/nowhere/c.pem\"\n").unwrap();
        let mut keys = Vec::new();
        super::check_nats(&nats, &mut |key: &str, _| keys.push(key.to_string()));
        assert_eq!(keys, ["nats.tls.cert_file", "nats.tls.cert_file"]);
    }
}
