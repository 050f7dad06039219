//! `--callgrind`'s parts: the instructions per request of what ricochet is made of, counted
//! the way ricochet's own are (under callgrind, counters zeroed after a warm-up, dumped after
//! an open loop at the same rate), so that ricochet's count becomes a ratio to their sum:
//!
//! - the L1 responder: async-nats alone (`ricochet-bench-part respond`): receive a
//!   request, publish the reply;
//! - the L0 client: hyper's HTTP/1 client alone (`ricochet-bench-part http-client`, one
//!   keep-alive connection): send the request, read the response. Its requests are started
//!   by a timer in the same process; that schedule is counted on its own (the same timer
//!   with no request) and subtracted, since in ricochet the message's arrival, counted in
//!   the responder's part, starts the call.
//!
//! The parts are a binary of their own (src/bin/ricochet-bench-part.rs), built like
//! ricochet (mimalloc, current-thread runtime), so that the difference is not the build's.
//!
//! Whatever ricochet counts beyond the sum is its own work: routing, mapping, admission,
//! the pool, timeouts, headers, telemetry (see `functions.rs` for where, by function).

use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;

use crate::{callgrind_control, closed_loop, functions, nats_call, open_loop, unique, Args};

/// One process's instructions over a counted open loop, and its callgrind dump.
pub struct Count {
    pub requests: u64,
    pub total: u64,
    pub dump: String,
}

impl Count {
    /// Reads a dump written by `callgrind_control --dump` (its `totals:` line).
    pub fn new(requests: u64, dump: String) -> anyhow::Result<Self> {
        let total = dump
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .context("no totals in the callgrind dump")?;
        Ok(Self {
            requests,
            total,
            dump,
        })
    }

    pub fn per_request(&self) -> u64 {
        self.total / self.requests.max(1)
    }
}

/// The parts' counts, and the table of ricochet against their sum (and, with
/// `--by-function`, where the rest goes).
pub async fn report(
    args: &Args,
    upstream: SocketAddr,
    payload: Bytes,
    ricochet: &Count,
) -> anyhow::Result<()> {
    let responder = count_responder(args, payload).await?;
    let client = count_client(args, upstream, false).await?;
    let schedule = count_client(args, upstream, true).await?;
    let per = |c: &Count| c.per_request() as i64;
    let client_alone = per(&client) - per(&schedule);
    let sum = per(&responder) + client_alone;
    let rate = args.rates.first().copied().unwrap_or(100);
    println!();
    println!(
        "instructions per request under callgrind (user space, all threads; {} B payload, open loop at {rate}/s):",
        args.payload
    );
    let row = |name: &str, value: i64, note: String| {
        println!("  {name:<34} {value:>9}  {note}");
    };
    row(
        "ricochet (L2)",
        per(ricochet),
        format!("{} requests", ricochet.requests),
    );
    row(
        "L1 responder (async-nats alone)",
        per(&responder),
        format!("{} requests", responder.requests),
    );
    row(
        "L0 client (hyper HTTP/1 alone)",
        client_alone,
        format!(
            "{} requests: {} counted, less {} for the timer that starts them",
            client.requests,
            per(&client),
            per(&schedule)
        ),
    );
    row("sum of the parts", sum, String::new());
    println!(
        "  {:<34} {:>9.3}  (goal: at most 1.15)",
        "ricochet / sum of the parts",
        per(ricochet) as f64 / sum as f64
    );
    if args.by_function {
        functions::print_rest(ricochet, &responder, &client, &schedule);
    }
    Ok(())
}

/// The L1 responder under callgrind, driven like ricochet: the same requester and loops.
async fn count_responder(args: &Args, payload: Bytes) -> anyhow::Result<Count> {
    let subject = format!("bench.callgrind.l1.{}", unique());
    let role = [
        "respond",
        "--subject",
        &subject,
        "--nats-url",
        &args.nats_url,
    ];
    let mut process = Counted::start(&role)?;
    process.expect_line("ready").await?;
    let call = nats_call(args, subject, payload).await?;
    let errors = Arc::new(AtomicU64::new(0));
    closed_loop(&call, 4, Duration::from_millis(500), &errors).await;
    callgrind_control("--zero", process.pid())?;
    let unanswered = Arc::new(AtomicU64::new(0));
    let rate = args.rates.first().copied().unwrap_or(100);
    let (_, _, count) = open_loop(&call, rate, args.duration, &errors, &unanswered).await;
    callgrind_control("--dump", process.pid())?;
    let failed = errors.load(std::sync::atomic::Ordering::SeqCst)
        + unanswered.load(std::sync::atomic::Ordering::SeqCst);
    if failed > 0 || count == 0 {
        bail!("{failed} requests to the L1 responder failed under callgrind");
    }
    process.finish(count)
}

/// The L0 client under callgrind: it runs its own open loop (`http-client`), started by a
/// line on its stdin once the counters are zeroed. With `schedule_only`, the same timer
/// without a request.
async fn count_client(
    args: &Args,
    upstream: SocketAddr,
    schedule_only: bool,
) -> anyhow::Result<Count> {
    let rate = args.rates.first().copied().unwrap_or(100).to_string();
    let duration = humantime::format_duration(args.duration).to_string();
    let payload = args.payload.to_string();
    let upstream = upstream.to_string();
    let mut role = vec![
        "http-client",
        "--upstream",
        &upstream,
        "--rate",
        &rate,
        "--duration",
        &duration,
        "--payload",
        &payload,
    ];
    if schedule_only {
        role.push("--schedule-only");
    }
    let mut process = Counted::start(&role)?;
    process.expect_line("ready").await?;
    callgrind_control("--zero", process.pid())?;
    process.say("go")?;
    let line = process.line().await?;
    let done: Vec<u64> = (line.strip_prefix("done "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [count, errors] = done[..] else {
        bail!("the L0 client printed {line:?}, not its count");
    };
    callgrind_control("--dump", process.pid())?;
    if errors > 0 {
        bail!("{errors} requests of the L0 client failed under callgrind");
    }
    process.finish(count)
}

/// `ricochet-bench-part` (next to this binary) in a part's role under callgrind, killed on
/// drop (with its dump directory).
struct Counted {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
    dir: std::path::PathBuf,
}

impl Counted {
    fn start(role: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ricochet-bench-part-{}", unique()));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join("callgrind.out").display()
            ))
            .arg("--log-file=/dev/null")
            .arg(std::env::current_exe()?.with_file_name("ricochet-bench-part"))
            .args(role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("valgrind (is it installed?)")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(std::io::BufReader::new);
        Ok(Self {
            child,
            stdin,
            stdout,
            dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn expect_line(&mut self, expected: &str) -> anyhow::Result<()> {
        let line = self.line().await?;
        if line != expected {
            bail!("a part under callgrind printed {line:?}, not {expected:?}");
        }
        Ok(())
    }

    /// The next line the part prints, read off the runtime's threads (a part under
    /// valgrind takes seconds to start, and the client's line comes after its whole loop).
    async fn line(&mut self) -> anyhow::Result<String> {
        let mut stdout = self.stdout.take().context("the part's stdout")?;
        let (stdout, line) = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let read = std::io::BufRead::read_line(&mut stdout, &mut line);
            (stdout, read.map(|_| line))
        })
        .await?;
        self.stdout = Some(stdout);
        Ok(line?.trim().to_string())
    }

    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("the part's stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The dump of the `--dump` just requested, for `requests` requests.
    fn finish(mut self, requests: u64) -> anyhow::Result<Count> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dump = std::fs::read_to_string(self.dir.join("callgrind.out.1"))
            .context("callgrind wrote no dump for a part")?;
        Count::new(requests, dump)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
