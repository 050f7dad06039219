#!/usr/bin/env bash
# Regenerates scripts/hot-functions.txt: the functions a release build of ricochet runs,
# which scripts/link-hot-first places first and together in the executable.
#
#   scripts/hot-functions.sh [BINARY]     # default: target/release/ricochet
#
# Runs BINARY under valgrind's callgrind (symbol names kept mangled) with one core NATS and
# one JetStream route, then with one AMQP route, in front of a small echo service, and
# sends each some requests (NATS_URL, default nats://127.0.0.1:4222, and AMQP_URL, default
# amqp://guest:guest@127.0.0.1:5672/%2f; Python's nats-py and pika). Every function that
# ran goes in the list: the NATS run's first (most
# instructions first, start-up code last), then the AMQP run's new ones, so that a NATS
# deployment's code stays together and an AMQP one's follows it. Takes about 2 minutes.
# Run it after changes that move the request path to other functions, then rebuild.
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
  valgrind --tool=callgrind --demangle=no --log-file="$work/$name.log" \
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

# The list: each run's functions by their own instructions, the NATS run's first.
python3 - "$work/nats.out" "$work/amqp.out" > scripts/hot-functions.txt <<'EOF'
import collections, re, sys
print("# Functions a release build of ricochet ran, hottest first: the order")
print("# scripts/link-hot-first lays them out in. Generated by scripts/hot-functions.sh;")
print("# edit that, not this.")
listed = set()
for path in sys.argv[1:]:
    cost = collections.Counter()
    names, current, after_call = {}, None, False
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, id, name = m.groups()
            if name is not None:
                names[id] = name
            if kind == "fn":
                current, after_call = names.get(id), False
            else:
                cost[names.get(id)] += 0
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
        key = re.sub(r"\.llvm\.\d+$", "", name)
        if key not in listed:
            listed.add(key)
            print(key)
EOF
echo "scripts/hot-functions.txt: $(grep -vc '^#' scripts/hot-functions.txt) functions"
