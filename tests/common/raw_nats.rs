//! A NATS publisher that writes protocol bytes as they are: what a client library would
//! clean before the wire, a hostile publisher can still send.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::nats_url;

/// A publisher that writes protocol bytes as they are.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    pub async fn connect() -> Self {
        let url = nats_url();
        let address = url.trim_start_matches("nats://").to_string();
        let mut stream = TcpStream::connect(&address).await.expect("NATS reachable");
        let mut raw = Self {
            stream: {
                let connect = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n";
                stream.write_all(connect).await.unwrap();
                stream
            },
        };
        let said = raw.send(b"").await;
        assert!(said.starts_with("INFO "), "{said}");
        raw
    }

    /// Writes `bytes`, then a PING; returns what the server said up to its PONG (or, when it
    /// closed the connection, up to that).
    pub async fn send(&mut self, bytes: &[u8]) -> String {
        let mut out = bytes.to_vec();
        out.extend_from_slice(b"PING\r\n");
        if self.stream.write_all(&out).await.is_err() {
            return "closed".into();
        }
        let mut said = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf));
            let read = read.await.unwrap_or_else(|_| {
                panic!(
                    "no PONG within 10 s; read: {:?}",
                    String::from_utf8_lossy(&said)
                )
            });
            match read {
                Ok(0) | Err(_) => return format!("{}closed", String::from_utf8_lossy(&said)),
                Ok(n) => said.extend_from_slice(&buf[..n]),
            }
            // The server may send an INFO of its own after the PONG.
            if said.windows(6).any(|w| w == b"PONG\r\n") {
                return String::from_utf8_lossy(&said).into_owned();
            }
        }
    }
}

pub fn hpub(subject: &[u8], reply: &str, headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = b"HPUB ".to_vec();
    out.extend_from_slice(subject);
    out.extend_from_slice(
        format!(
            " {reply} {} {}\r\n",
            headers.len(),
            headers.len() + payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}
