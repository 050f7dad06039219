//! `ricochet-bench-part`: one of ricochet's parts on its own, for `ricochet-bench
//! --callgrind` (bench/src/parts.rs), which runs it under callgrind and compares ricochet's
//! instructions per request with the sum of the parts'. Built like ricochet, so that the
//! difference is ricochet's own work and not the build's: mimalloc as the allocator, a
//! current-thread runtime (ricochet's default), the workspace's release profile and the
//! same async-nats and hyper.
//!
//! - `respond`: the L1 responder, async-nats alone: receive a request, publish its payload
//!   to the reply inbox (as the bench's L1 leg does).
//! - `http-client`: the L0 client, hyper's HTTP/1 client alone: one keep-alive connection,
//!   a POST with the payload, the response read in full. Its requests are started by a
//!   timer in this process (`--schedule-only` runs that timer alone, for the bench to
//!   subtract): in ricochet the message's arrival, counted in the responder's part, starts
//!   the call.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use http::header::HOST;
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "One of ricochet's parts alone, for ricochet-bench --callgrind")]
struct Args {
    #[command(subcommand)]
    part: Part,
}

#[derive(Subcommand)]
enum Part {
    /// Answer every request on `subject` with its payload; prints `ready` once subscribed.
    Respond {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        subject: String,
    },
    /// After a warm-up, print `ready`, wait for a line on stdin, send `rate` requests per
    /// second for `duration` (one at a time: at that rate each is answered long before the
    /// next is due), print `done <requests> <errors>`, then wait for stdin to close (the
    /// bench dumps the counters first).
    HttpClient {
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long)]
        rate: u64,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        payload: usize,
        /// Run the timer without sending requests.
        #[arg(long)]
        schedule_only: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Args::parse().part {
        Part::Respond { nats_url, subject } => runtime.block_on(respond(&nats_url, subject)),
        Part::HttpClient {
            upstream,
            rate,
            duration,
            payload,
            schedule_only,
        } => runtime.block_on(http_client(
            upstream,
            rate,
            duration,
            payload,
            schedule_only,
        )),
    }
}

async fn respond(nats_url: &str, subject: String) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await.context("NATS")?;
    let mut subscription = client.subscribe(subject).await?;
    client.flush().await?;
    println!("ready");
    while let Some(message) = subscription.next().await {
        if let Some(reply) = message.reply {
            client.publish(reply, message.payload).await?;
        }
    }
    Ok(())
}

async fn http_client(
    upstream: SocketAddr,
    rate: u64,
    duration: Duration,
    size: usize,
    schedule_only: bool,
) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let host = HeaderValue::from_str(&upstream.to_string())?;
    let payload = Bytes::from(vec![b'x'; size]);
    for _ in 0..50 {
        call(&mut sender, &host, &payload).await?;
    }
    println!("ready");
    // Blocking reads: nothing else is to run on this thread meanwhile.
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let rate = rate.max(1);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut schedule = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut errors = 0;
    for _ in 0..total {
        schedule.tick().await;
        if !schedule_only && call(&mut sender, &host, &payload).await.is_err() {
            errors += 1;
        }
    }
    println!("done {total} {errors}");
    while stdin.read_line(&mut line)? > 0 {}
    Ok(())
}

/// One request on the connection, its body read in full and checked.
async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &HeaderValue,
    payload: &Bytes,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = hyper::Request::post(Uri::from_static("/echo"))
        .header(HOST, host.clone())
        .body(Full::new(payload.clone()))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    if body != *payload {
        bail!(
            "wrong reply: {} bytes instead of {}",
            body.len(),
            payload.len()
        );
    }
    Ok(())
}
