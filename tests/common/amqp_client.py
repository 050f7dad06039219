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
- declare: exchanges [[name, type]], queues [name], bindings [[queue, exchange, key]].
- get: takes up to `count` messages from `queue`, waiting up to `timeout` seconds.
- depth: message and consumer counts of `queues`.
- delete: queues and exchanges.
"""

import json
import sys
import time
import uuid

import pika


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def message(method, props, body):
    headers = {}
    for name, value in (props.headers or {}).items():
        headers[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return {
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
    headers = cmd.get("headers") or None
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
        "sent": len(sent),
        "answered": len(answered),
        "duplicates": sum(n - 1 for n in answered.values()),
        "unknown": [c for c in answered if c not in set(sent)][:10],
        "missing": missing[:10],
        "missing_count": len(missing),
        "seconds": round(time.monotonic() - start, 3),
        "replies": replies,
    }


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
    ops = {"rpc": rpc, "declare": declare, "get": get, "depth": depth, "delete": delete}
    print(json.dumps(ops[command["op"]](command)))
