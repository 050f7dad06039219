#!/usr/bin/env python3
"""An independent AMQP client for ricochet's tests (pika, not ricochet's own code).

    amqp_client.py '<json command>'

prints one JSON document on stdout. Commands (field "op"):

- rpc: publishes `count` requests (confirmed) at `rate` per second to `exchange` (default
  "") with `routing_key`, each with a unique correlation_id and reply_to (an exclusive
  queue of this client, RabbitMQ's direct reply-to with "direct": true, or the queue
  "reply_to" names), and collects
  the replies until every request is answered or `timeout` seconds pass. Prints what was
  sent and answered, duplicates, missing ids and the first replies in full.
  Headers: "headers" (a JSON object, pika's own encoding), or "table": typed entries
  [name, type, value] written with the AMQP field type given (see `encode_entries`), so a
  test can send every field type RabbitMQ carries, also those pika has no Python type for.
  "timestamps" and "expirations": one per request (null for none), its `timestamp`
  property (whole seconds since the Unix epoch) and `expiration` (milliseconds, as text).
- cases: for each of `cases` ({"name", "table"}) publishes one request (body and
  correlation id = the name) and waits for its reply, then one good request
  ("good-after-<name>") and waits for that: prints both replies per case.
- declare: exchanges [[name, type]], queues [name], bindings [[queue, exchange, key]].
- get: takes up to `count` messages from `queue`, waiting up to `timeout` seconds.

Every message printed has "headers" (name -> value, text decoded leniently) and "table":
its header table as it came off the wire, entry by entry in order: [name, type, value,
raw], raw being the hex of the entry's type and value bytes (ricochet's copies are checked
byte for byte with it).
- depth: message and consumer counts of `queues`.
- delete: queues and exchanges.
"""

import json
import struct
import sys
import time
import uuid

import pika
import pika.data


def to_bytes(value):
    """Text, {"hex": "..."} or {"repeat": text, "times": n} as bytes."""
    if isinstance(value, str):
        return value.encode()
    if "hex" in value:
        return bytes.fromhex(value["hex"])
    return (value["repeat"] * value["times"]).encode()


FIXED = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q",
         "f": ">f", "d": ">d", "T": ">Q"}


def encode_value(kind, value):
    """One AMQP field value of type `kind` (RabbitMQ's letters), its type octet first."""
    if kind == "t":
        body = struct.pack(">B", 1 if value else 0)
    elif kind in FIXED:
        body = struct.pack(FIXED[kind], value)
    elif kind == "D":
        # [scale, value]: the value signed, as pika and the Java client write it.
        body = struct.pack(">Bi", value[0], value[1])
    elif kind in ("S", "x"):
        data = to_bytes(value)
        body = struct.pack(">I", len(data)) + data
    elif kind == "F":
        data = encode_entries(value)
        body = struct.pack(">I", len(data)) + data
    elif kind == "A":
        data = b"".join(encode_value(k, v) for k, v in value)
        body = struct.pack(">I", len(data)) + data
    elif kind == "V":
        body = b""
    else:
        raise ValueError(f"unknown field type {kind!r}")
    return kind.encode() + body


def encode_entries(entries):
    """A field table's content: [name, type, value] entries, names as text or {"hex"}."""
    out = b""
    for name, kind, value in entries:
        name = to_bytes(name)
        out += struct.pack(">B", len(name)) + name + encode_value(kind, value)
    return out


class RawTable(dict):
    """A header table pika sends as the bytes given (see the encode_table patch)."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw


def decode_entries(data):
    """A field table's content as [name, type, value, raw hex] entries, in wire order."""
    entries, offset = [], 0
    while offset < len(data):
        length = data[offset]
        name = data[offset + 1:offset + 1 + length]
        offset += 1 + length
        start = offset
        kind, value, offset = decode_value(data, offset)
        try:
            name = name.decode()
        except UnicodeDecodeError:
            name = {"hex": name.hex()}
        entries.append([name, kind, value, data[start:offset].hex()])
    return entries


def decode_value(data, offset):
    kind = chr(data[offset])
    offset += 1
    if kind == "t":
        return kind, data[offset] != 0, offset + 1
    if kind in FIXED:
        size = struct.calcsize(FIXED[kind])
        value = struct.unpack_from(FIXED[kind], data, offset)[0]
        return kind, value, offset + size
    if kind == "D":
        scale, value = struct.unpack_from(">Bi", data, offset)
        return kind, [scale, value], offset + 5
    if kind == "V":
        return kind, None, offset
    length = struct.unpack_from(">I", data, offset)[0]
    body = data[offset + 4:offset + 4 + length]
    end = offset + 4 + length
    if kind in ("S", "x"):
        return kind, body.decode("utf-8", "replace"), end
    if kind == "F":
        return kind, decode_entries(body), end
    if kind == "A":
        items, at = [], 0
        while at < len(body):
            k, v, at = decode_value(body, at)
            items.append([k, v])
        return kind, items, end
    raise ValueError(f"unknown field type {kind!r}")


def pika_encode_table(pieces, table):
    if isinstance(table, RawTable):
        pieces.append(struct.pack(">I", len(table.raw)))
        pieces.append(table.raw)
        return 4 + len(table.raw)
    return ORIGINAL_ENCODE_TABLE(pieces, table)


def pika_decode_table(encoded, offset):
    """Every table pika reads (message headers among them) with its entries kept as they
    came: pika's own decoding folds field types together and cannot read some values."""
    size = struct.unpack_from(">I", encoded, offset)[0]
    entries = decode_entries(bytes(encoded[offset + 4:offset + 4 + size]))
    table = as_dict(entries)
    table.entries = entries
    return table, offset + 4 + size


def as_dict(entries):
    """Entries as the dict pika would give (nested tables as dicts too)."""
    table = RawTable(b"")
    for name, kind, value, _raw in entries:
        table[name if isinstance(name, str) else name["hex"]] = plain(kind, value)
    return table


def plain(kind, value):
    if kind == "F":
        return as_dict(value)
    if kind == "A":
        return [plain(k, v) for k, v in value]
    return value


ORIGINAL_ENCODE_TABLE = pika.data.encode_table
pika.data.encode_table = pika_encode_table
pika.data.decode_table = pika_decode_table


def headers_of(cmd):
    if "table" in cmd:
        return RawTable(encode_entries(cmd["table"]))
    return cmd.get("headers") or None


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def message(method, props, body):
    headers = {}
    for name, value in (props.headers or {}).items():
        headers[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return {
        "table": getattr(props.headers, "entries", []),
        "routing_key": method.routing_key,
        "exchange": method.exchange,
        "correlation_id": props.correlation_id,
        "content_type": props.content_type,
        "delivery_mode": props.delivery_mode,
        "headers": headers,
        "body": body.decode("utf-8", "replace"),
    }


def rpc(cmd):
    conn = connect(cmd["url"])
    ch = conn.channel()
    ch.confirm_delivery()
    if cmd.get("direct"):
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = ch.queue_declare(queue="", exclusive=True).method.queue
    listen = reply_to
    reply_to = cmd.get("reply_to", reply_to)
    answered = {}
    replies = []

    def on_reply(_ch, method, props, body):
        answered[props.correlation_id] = answered.get(props.correlation_id, 0) + 1
        if len(replies) < cmd.get("keep", 5):
            replies.append(message(method, props, body))

    # Direct reply-to needs the consumer (auto-ack) before the first publish.
    ch.basic_consume(queue=listen, on_message_callback=on_reply, auto_ack=True)
    count = cmd.get("count", 1)
    rate = cmd.get("rate", 0)
    prefix = cmd.get("prefix", uuid.uuid4().hex[:8])
    headers = headers_of(cmd)
    sent = []
    start = time.monotonic()
    for i in range(count):
        cid = f"{prefix}-{i}"
        props = pika.BasicProperties(
            reply_to=reply_to,
            correlation_id=cid,
            content_type=cmd.get("content_type"),
            message_id=cmd.get("message_id_prefix", "m") + f"-{prefix}-{i}",
            headers=headers,
            delivery_mode=2,
            # Per message, when given: the `timestamp` property (whole seconds) and the
            # `expiration` property (milliseconds, as text).
            timestamp=(cmd.get("timestamps") or [None] * count)[i],
            expiration=(cmd.get("expirations") or [None] * count)[i],
        )
        body = cmd.get("body", f"request {i}").encode()
        ch.basic_publish(cmd.get("exchange", ""), cmd["routing_key"], body, props)
        sent.append(cid)
        if rate:
            due = start + (i + 1) / rate
            while time.monotonic() < due:
                conn.process_data_events(time_limit=max(0.0, due - time.monotonic()))
        else:
            conn.process_data_events(time_limit=0)
    deadline = time.monotonic() + cmd.get("timeout", 30)
    while len(answered) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    # Late duplicates: a short wait after the last answer.
    settle = time.monotonic() + cmd.get("linger", 0)
    while time.monotonic() < settle:
        conn.process_data_events(time_limit=0.05)
    conn.close()
    missing = [c for c in sent if c not in answered]
    return {
        "sent_table": decode_entries(headers.raw) if isinstance(headers, RawTable) else None,
        "sent": len(sent),
        "answered": len(answered),
        "duplicates": sum(n - 1 for n in answered.values()),
        "unknown": [c for c in answered if c not in set(sent)][:10],
        "missing": missing[:10],
        "missing_count": len(missing),
        "seconds": round(time.monotonic() - start, 3),
        "replies": replies,
    }


def cases(cmd):
    conn = connect(cmd["url"])
    ch = conn.channel()
    ch.confirm_delivery()
    reply_to = ch.queue_declare(queue="", exclusive=True).method.queue
    replies = {}

    def on_reply(_ch, method, props, body):
        replies[props.correlation_id] = message(method, props, body)

    ch.basic_consume(queue=reply_to, on_message_callback=on_reply, auto_ack=True)

    def call(name, headers):
        props = pika.BasicProperties(reply_to=reply_to, correlation_id=name,
                                     message_id=f"m-{name}", headers=headers, delivery_mode=2)
        ch.basic_publish(cmd.get("exchange", ""), cmd["routing_key"], name.encode(), props)
        deadline = time.monotonic() + cmd.get("timeout", 10)
        while name not in replies and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        return replies.get(name)

    out = []
    for case in cmd["cases"]:
        reply = call(case["name"], RawTable(encode_entries(case["table"])))
        good = call("good-after-" + case["name"], {"x-good": "yes"})
        sent = decode_entries(encode_entries(case["table"]))
        out.append({"name": case["name"], "sent": sent, "reply": reply, "good": good})
    conn.close()
    return {"cases": out}


def declare(cmd):
    conn = connect(cmd["url"])
    ch = conn.channel()
    for name, kind in cmd.get("exchanges", []):
        ch.exchange_declare(exchange=name, exchange_type=kind, durable=True)
    for name in cmd.get("queues", []):
        ch.queue_declare(queue=name, durable=True, arguments=cmd.get("arguments"))
    for queue, exchange, key in cmd.get("bindings", []):
        ch.queue_bind(queue=queue, exchange=exchange, routing_key=key)
    conn.close()
    return {"ok": True}


def get(cmd):
    conn = connect(cmd["url"])
    ch = conn.channel()
    out = []
    deadline = time.monotonic() + cmd.get("timeout", 5)
    while len(out) < cmd.get("count", 1) and time.monotonic() < deadline:
        method, props, body = ch.basic_get(cmd["queue"], auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        out.append(message(method, props, body))
    conn.close()
    return {"messages": out}


def depth(cmd):
    conn = connect(cmd["url"])
    ch = conn.channel()
    out = {}
    for name in cmd["queues"]:
        try:
            q = ch.queue_declare(queue=name, passive=True).method
            out[name] = {"messages": q.message_count, "consumers": q.consumer_count}
        except pika.exceptions.ChannelClosedByBroker:
            out[name] = None
            ch = conn.channel()
    conn.close()
    return out


def delete(cmd):
    conn = connect(cmd["url"])
    ch = conn.channel()
    for name in cmd.get("queues", []):
        ch.queue_delete(queue=name)
    for name in cmd.get("exchanges", []):
        ch.exchange_delete(exchange=name)
    conn.close()
    return {"ok": True}


if __name__ == "__main__":
    command = json.loads(sys.argv[1])
    ops = {"rpc": rpc, "cases": cases, "declare": declare, "get": get, "depth": depth, "delete": delete}
    print(json.dumps(ops[command["op"]](command)))
