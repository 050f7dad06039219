#!/usr/bin/env bash
# Soak: one ricochet serving a core NATS, a JetStream, a Kafka and an AMQP route at a fixed load
# (100 requests/s on each) for SECONDS (default 60); fails unless every request is answered
# and, after the first quarter, RSS and open file descriptors stay within 10%.
# Uses the test suite's brokers (its own nats-server and tansu, or NATS_URL and KAFKA_BROKERS) and RabbitMQ.
#   scripts/soak.sh          # 60 s, as CI runs it
#   scripts/soak.sh 3600     # an hour
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
RICOCHET_SOAK_SECS="$seconds" cargo test --test soak -- --nocapture 2>&1 | tee /tmp/ricochet-soak.log
grep -q "^RELIABILITY soak ${seconds}s" /tmp/ricochet-soak.log
