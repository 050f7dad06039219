#!/usr/bin/env bash
# Regenerates scripts/hot-functions.txt: the functions a release build of ricochet runs,
# which scripts/link-hot-first places first and together in the executable.
#
#   scripts/hot-functions.sh [BINARY]     # default: target/release/ricochet
#
# Runs BINARY under valgrind's callgrind (symbol names kept mangled) with one core NATS and
# one JetStream route, then with one AMQP route, then with one Kafka route, in front of a
# small echo service, and sends each some requests: NATS_URL (default
# nats://127.0.0.1:4222), AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# KAFKA_BROKERS (default: a tansu of its own on a free port), with Python's nats-py, pika
# and confluent-kafka. Every function that ran goes in the list: the NATS run's first (most
# instructions first, start-up code last), then the AMQP run's new ones, then Kafka's, so
# that a NATS deployment's code stays together and the others' follows it. Takes about a
# minute. Run it after changes that move the request path to other functions, then rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-target/release/ricochet}"
nats_url="${NATS_URL:-nats://127.0.0.1:4222}"
amqp_url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
[ -x "$binary" ] || { echo "no ricochet binary at $binary (cargo build --release)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The service: answers every request with its body.
service_port="$(free_port)"
python3 - "$service_port" <<'EOF' &
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
EOF
pids+=($!)

tag="hot$$"
# profile NAME ROUTES DRIVER: ricochet under callgrind with ROUTES, DRIVER (Python) sending
# requests for 15 s while the admin endpoints are scraped; the dump lands in $work/NAME.out.
profile() {
  local name="$1" routes="$2" driver="$3" admin pid
  admin="$(free_port)"
  cat > "$work/$name.toml" <<EOF
[nats]
url = "$nats_url"

[upstream]
base_url = "http://127.0.0.1:$service_port"

[admin]
listen = "127.0.0.1:$admin"

$routes
EOF
  # The dump's format as the parser below reads it, whatever VALGRIND_OPTS or ~/.valgrindrc
  # say: one position (the line) per cost line, names given once and then by number.
  valgrind --tool=callgrind --demangle=no --dump-instr=no --dump-line=yes \
    --compress-strings=yes --separate-recs=1 --log-file="$work/$name.log" \
    --callgrind-out-file="$work/$name.out" "$binary" run --config "$work/$name.toml" \
    > "$work/$name.ricochet.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null \
    || { echo "ricochet did not get ready; its log:" >&2; cat "$work/$name.ricochet.log" >&2; exit 1; }
  python3 - "$admin" <<EOF
import asyncio, sys, time, urllib.request
admin = sys.argv[1]
$driver
def scrape():
    for path in ("/metrics", "/healthz", "/readyz"):
        urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}").read()
asyncio.run(drive(time.time() + 15, scrape))
EOF
  kill -TERM "$pid"
  wait "$pid" || true
  [ -s "$work/$name.out" ] || { echo "callgrind wrote nothing for $name" >&2; exit 1; }
  echo "profiled $name"
}

# The JetStream route's stream (ricochet binds to a stream, it does not create one).
python3 - <<EOF
import asyncio, nats
async def main():
    nc = await nats.connect('$nats_url')
    await nc.jetstream().add_stream(name='$tag', subjects=['$tag.js.>'])
    await nc.close()
asyncio.run(main())
EOF

profile nats "
[[routes]]
name = \"core\"
subject = \"$tag.core.{id}\"
method = \"POST\"
path = \"/core/{id}\"

[[routes]]
name = \"js\"
source = \"jetstream\"
subject = \"$tag.js.{id}\"
method = \"POST\"
path = \"/js/{id}\"
reply_subject = \"$tag.replies\"

[routes.jetstream]
stream = \"$tag\"
durable = \"$tag\"
" "
import nats
async def drive(until, scrape):
    nc = await nats.connect('$nats_url')
    js = nc.jetstream()
    n = 0
    while time.time() < until:
        asks = [nc.request(f'$tag.core.{n}-{i}', b'{\"n\":1}', timeout=30) for i in range(16)]
        await asyncio.gather(*asks, return_exceptions=True)
        await js.publish(f'$tag.js.{n}', b'{\"n\":2}', headers={'Nats-Msg-Id': f'{n}'})
        n += 1
        if n % 50 == 0:
            scrape()
    await js.delete_stream('$tag')
    await nc.close()
"

profile amqp "
[[routes]]
name = \"amqp\"
source = \"amqp\"
subject = \"$tag.amqp\"
method = \"POST\"
path = \"/amqp\"

[routes.amqp]
url = \"$amqp_url\"
queue = \"$tag.amqp\"
" "
import pika
async def drive(until, scrape):
    connection = pika.BlockingConnection(pika.URLParameters('$amqp_url'))
    channel = connection.channel()
    replies = channel.queue_declare('', exclusive=True).method.queue
    n = 0
    while time.time() < until:
        for i in range(16):
            channel.basic_publish('', '$tag.amqp', b'{\"n\":3}', pika.BasicProperties(
                reply_to=replies, correlation_id=f'{n}-{i}'))
        got = 0
        while got < 16 and time.time() < until + 30:
            method, _, _ = channel.basic_get(replies, auto_ack=True)
            if method:
                got += 1
            else:
                connection.sleep(0.01)
        n += 1
        if n % 50 == 0:
            scrape()
    channel.queue_delete('$tag.amqp')
    connection.close()
"

# The Kafka route's broker: KAFKA_BROKERS, else a tansu of this script's own.
brokers="${KAFKA_BROKERS:-}"
if [ -z "$brokers" ]; then
  tansu="$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")"
  [ -x "$tansu" ] || { echo "no tansu (cargo install tansu --locked --features dynostore) and no KAFKA_BROKERS" >&2; exit 2; }
  kafka_port="$(free_port)"
  brokers="127.0.0.1:$kafka_port"
  "$tansu" broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
    --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null && break; sleep 0.2; done
fi
python3 - <<EOF
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({'bootstrap.servers': '$brokers'})
for future in admin.create_topics([NewTopic(t, 1, 1) for t in ('$tag-kafka', '$tag-kafka-replies')]).values():
    future.result()
EOF

# tansu answers a fetch only after fetch.wait.max.ms (docs/sources/kafka.md): a few ms here.
profile kafka "
[[routes]]
name = \"kafka\"
source = \"kafka\"
subject = \"$tag-kafka\"
method = \"POST\"
path = \"/kafka\"

[routes.kafka]
brokers = \"$brokers\"
reply_topic = \"$tag-kafka-replies\"

[routes.kafka.consumer]
\"fetch.wait.max.ms\" = \"5\"
" "
from confluent_kafka import Consumer, Producer
async def drive(until, scrape):
    producer = Producer({'bootstrap.servers': '$brokers', 'linger.ms': 0})
    replies = Consumer({'bootstrap.servers': '$brokers', 'group.id': '$tag-replies',
                        'auto.offset.reset': 'earliest', 'fetch.wait.max.ms': 5})
    replies.subscribe(['$tag-kafka-replies'])
    n = 0
    while time.time() < until:
        for i in range(16):
            producer.produce('$tag-kafka', b'{\"n\":4}', key=f'{n}-{i}'.encode())
        producer.flush(30)
        got = 0
        while got < 16 and time.time() < until + 30:
            message = replies.poll(0.1)
            if message is not None and not message.error():
                got += 1
        n += 1
        if n % 20 == 0:
            scrape()
    replies.close()
"

# The list: each run's functions by their own instructions, the NATS run's first.
python3 - "$(readlink -f "$binary")" "$work/nats.out" "$work/amqp.out" "$work/kafka.out" \
  > "$work/hot-functions.txt" <<'EOF'
import collections, os, re, sys
print("# Functions a release build of ricochet ran, hottest first: the order")
print("# scripts/link-hot-first lays them out in. Generated by scripts/hot-functions.sh;")
print("# edit that, not this.")
binary, dumps = sys.argv[1], sys.argv[2:]
listed = set()
for path in dumps:
    cost = collections.Counter()
    names, objects = {}, {}
    current, after_call = None, False
    current_object = None
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?fn|c?ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, id, name = m.groups()
            table = objects if kind.endswith("ob") else names
            if name is not None:
                table[id] = name
            # A function is listed for its own cost: one that ran has some. `cfn=` and
            # `cob=` lines only name callees (a name is given once, on its first use).
            if kind == "ob":
                current_object = objects.get(id)
            elif kind == "fn":
                current, after_call = None, False
                if current_object and os.path.realpath(current_object) == binary:
                    current = names.get(id)
            continue
        if line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
            elif current:
                fields = line.split()
                if len(fields) > 1:
                    cost[current] += int(fields[1])
    for name, _ in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0] or "")):
        if not name or name.startswith("0x"):
            continue
        # Without LTO's `.llvm.<n>` and callgrind's recursion mark `'<n>`.
        key = re.sub(r"\.llvm\.\d+$", "", re.sub(r"'\d+$", "", name))
        if key not in listed:
            listed.add(key)
            print(key)
EOF
mv "$work/hot-functions.txt" scripts/hot-functions.txt
echo "scripts/hot-functions.txt: $(grep -vc '^#' scripts/hot-functions.txt) functions"
