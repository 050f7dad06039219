//! The security keys of `[routes.kafka]` (`security_protocol`, `ssl_*`, `sasl_*`): their
//! cross-field checks and the librdkafka properties they become, for the consumer and the
//! reply producer alike. The password is read from its file when a client is made, never
//! printed.

use serde::{Deserialize, Serialize};

use super::config::KafkaConfig;
use crate::config::{check_file, read_secret_file, SecretFileError};

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The security keys of `[routes.kafka]`, for its consumer and its reply producer alike.
impl KafkaConfig {
    /// The librdkafka properties of these settings; the password is read from its file
    /// here. The result holds a secret: never log it.
    pub fn properties(&self) -> Result<Vec<(&'static str, String)>, SecretFileError> {
        let protocol = self.security_protocol;
        let mut properties = vec![("security.protocol", protocol.as_str().to_string())];
        if protocol.tls() {
            let verify = if self.ssl_hostname_verification {
                "https"
            } else {
                "none"
            };
            properties.push(("ssl.endpoint.identification.algorithm", verify.into()));
            let files = [
                ("ssl.ca.location", &self.ssl_ca_file),
                ("ssl.certificate.location", &self.ssl_cert_file),
                ("ssl.key.location", &self.ssl_key_file),
            ];
            for (name, file) in files {
                if let Some(path) = file {
                    properties.push((name, path.display().to_string()));
                }
            }
        }
        if protocol.sasl() {
            let mechanism = self.sasl_mechanism.unwrap_or(SaslMechanism::Plain);
            properties.push(("sasl.mechanism", mechanism.as_str().into()));
            if let Some(user) = &self.sasl_username {
                properties.push(("sasl.username", user.clone()));
            }
            let password = match (&self.sasl_password, &self.sasl_password_file) {
                (Some(password), _) => Some(password.clone()),
                (None, Some(path)) => Some(read_secret_file("sasl_password_file", path)?),
                (None, None) => None,
            };
            if let Some(password) = password {
                properties.push(("sasl.password", password.expose().to_string()));
            }
        }
        Ok(properties)
    }

    /// Cross-field checks; keys relative to the route (`kafka.sasl_username`).
    pub fn check_security(&self, push: &mut dyn FnMut(&str, String)) {
        let protocol = self.security_protocol;
        if !protocol.tls() {
            for (key, set) in [
                ("kafka.ssl_ca_file", self.ssl_ca_file.is_some()),
                ("kafka.ssl_cert_file", self.ssl_cert_file.is_some()),
                ("kafka.ssl_key_file", self.ssl_key_file.is_some()),
            ] {
                if set {
                    push(
                        key,
                        format!(
                            "needs security_protocol = \"ssl\" or \"sasl_ssl\" (it is {:?})",
                            protocol.as_str()
                        ),
                    );
                }
            }
        }
        if self.ssl_cert_file.is_some() != self.ssl_key_file.is_some() {
            push(
                "kafka.ssl_cert_file",
                "a client certificate needs its key: set both ssl_cert_file and ssl_key_file"
                    .into(),
            );
        }
        for (key, file) in [
            ("kafka.ssl_ca_file", &self.ssl_ca_file),
            ("kafka.ssl_cert_file", &self.ssl_cert_file),
            ("kafka.ssl_key_file", &self.ssl_key_file),
            ("kafka.sasl_password_file", &self.sasl_password_file),
        ] {
            check_file(&mut *push, key, file);
        }
        let has_password = self.sasl_password.is_some() || self.sasl_password_file.is_some();
        if protocol.sasl() {
            if self.sasl_username.is_none() {
                push("kafka.sasl_username", "required with SASL".into());
            }
            if !has_password {
                push(
                    "kafka.sasl_password",
                    "required with SASL (or sasl_password_file)".into(),
                );
            }
        } else {
            for (key, set) in [
                ("kafka.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("kafka.sasl_username", self.sasl_username.is_some()),
                ("kafka.sasl_password", has_password),
            ] {
                if set {
                    push(
                        key,
                        format!(
                            "needs security_protocol = \"sasl_plaintext\" or \"sasl_ssl\" (it is {:?})",
                            protocol.as_str()
                        ),
                    );
                }
            }
        }
        if self.sasl_password.is_some() && self.sasl_password_file.is_some() {
            push(
                "kafka.sasl_password_file",
                "use either sasl_password or sasl_password_file".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(toml: &str) -> KafkaConfig {
        toml::from_str(&format!("brokers = \"h:9092\"\n{toml}")).unwrap()
    }

    #[test]
    fn plaintext_sets_only_the_protocol() {
        let properties = kafka("").properties().unwrap();
        assert_eq!(
            properties,
            vec![("security.protocol", "plaintext".to_string())]
        );
    }

    #[test]
    fn sasl_ssl_maps_onto_librdkafka_properties() {
        let security = kafka(
            "security_protocol = \"sasl_ssl\"\nssl_ca_file = \"/ca.pem\"\nssl_cert_file = \"/c.pem\"\nssl_key_file = \"/k.pem\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"svc\"\nsasl_password = \"hunter2\"\n",
        );
        let properties = security.properties().unwrap();
        for expected in [
            ("security.protocol", "sasl_ssl"),
            ("ssl.endpoint.identification.algorithm", "https"),
            ("ssl.ca.location", "/ca.pem"),
            ("ssl.certificate.location", "/c.pem"),
            ("ssl.key.location", "/k.pem"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("sasl.password", "hunter2"),
        ] {
            assert!(
                properties.contains(&(expected.0, expected.1.to_string())),
                "{expected:?} missing"
            );
        }
        assert!(!format!("{security:?}").contains("hunter2"));
    }

    #[test]
    fn the_password_comes_from_its_file_and_hostname_verification_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let security = kafka(&format!(
            "security_protocol = \"sasl_ssl\"\nssl_hostname_verification = false\nsasl_username = \"svc\"\nsasl_password_file = {:?}\n",
            file.display().to_string()
        ));
        let properties = security.properties().unwrap();
        assert!(properties.contains(&("sasl.password", "from-file".into())));
        assert!(properties.contains(&("sasl.mechanism", "PLAIN".into())));
        assert!(properties.contains(&("ssl.endpoint.identification.algorithm", "none".into())));
    }

    /// librdkafka checks the properties when a client is made, and loads the CA, the client
    /// certificate and its key then: what ricochet sets is what librdkafka takes.
    #[test]
    fn librdkafka_takes_every_protocol_and_mechanism_and_loads_the_files() {
        use rdkafka::producer::BaseProducer;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_file = write("ca.pem", &ca.pem());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ricochet".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = write("cert.pem", &cert.pem());
        let key_file = write("key.pem", &key.serialize_pem());
        let make = |toml: &str| {
            let properties = kafka(toml).properties().unwrap();
            let mut client = rdkafka::ClientConfig::new();
            client.set("bootstrap.servers", "127.0.0.1:1");
            for (name, value) in properties {
                client.set(name, value);
            }
            client.create::<BaseProducer>().map(|_| ())
        };
        let tls = format!("ssl_ca_file = {ca_file:?}\nssl_cert_file = {cert_file:?}\nssl_key_file = {key_file:?}\n");
        make("").expect("plaintext");
        make(&format!("security_protocol = \"ssl\"\n{tls}")).expect("ssl with files");
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let sasl = format!(
                "sasl_mechanism = \"{mechanism}\"\nsasl_username = \"u\"\nsasl_password = \"p\"\n"
            );
            make(&format!("security_protocol = \"sasl_plaintext\"\n{sasl}")).expect(mechanism);
            make(&format!("security_protocol = \"sasl_ssl\"\n{tls}{sasl}")).expect(mechanism);
        }
        // A CA file that is no certificate fails when the client is made, not later.
        let junk = write("junk.pem", "not a certificate");
        let error = make(&format!(
            "security_protocol = \"ssl\"\nssl_ca_file = {junk:?}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.to_lowercase().contains("ca"), "{error}");
    }

    #[test]
    fn inconsistent_settings_are_reported_with_their_keys() {
        let check = |toml: &str| {
            let mut errors: Vec<(String, String)> = Vec::new();
            kafka(toml).check_security(&mut |key: &str, message: String| {
                errors.push((format!("routes[0].{key}"), message))
            });
            errors
        };
        let errors =
            check("security_protocol = \"sasl_plaintext\"\nssl_ca_file = \"/nowhere/ca.pem\"\n");
        let keys: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
        for expected in [
            "routes[0].kafka.ssl_ca_file",
            "routes[0].kafka.sasl_username",
            "routes[0].kafka.sasl_password",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let errors = check("sasl_username = \"u\"\nsasl_password = \"hunter2\"\n");
        let shown = format!("{errors:?}");
        assert!(shown.contains("routes[0].kafka.sasl_password") && !shown.contains("hunter2"));
    }
}
