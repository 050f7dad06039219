//! The brokers the tests talk to. `NATS_URL` and `KAFKA_BROKERS` point the suite at brokers
//! running elsewhere; without them each test binary starts its own nats-server (JetStream,
//! storage in a scratch directory) and its own tansu (memory storage) on free ports, once,
//! when a test first needs it. They stop when the test binary ends: they are started with a
//! parent-death signal, from a thread that lives as long as the process.
//!
//! A missing broker binary fails the test at once with the command that installs it, not
//! with a connection timeout. Self-contained, so that the benchmark's tests use it too.
#![allow(dead_code)]

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a broker of the tests' own may take to listen.
const START_WITHIN: Duration = Duration::from_secs(30);

/// The NATS server: `NATS_URL`, else this test binary's own nats-server.
pub fn nats_url() -> String {
    static OWN: OnceLock<String> = OnceLock::new();
    env_or_own("NATS_URL", &OWN, || {
        let port = start("nats-server", |port, dir| {
            let mut command = Command::new(nats_server_bin());
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.join("jetstream"));
            command
        });
        format!("nats://127.0.0.1:{port}")
    })
}

/// The Kafka-protocol broker: `KAFKA_BROKERS`, else this test binary's own tansu.
pub fn kafka_brokers() -> String {
    static OWN: OnceLock<String> = OnceLock::new();
    env_or_own("KAFKA_BROKERS", &OWN, || {
        let port = start("tansu", |port, _| {
            let listener = format!("tcp://127.0.0.1:{port}");
            let mut command = Command::new(tansu_bin());
            command
                .arg("broker")
                .args(["--listener-url", &listener])
                .args(["--advertised-listener-url", &listener])
                .args(["--storage-engine", "memory://tansu/"]);
            command
        });
        format!("127.0.0.1:{port}")
    })
}

/// `var` when set, else the address of a broker of this process, started on first use.
fn env_or_own(var: &str, own: &'static OnceLock<String>, start: impl FnOnce() -> String) -> String {
    std::env::var(var).unwrap_or_else(|_| own.get_or_init(start).clone())
}

/// The nats-server binary for tests that start servers: `NATS_SERVER_BIN` (to run a suite
/// against another server version), else the one on `PATH`, else Debian's.
pub fn nats_server_bin() -> String {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin;
    }
    find("nats-server", &["/usr/sbin/nats-server"]).unwrap_or_else(|| {
        panic!(
            "nats-server is not installed: `apt-get install nats-server` (or scripts/test.sh, \
             which installs everything the tests need), or set NATS_URL to a running server"
        )
    })
}

/// The tansu binary: `TANSU_BIN`, else the one on `PATH`, else cargo's bin directory.
pub fn tansu_bin() -> String {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin;
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let cargo_bin = cargo_home.join("bin/tansu").to_string_lossy().into_owned();
    find("tansu", &[&cargo_bin]).unwrap_or_else(|| {
        panic!(
            "tansu (the Kafka-protocol broker the tests use) is not installed: \
             `cargo install tansu --locked --features dynostore,libsql` (about 10 minutes, once), or \
             scripts/test.sh, which installs everything the tests need; or set KAFKA_BROKERS \
             to a running broker"
        )
    })
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound port").port()
}

/// `name` on `PATH`, else the first of `fallbacks` that exists.
fn find(name: &str, fallbacks: &[&str]) -> Option<String> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|candidate| is_executable(candidate))
        .map(|found| found.to_string_lossy().into_owned())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A scratch directory for one broker of this process. Directories that processes no longer
/// running left behind are removed first.
fn scratch(kind: &str, port: u16) -> PathBuf {
    let root = std::env::temp_dir().join("ricochet-test-brokers");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("{kind}-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory for a test broker");
    dir
}

/// Starts the broker `build` makes for a free port and a scratch directory (its output to
/// `log` there) so that it dies with this process, and waits until it listens. Its port.
fn start(what: &str, build: impl FnOnce(u16, &Path) -> Command) -> u16 {
    let port = free_port();
    let dir = scratch(what, port);
    let mut command = build(port, &dir);
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).expect("broker log file");
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("broker log file"))
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent-death signal fires when the thread that started the child ends, and test
    // threads end with their test: a thread of its own starts the broker and waits on it for
    // the rest of the process.
    let exited: Arc<Mutex<Option<String>>> = Arc::default();
    let (started, outcome) = std::sync::mpsc::channel();
    let report = exited.clone();
    std::thread::Builder::new()
        .name(format!("test-{what}"))
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = started.send(Ok(()));
                let status = child.wait();
                *report.lock().unwrap() = Some(format!("{status:?}"));
            }
            Err(e) => {
                let _ = started.send(Err(e));
            }
        })
        .expect("a thread for the test broker");
    if let Err(e) = outcome.recv().expect("the broker thread answers") {
        panic!("cannot start {what}: {e}");
    }
    let deadline = Instant::now() + START_WITHIN;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = exited.lock().unwrap().clone() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "{what} exited at start ({status}); its log ({}):\n{log}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what} does not listen on 127.0.0.1:{port} after {START_WITHIN:?}; its log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "test broker: {what} on 127.0.0.1:{port} (log {})",
        log_path.display()
    );
    port
}
