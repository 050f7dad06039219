//! `ricochet check --print`: the effective configuration (file, environment overrides and
//! defaults, as ricochet will run it) as TOML, with every secret redacted.
//!
//! [`Secret`](super::Secret)s serialize as `***` already; on top of that, credentials in
//! URLs are cut out ([`redact_url`](super::redact_url)) and so are the values of free-form
//! properties whose name says they are secret (`"sasl.password"` among a route's
//! `[routes.kafka.consumer]` properties).

use toml::Value;

use super::Config;

/// Words in a property name that mark its value as secret.
const SECRET_WORDS: [&str; 6] = ["password", "secret", "token", "jaas", "seed", "credential"];

/// The configuration as TOML, secrets redacted.
pub fn printable(config: &Config) -> Result<String, toml::ser::Error> {
    let mut value = Value::try_from(config)?;
    redact(&mut value);
    toml::to_string(&value)
}

fn redact(value: &mut Value) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn credentials_in_nats_url_print_redacted() {
        let text = "[nats]\nurl = \"nats://svc:hunter1@127.0.0.1:4222\"\n[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/s\"\n";
        let printed = printable(&load_str(text, Vec::new()).unwrap()).unwrap();
        assert!(!printed.contains("hunter1"), "{printed}");
        assert!(printed.contains("nats://***@127.0.0.1:4222"), "{printed}");
    }

    #[test]
    fn the_effective_configuration_prints_without_secrets() {
        let text = "[nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"svc\"\npassword = \"hunter2\"\n[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"requests\"\npath = \"/k\"\n[routes.kafka]\nbrokers = \"127.0.0.1:9092\"\nreply_topic = \"replies\"\nsecurity_protocol = \"sasl_plaintext\"\nsasl_username = \"svc\"\n[routes.kafka.producer]\n\"sasl.jaas.config\" = \"hunter4\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"orders\"\npath = \"/o\"\n[routes.amqp]\nurl = \"amqp://guest:hunter5@127.0.0.1:5672/%2f\"\n";
        let env = vec![
            (
                "RICOCHET__ROUTES__0__KAFKA__SASL_PASSWORD".to_string(),
                "hunter3".to_string(),
            ),
            (
                "RICOCHET__UPSTREAM__REQUEST_TIMEOUT".to_string(),
                "250ms".to_string(),
            ),
        ];
        let config = load_str(text, env).unwrap();
        let printed = printable(&config).unwrap();
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!printed.contains(secret), "{secret} in\n{printed}");
        }
        // Overrides and defaults are there, and the output reads back as TOML.
        assert!(printed.contains("request_timeout = \"250ms\""), "{printed}");
        assert!(printed.contains("queue_group = \"ricochet\""), "{printed}");
        assert!(printed.contains("amqp://***@127.0.0.1:5672"), "{printed}");
        assert!(printed.contains("sasl_username = \"svc\""), "{printed}");
        printed.parse::<toml::Table>().expect("valid TOML");
    }
}
