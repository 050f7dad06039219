#!/usr/bin/env bash
# The demo without Docker, on loopback: starts what is missing (nats-server with JetStream,
# the tansu Kafka-protocol broker, RabbitMQ), the example orders service and ricochet beside
# it, sends NATS requests, a Kafka request record and an AMQP RPC request through ricochet,
# prints the replies and ricochet's metrics, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

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
  echo "== starting nats-server (JetStream) on 127.0.0.1:4222"
  nats-server -a 127.0.0.1 -p 4222 -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
  pids+=($!)
  wait_port 4222
fi

if port_open 9092; then
  echo "== using the Kafka-protocol broker on 127.0.0.1:9092"
else
  echo "== starting tansu (Kafka protocol) on 127.0.0.1:9092"
  tansu_bin="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"
  [ -x "$tansu_bin" ] || { echo "tansu is missing: cargo install tansu --locked --features dynostore" >&2; exit 1; }
  "$tansu_bin" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  pids+=($!)
  wait_port 9092
fi

if port_open 5672; then
  echo "== using the RabbitMQ on 127.0.0.1:5672"
else
  command -v rabbitmq-server >/dev/null 2>&1 \
    || { echo "RabbitMQ is missing: apt-get install rabbitmq-server" >&2; exit 1; }
  echo "== starting RabbitMQ on 127.0.0.1:5672"
  rabbitmq-server -detached
  stop_rabbitmq=1
  for _ in $(seq 1 300); do port_open 5672 && break; sleep 0.1; done
  wait_port 5672
fi

echo "== building ricochet and the examples"
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
fi
exit "$status"
