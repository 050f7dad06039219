//! A fault-injecting TCP proxy between ricochet and a service: it forwards bytes both ways
//! and, when told, delays them, throttles them to a slow bandwidth, resets connections,
//! swallows them (black hole), refuses connections, or lets a response's headers through
//! and stalls its body. A fault applies to
//! connections already open as well as new ones.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass unchanged.
    None,
    /// Every chunk from the service is held `base` plus up to `jitter`.
    Latency { base: Duration, jitter: Duration },
    /// Bytes pass both ways at this many bytes per second.
    SlowBandwidth { bytes_per_second: u32 },
    /// Every connection is reset (RST) as soon as bytes flow on it.
    Reset,
    /// Connections are accepted and kept, and nothing comes back.
    BlackHole,
    /// Nothing listens: connecting fails with "connection refused".
    Refuse,
    /// A response's status line and headers pass, then its body stalls.
    StallBody,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// A xorshift state for the jitter.
    seed: Arc<Mutex<u64>>,
}

impl FaultProxy {
    /// A proxy on a free port in front of `target`, passing bytes unchanged.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, watching) = watch::channel(Fault::None);
        let seed = Arc::new(Mutex::new(0x9e37_79b9_7f4a_7c15));
        let seeds = seed.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut changes = watching.clone();
            loop {
                let refusing = *changes.borrow_and_update() == Fault::Refuse;
                if refusing {
                    // Closing the listening socket makes the kernel refuse connections.
                    listener = None;
                    if changes.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let bound = match listener.take() {
                    Some(bound) => bound,
                    None => match TcpListener::bind(addr).await {
                        Ok(bound) => bound,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                tokio::select! {
                    accepted = bound.accept() => {
                        listener = Some(bound);
                        if let Ok((client, _)) = accepted {
                            tokio::spawn(pipe(client, target, watching.clone(), seeds.clone()));
                        }
                    }
                    changed = changes.changed() => {
                        listener = Some(bound);
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { addr, fault, seed }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        let _ = self.fault.send(fault);
        *self.seed.lock().unwrap() |= 1;
    }
}

fn jitter(seed: &Mutex<u64>, span: Duration) -> Duration {
    let mut state = seed.lock().unwrap();
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let span = span.as_micros() as u64;
    Duration::from_micros(if span == 0 { 0 } else { *state % span })
}

// SO_LINGER 0: closing sends RST instead of FIN, and never blocks (the deprecation is about
// a non-zero linger blocking the thread on drop).
#[allow(deprecated)]
fn reset(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Writes `chunk`, at the fault's bandwidth if it is [`Fault::SlowBandwidth`].
async fn paced<W: AsyncWriteExt + Unpin>(
    out: &mut W,
    chunk: &[u8],
    fault: Fault,
) -> std::io::Result<()> {
    let Fault::SlowBandwidth { bytes_per_second } = fault else {
        return out.write_all(chunk).await;
    };
    // Pieces of a tenth of a second's worth, each followed by its share of the second.
    let piece = (bytes_per_second as usize / 10).max(1);
    for part in chunk.chunks(piece) {
        out.write_all(part).await?;
        tokio::time::sleep(Duration::from_secs_f64(
            part.len() as f64 / f64::from(bytes_per_second),
        ))
        .await;
    }
    Ok(())
}

/// One client connection: forwards both ways, applying the fault of the moment to each chunk.
async fn pipe(
    mut client: TcpStream,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    seed: Arc<Mutex<u64>>,
) {
    if *fault.borrow() == Fault::Reset {
        reset(&client);
        return;
    }
    let Ok(mut service) = TcpStream::connect(target).await else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = service.set_nodelay(true);
    let reset_at_end = {
        let (mut client_read, mut client_write) = client.split();
        let (mut service_read, mut service_write) = service.split();
        // Client to service: requests pass unless the connection is reset or black-holed.
        let upstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                match *fault.borrow() {
                    Fault::Reset => return true,
                    // A connection open before the refusal closes at its next request.
                    Fault::Refuse => return false,
                    Fault::BlackHole => continue,
                    _ => {}
                }
                let throttle = *fault.borrow();
                if paced(&mut service_write, &buf[..n], throttle)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        };
        // Service to client: responses, with the fault of the moment.
        let downstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match service_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let current = *fault.borrow();
                match current {
                    Fault::Reset => return true,
                    Fault::BlackHole => std::future::pending::<()>().await,
                    Fault::Latency { base, jitter: span } => {
                        tokio::time::sleep(base + jitter(&seed, span)).await;
                    }
                    Fault::StallBody => {
                        // The test service answers small responses: headers and body come in
                        // one chunk. Pass the headers, then hold the rest for ever.
                        if let Some(end) = chunk.windows(4).position(|w| w == b"\r\n\r\n") {
                            let _ = client_write.write_all(&chunk[..end + 4]).await;
                            std::future::pending::<()>().await;
                        }
                    }
                    Fault::None | Fault::Refuse | Fault::SlowBandwidth { .. } => {}
                }
                if paced(&mut client_write, chunk, current).await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            reset = upstream => reset,
            reset = downstream => reset,
        }
    };
    if reset_at_end {
        reset(&client);
    }
}
