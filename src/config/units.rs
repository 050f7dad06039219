//! Small value types of the configuration: sizes with units and secrets that never print.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes, written as an integer (`1048576`) or with a unit (`"512KiB"`, `"1MiB"`,
/// `"2MB"`). Binary units are powers of 1024, decimal units powers of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!("invalid size {text:?}: expected e.g. 65536, \"64KiB\" or \"1MiB\"")
        })?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {text:?}: use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, e.g. 65536 or \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A list of human durations: `["1s", "5s", "30s"]`.
pub fn duration_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<std::time::Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<std::time::Duration>> = Vec::deserialize(deserializer)?;
    Ok(list.into_iter().map(|d| d.into_inner()).collect())
}

/// Writes a list of durations the way [`duration_list`] reads them.
pub fn serialize_duration_list<S: Serializer>(
    list: &[std::time::Duration],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text: Vec<String> = (list.iter())
        .map(|d| humantime::format_duration(*d).to_string())
        .collect();
    text.serialize(serializer)
}

/// A URL fit for logs and errors: any `user:password@` is replaced by `***@`; in a list
/// of URLs separated by commas (`nats.url`), in each of them.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_one).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A password or token. It prints as `***` in every `Debug` and `Display`, so it cannot
/// reach a log line or an error message by accident; `expose` is the one way to read it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serialized (by `ricochet check --print`) as its redaction, never its value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(ByteSize::parse("1024").unwrap(), ByteSize(1024));
        assert_eq!(ByteSize::parse("64KiB").unwrap(), ByteSize(65536));
        assert_eq!(ByteSize::parse("1 MiB").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("2mb").unwrap(), ByteSize(2_000_000));
        assert!(ByteSize::parse("12 parsecs").unwrap_err().contains("unit"));
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("nats://user:pw@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(redact_url("tls://token@h:1/x@y"), "tls://***@h:1/x@y");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        assert_eq!(redact_url("u:p@host"), "***@host");
        assert_eq!(
            redact_url("nats://a:pw1@h1:4222, nats://b:pw2@h2:4222"),
            "nats://***@h1:4222, nats://***@h2:4222"
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
