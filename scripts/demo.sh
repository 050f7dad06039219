#!/usr/bin/env bash
# The demo without Docker, on loopback: installs what is missing (nats-server, the tansu
# Kafka-protocol broker, RabbitMQ), starts the brokers that are not running, the example
# orders service and ricochet beside it, sends NATS requests, a Kafka request record and an
# AMQP RPC request through ricochet and prints each round trip and ricochet's metrics. Then it
# stays up so you can send your own requests (`ricochet request`) until Ctrl-C, which stops
# everything it started.
#
#   scripts/demo.sh          # the demo, then stay up
#   scripts/demo.sh --once   # the demo, then stop (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "== installing $* from Debian's archive (about a minute)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

work="$(mktemp -d)"
pids=()
stop_rabbitmq=0
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$stop_rabbitmq" = 1 ]; then rabbitmqctl stop >/dev/null 2>&1 || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

for port in 8080 9464; do
  if port_open "$port"; then echo "port $port is busy; the demo needs it" >&2; exit 1; fi
done

if port_open 4222; then
  echo "== using the NATS server on 127.0.0.1:4222"
else
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  echo "== starting nats-server (JetStream) on 127.0.0.1:4222"
  "$(command -v nats-server || echo /usr/sbin/nats-server)" -a 127.0.0.1 -p 4222 -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
  pids+=($!)
  wait_port 4222
fi

if port_open 9092; then
  echo "== using the Kafka-protocol broker on 127.0.0.1:9092"
else
  echo "== starting tansu (Kafka protocol) on 127.0.0.1:9092"
  tansu_bin="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"
  if [ ! -x "$tansu_bin" ]; then
    echo "== building tansu once from crates.io (about 10 minutes on 2 cores; kept in cargo's bin directory)"
    cargo install tansu --locked --features dynostore,libsql
    tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  fi
  "$tansu_bin" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  pids+=($!)
  wait_port 9092
fi

if port_open 5672; then
  echo "== using the RabbitMQ on 127.0.0.1:5672"
else
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  echo "== starting RabbitMQ on 127.0.0.1:5672 (about 10 s)"
  sudo_if_needed rabbitmq-server -detached
  stop_rabbitmq=1
  for _ in $(seq 1 300); do port_open 5672 && break; sleep 0.1; done
  wait_port 5672
fi

echo "== building ricochet and the examples (the first build takes about 10 minutes)"
cargo build -q --bin ricochet --example orders-service --example demo-caller

echo "== starting the orders service on 127.0.0.1:8080"
target/debug/examples/orders-service >"$work/orders.log" 2>&1 &
pids+=($!)
wait_port 8080

echo "== starting ricochet beside it (config/demo.toml; admin on 127.0.0.1:9464)"
target/debug/ricochet run --config config/demo.toml >"$work/ricochet.log" 2>&1 &
pids+=($!)

echo "== calling through ricochet"
status=0
READY_URL=http://127.0.0.1:9464/readyz target/debug/examples/demo-caller || status=$?

echo "== ricochet's metrics (excerpt)"
curl -s http://127.0.0.1:9464/metrics \
  | grep -E '^ricochet_(messages_handled_total|http_responses_total|retries_total|errors_total)\{' \
  | grep -v ' 0$' || true

if [ "$status" -ne 0 ]; then
  echo "== ricochet's log"; cat "$work/ricochet.log"
  exit "$status"
fi
if [ "$once" = 1 ]; then
  exit 0
fi

cat <<EOT

== ricochet is running (config/demo.toml). Try, in another terminal:
  target/debug/ricochet request --config config/demo.toml orders.create -H Content-Type=application/json --data '{"item":"tea","qty":2}'
  target/debug/ricochet request --config config/demo.toml orders.list
  target/debug/ricochet request --config config/demo.toml orders.1.get
  curl -s http://127.0.0.1:9464/metrics | grep ^ricochet_
ricochet's log: $work/ricochet.log
Ctrl-C stops ricochet, the orders service and the brokers this script started.
EOT
trap 'echo; echo "== stopping"; exit 0' INT TERM
while kill -0 "${pids[-1]}" 2>/dev/null; do sleep 1; done
echo "== ricochet exited; its log:"; cat "$work/ricochet.log"
exit 1
