//! Redaction for `ricochet check --print` (`settings::Settings::printable`): the effective
//! configuration (file, environment overrides and defaults, as ricochet will run it) as
//! TOML, with every secret redacted.
//!
//! [`Secret`](super::Secret)s serialize as `***` already; on top of that, credentials in
//! URLs are cut out ([`redact_url`](super::redact_url)) and so are the values of free-form
//! properties whose name says they are secret (`"sasl.password"` among a route's
//! `[routes.kafka.consumer]` properties).

use toml::Value;

/// Words in a property name that mark its value as secret.
const SECRET_WORDS: [&str; 6] = ["password", "secret", "token", "jaas", "seed", "credential"];

/// Redacts, in place, every secret a printed configuration would show.
pub fn redact(value: &mut Value) {
    match value {
        // URLs only: a user name like `svc@example.com` is not a credential.
        Value::String(text) if text.contains("://") => *text = super::redact_url(text),
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                if is_secret_name(key) && !matches!(value, Value::Table(_) | Value::Array(_)) {
                    *value = Value::String("***".into());
                } else {
                    redact(value);
                }
            }
        }
        _ => {}
    }
}

/// Paths to secret files (`password_file`, `ssl.key.location`) are not secret themselves.
fn is_secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.ends_with("_file")
        && !key.ends_with(".location")
        && SECRET_WORDS.iter().any(|word| key.contains(word))
}
