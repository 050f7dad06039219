//! The brokers the tests talk to. `NATS_URL` and `KAFKA_BROKERS` point the suite at brokers
//! running elsewhere; without them each test binary starts its own nats-server (JetStream,
//! storage in a scratch directory) and its own tansu (memory storage) on free ports, once,
//! when a test first needs it. They stop when the test binary ends: they are started with a
//! parent-death signal, from a thread that lives as long as the process.
//!
//! Tests that kill a broker and start it again (reliability, reconnects, TLS and auth
//! servers) use an [`OwnBroker`] instead: one of their own, on its own port and storage.
//!
//! A missing broker binary fails the test at once with the command that installs it, not
//! with a connection timeout. Self-contained (std, libc and tempfile), so that the
//! benchmark's tests use it too.
#![allow(dead_code)]

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
///
/// The port is free when picked but not reserved: another process (a parallel test binary's
/// broker) may bind it before the broker does. A broker that exits saying so is started
/// again on another port; any other failure panics with its log.
fn start(what: &str, build: impl Fn(u16, &Path) -> Command) -> u16 {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        match start_on_a_free_port(what, &build) {
            Ok(port) => return port,
            Err(log) if attempt < ATTEMPTS && port_taken(&log) => {
                eprintln!("test broker: {what}'s port was taken meanwhile; trying another");
            }
            Err(exited) => panic!("{exited}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Whether a broker's log says its address was in use (nats-server and tansu say it so).
fn port_taken(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("addrinuse")
}

/// One attempt of [`start`]: the broker's port, or what it said when it exited at start.
fn start_on_a_free_port(what: &str, build: &impl Fn(u16, &Path) -> Command) -> Result<u16, String> {
    let port = free_port();
    let dir = scratch(what, port);
    let mut command = build(port, &dir);
    let log_path = dir.join("log");
    output_to(&mut command, &log_path);
    dies_with_its_thread(&mut command);
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
    wait_listening(what, port, &log_path, START_WITHIN, || {
        exited.lock().unwrap().clone()
    })?;
    eprintln!(
        "test broker: {what} on 127.0.0.1:{port} (log {})",
        log_path.display()
    );
    Ok(port)
}

/// `command`'s output (stdout and stderr) appended to the file at `log`; no input.
fn output_to(command: &mut Command, log: &Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("broker log file");
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("broker log file"))
        .stderr(file);
}

/// `command`'s process is killed when the thread that spawns it ends.
fn dies_with_its_thread(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Blocks until `what` listens on `port`. When `exited` says it ended first: what it
/// said, with its log (at `log`); panics with the log when it does not listen within
/// `within`. Blocking, not async: the shared brokers start from any thread, and a broker
/// that is not listening yet is all the test waits for.
fn wait_listening(
    what: &str,
    port: u16,
    log: &Path,
    within: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = exited() {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{what} exited at start ({status}); its log ({}):\n{log_text}",
                log.display()
            ));
        }
        if Instant::now() > deadline {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "{what} does not listen on 127.0.0.1:{port} after {within:?}; its log ({}):\n{log_text}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// What makes a broker's command for its port and directory.
type MakeCommand = dyn Fn(u16, &Path) -> Command + Send + Sync;

/// A broker process of one test's own, for tests that kill a broker and start it again:
/// its own port, its own directory (storage, configuration, and `output.log`, which every
/// start appends to), killed with SIGKILL to its whole process group (a start script need
/// not exec its server) and again when dropped. It also dies with the thread that started
/// it (start it from the test's own thread, not a short-lived one). A test that panics
/// prints the last lines of its output.
pub struct OwnBroker {
    what: String,
    port: u16,
    dir: tempfile::TempDir,
    /// Makes the command for the port and the directory, for every start.
    command: Box<MakeCommand>,
    child: Option<Child>,
}

impl OwnBroker {
    /// The broker `command` makes for a free port and a fresh directory; not started yet
    /// (a test may want its address first).
    pub fn new(
        what: &str,
        command: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.to_string(),
            port: free_port(),
            dir: tempfile::tempdir().expect("a directory for a test broker"),
            command: Box::new(command),
            child: None,
        }
    }

    /// A nats-server (the one of [`nats_server_bin`]) with the configuration `conf` makes
    /// for the broker's directory (storage goes there), listening on its port.
    pub fn nats_server(conf: impl FnOnce(&Path) -> String) -> Self {
        Self::nats_server_at(&nats_server_bin(), conf)
    }

    /// [`Self::nats_server`] of the binary `bin` (another server version).
    pub fn nats_server_at(bin: &str, conf: impl FnOnce(&Path) -> String) -> Self {
        let bin = bin.to_string();
        let broker = Self::new("nats-server", move |_, dir| {
            let mut command = Command::new(&bin);
            command.arg("-c").arg(dir.join("nats.conf"));
            command
        });
        let file = format!(
            "listen: 127.0.0.1:{}\n{}\n",
            broker.port,
            conf(broker.dir())
        );
        std::fs::write(broker.dir().join("nats.conf"), file).expect("nats-server configuration");
        broker
    }

    /// A tansu with SQLite storage in the broker's directory (kept across restarts).
    pub fn tansu_sqlite() -> Self {
        let bin = tansu_bin();
        Self::new(
            "tansu (SQLite storage: built with `--features libsql`?)",
            move |port, dir| {
                let listener = format!("tcp://127.0.0.1:{port}");
                let mut command = Command::new(&bin);
                command
                    .arg("broker")
                    .args(["--listener-url", &listener])
                    .args(["--advertised-listener-url", &listener])
                    // tansu takes the URL's path as relative: the file lands in the directory.
                    .args(["--storage-engine", "sqlite://tansu.db"])
                    .current_dir(dir);
                command
            },
        )
    }

    /// A RabbitMQ node: its own AMQP and distribution ports, node name and data directory,
    /// so that durable queues and persistent messages survive a kill. The start script
    /// (`RABBITMQ_SERVER_BIN`, else Debian's) runs in the foreground.
    pub fn rabbitmq() -> Self {
        let bin = std::env::var("RABBITMQ_SERVER_BIN")
            .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: `apt-get install rabbitmq-server` (scripts/test.sh does), or set RABBITMQ_SERVER_BIN"
        );
        let dist_port = free_port();
        let broker = Self::new("rabbitmq", move |port, dir| {
            let mut command = Command::new(&bin);
            command
                .current_dir(dir)
                // The machine's rabbitmq-env.conf names the machine's node: not read.
                .env("RABBITMQ_CONF_ENV_FILE", dir.join("env.conf"))
                .env("RABBITMQ_NODENAME", format!("ricochet{port}@localhost"))
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", port.to_string())
                .env("RABBITMQ_DIST_PORT", dist_port.to_string())
                .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.join("log"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
                .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
                .env("ERL_EPMD_ADDRESS", "127.0.0.1");
            command
        });
        std::fs::write(broker.dir().join("env.conf"), "").expect("RabbitMQ env file");
        std::fs::write(broker.dir().join("enabled_plugins"), "[].").expect("RabbitMQ plugins");
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the broker printed, every start appended.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("output.log")
    }

    /// The last `lines` lines the broker printed.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the broker (on its port and directory, as before a kill); does not wait for
    /// it to listen.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.what);
        let mut command = (self.command)(self.port, self.dir.path());
        output_to(&mut command, &self.log_path());
        dies_with_its_thread(&mut command);
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.what));
        self.child = Some(child);
    }

    /// Blocks until the broker listens; panics with its output when it exits first or does
    /// not listen within `within`.
    pub fn wait_listening(&mut self, within: Duration) {
        let (what, port, log) = (self.what.clone(), self.port, self.log_path());
        let child = self.child.as_mut().expect("a started broker");
        let listening = wait_listening(&what, port, &log, within, || {
            (child.try_wait().ok().flatten()).map(|status| status.to_string())
        });
        listening.unwrap_or_else(|exited| panic!("{exited}"));
    }

    /// SIGKILL to the broker's process group, and waits for it to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain system call; a negative pid names the process group the
            // broker leads (`process_group(0)`).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} output (last 60 lines) ---\n{}",
                self.what,
                self.log_tail(60)
            );
        }
    }
}

/// Whether the nats-server of [`nats_server_bin`] accepts the configuration `conf` (its
/// `-t` check): what a test asks of a feature older servers lack.
pub fn nats_server_accepts(conf: &str) -> bool {
    let bin = nats_server_bin();
    let dir = tempfile::tempdir().expect("a directory for a configuration check");
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, conf).expect("nats-server configuration");
    Command::new(&bin)
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
        .success()
}
