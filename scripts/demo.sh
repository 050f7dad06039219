#!/usr/bin/env bash
# The demo without Docker, on loopback: installs what is missing (nats-server, RabbitMQ, the
# tansu Kafka-protocol broker), starts the brokers that are not running, the example orders
# service and ricochet beside it, sends NATS requests, an AMQP RPC request and a Kafka request
# record through ricochet and prints each round trip and ricochet's metrics. Then it stays up
# so you can send your own requests (`ricochet request`) until Ctrl-C, which stops everything
# it started.
#
# The NATS and AMQP round trips come as soon as ricochet is built. The Kafka one follows when
# its broker is ready: tansu, built once from crates.io when missing (about 22 minutes on 2
# cores, in the background, after the first replies); meanwhile ricochet runs without its
# Kafka route, and gets it by a reload (SIGHUP).
#
#   scripts/demo.sh             # the demo, then stay up (Kafka joins when tansu is ready)
#   scripts/demo.sh --once      # every round trip, Kafka's included, then stop (CI runs this)
#   scripts/demo.sh --no-kafka  # NATS and AMQP only: never builds or starts tansu
#
# TANSU_BIN names the tansu binary (default: on PATH, else cargo's bin directory);
# DEMO_KAFKA_PORT the Kafka port on 127.0.0.1 (default 9092, config/demo.toml's).
set -euo pipefail
cd "$(dirname "$0")/.."

# When the demo started, for the time to the first reply (the caller prints it).
started_at="${EPOCHREALTIME:-$(date +%s)}"
started_at="${started_at/,/.}"
once=0
kafka=1
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    --no-kafka) kafka=0 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$once" = 1 ] && [ "$kafka" = 0 ]; then
  echo "--once checks every round trip, Kafka's included: it does not go with --no-kafka" >&2
  exit 2
fi

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "== installing $* from Debian's archive (about a minute)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

work="$(mktemp -d)"
pids=()
build_pid=
stop_rabbitmq=0
cleanup() {
  # The background build of tansu runs in its own process group (cargo and its rustc).
  if [ -n "$build_pid" ]; then kill -- "-$build_pid" 2>/dev/null || true; fi
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

# Kafka: a broker already on 9092, or tansu started now when it is built, or later.
kafka_port="${DEMO_KAFKA_PORT:-9092}"
tansu_bin="${TANSU_BIN:-$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")}"
kafka_ready=0
start_tansu() {
  echo "== starting tansu (Kafka protocol) on 127.0.0.1:$kafka_port"
  "$tansu_bin" broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  pids+=($!)
  wait_port "$kafka_port"
  kafka_ready=1
}
if [ "$kafka" = 0 ]; then
  echo "== no Kafka (--no-kafka): the NATS and AMQP round trips only"
elif port_open "$kafka_port"; then
  echo "== using the Kafka-protocol broker on 127.0.0.1:$kafka_port"
  kafka_ready=1
elif [ -x "$tansu_bin" ]; then
  start_tansu
else
  echo "== tansu (the Kafka-protocol broker) is missing at $tansu_bin: it is built after the"
  echo "   NATS and AMQP round trips, and the Kafka round trip follows when it is ready"
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

echo "== building ricochet and the examples (a first build on 2 cores: about 4 minutes; then seconds)"
build_started=$SECONDS
# Where cargo puts them: CARGO_TARGET_DIR when set.
bin="${CARGO_TARGET_DIR:-target}/debug"
cargo build -q --bin ricochet --example orders-service --example demo-caller
echo "   built in $((SECONDS - build_started)) s"

# Until Kafka is ready, ricochet runs config/demo.toml without its Kafka route; the whole file
# replaces it by a reload when the broker is up.
config="$work/demo.toml"
whole_config() { sed "s/127\.0\.0\.1:9092/127.0.0.1:$kafka_port/" config/demo.toml >"$config"; }
if [ "$kafka_ready" = 1 ]; then
  whole_config
else
  awk '/^\[\[routes\]\]/ { flush(); keep = 1 }
       /^source = "kafka"/ { keep = 0 }
       { block = block $0 "\n" }
       function flush() { if (keep != 0) printf "%s", block; block = "" }
       BEGIN { keep = 1 } END { flush() }' config/demo.toml >"$config"
fi

echo "== starting the orders service on 127.0.0.1:8080"
"$bin"/examples/orders-service >"$work/orders.log" 2>&1 &
pids+=($!)
wait_port 8080

echo "== starting ricochet beside it (--config config/demo.toml$([ "$kafka_ready" = 1 ] || echo ' without its Kafka route, for now'); admin on 127.0.0.1:9464)"
"$bin"/ricochet run --config "$config" >"$work/ricochet.log" 2>&1 &
ricochet_pid=$!
pids+=($ricochet_pid)

metrics_excerpt() {
  echo "== ricochet's metrics (excerpt)"
  curl -s http://127.0.0.1:9464/metrics \
    | grep -E '^ricochet_(messages_handled_total|http_responses_total|retries_total|errors_total)\{' \
    | grep -v ' 0$' || true
}
failed() {
  metrics_excerpt
  echo "== ricochet's log"; cat "$work/ricochet.log"
  exit 1
}

brokers=(nats amqp)
[ "$kafka_ready" = 1 ] && brokers=(nats kafka amqp)
echo "== calling through ricochet: ${brokers[*]}"
READY_URL=http://127.0.0.1:9464/readyz DEMO_STARTED_AT="$started_at" KAFKA_BROKERS="127.0.0.1:$kafka_port" \
  "$bin"/examples/demo-caller "${brokers[@]}" || failed
metrics_excerpt

# Kafka, when it was not ready at the start: build tansu (when missing), start it, reload
# ricochet with the whole config/demo.toml, and call.
tansu_build_minutes=22
build_tansu() {
  echo "== building tansu once from crates.io in the background (about $tansu_build_minutes minutes on 2 cores;"
  echo "   kept in cargo's bin directory, so later demos start it at once; log: $work/tansu-build.log)"
  setsid nice -n 10 cargo install tansu --locked --features dynostore,libsql >"$work/tansu-build.log" 2>&1 &
  build_pid=$!
}
wait_for_tansu() {
  local since=$SECONDS
  while kill -0 "$build_pid" 2>/dev/null; do
    sleep 5
    local waited=$(((SECONDS - since) / 60))
    if [ $(((SECONDS - since) % 60)) -lt 5 ] && [ "$waited" -gt 0 ]; then
      echo "   waiting for the tansu build (the Kafka round trip waits for it): $waited min so far, about $((tansu_build_minutes > waited ? tansu_build_minutes - waited : 1)) min to go"
    fi
  done
  if ! wait "$build_pid"; then
    build_pid=
    echo "== the tansu build failed; its log:"; tail -n 30 "$work/tansu-build.log"
    return 1
  fi
  build_pid=
  tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  echo "== tansu built in $(((SECONDS - since) / 60)) min"
}
add_kafka() {
  if [ ! -x "$tansu_bin" ]; then wait_for_tansu || return 1; fi
  if ! port_open "$kafka_port"; then start_tansu; fi
  echo "== reloading ricochet with the whole config/demo.toml (its Kafka route) by SIGHUP"
  whole_config
  kill -HUP "$ricochet_pid"
  for _ in $(seq 1 300); do
    curl -s http://127.0.0.1:9464/metrics | grep -q '^ricochet_config_reloads_total{result="applied"} [1-9]' && break
    sleep 0.1
  done
  echo "== calling through ricochet: kafka"
  READY_URL=http://127.0.0.1:9464/readyz KAFKA_BROKERS="127.0.0.1:$kafka_port" "$bin"/examples/demo-caller kafka
}

if [ "$kafka_ready" = 0 ] && [ "$kafka" = 1 ] && [ ! -x "$tansu_bin" ]; then
  build_tansu
fi

if [ "$once" = 1 ]; then
  if [ "$kafka_ready" = 0 ]; then
    add_kafka || failed
    metrics_excerpt
    # The caller said so of NATS and AMQP, then of Kafka: every round trip answered.
    echo "demo: every reply as expected"
  fi
  exit 0
fi

cat <<EOT

== ricochet is running ($([ "$kafka_ready" = 1 ] || [ "$kafka" = 0 ] || echo 'for now without its Kafka route; ')config/demo.toml). Try, in another terminal:
  $bin/ricochet request --config config/demo.toml orders.create -H Content-Type=application/json --data '{"item":"tea","qty":2}'
  $bin/ricochet request --config config/demo.toml orders.list
  $bin/ricochet request --config config/demo.toml orders.1.get
  curl -s http://127.0.0.1:9464/metrics | grep ^ricochet_
ricochet's log: $work/ricochet.log
Ctrl-C stops ricochet, the orders service, the brokers and the build this script started.
EOT
trap 'echo; echo "== stopping"; exit 0' INT TERM
if [ "$kafka_ready" = 0 ] && [ "$kafka" = 1 ]; then
  if add_kafka; then
    metrics_excerpt
    echo "demo: every reply as expected"
  else
    echo "== the Kafka round trip failed; NATS and AMQP go on. ricochet's log: $work/ricochet.log"
  fi
fi
while kill -0 "$ricochet_pid" 2>/dev/null; do sleep 1; done
echo "== ricochet exited; its log:"; cat "$work/ricochet.log"
exit 1
