#!/usr/bin/env python3
"""An independent client of the NATS micro services API for ricochet's tests (nats-py).

    micro_client.py <nats url> <service name>

Finds the one instance of `name` (PING by name), then sends PING, INFO and STATS to all three subject levels ($SRV.<VERB>, $SRV.<VERB>.<name>,
$SRV.<VERB>.<name>.<id>), collects every answer for a moment, keeps those of `name`, parses
each with nats-py's own response types (which raise on a missing field) and prints
{"PING": {"all": [...], "name": [...], "id": [...]}, "INFO": ..., "STATS": ...}.
"""

import asyncio
import json
import sys

import nats
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

TYPES = {"PING": ServicePing, "INFO": ServiceInfo, "STATS": ServiceStats}


async def collect(nc, subject, wait=0.5):
    inbox = nc.new_inbox()
    answers = []
    sub = await nc.subscribe(inbox, cb=None)
    await nc.publish(subject, b"", reply=inbox)
    end = asyncio.get_running_loop().time() + wait
    while True:
        left = end - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            msg = await sub.next_msg(timeout=left)
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            break
        answers.append(json.loads(msg.data))
    await sub.unsubscribe()
    return answers


async def main(url, name):
    nc = await nats.connect(url)
    instances = await collect(nc, f"$SRV.PING.{name}")
    if len(instances) != 1:
        raise SystemExit(f"expected one instance of {name}, found {len(instances)}")
    service_id = instances[0]["id"]
    out = {"id": service_id}
    for verb, kind in TYPES.items():
        levels = {
            "all": f"$SRV.{verb}",
            "name": f"$SRV.{verb}.{name}",
            "id": f"$SRV.{verb}.{name}.{service_id}",
        }
        out[verb] = {}
        for level, subject in levels.items():
            answers = [a for a in await collect(nc, subject) if a.get("name") == name]
            for answer in answers:
                if answer.get("type") != f"io.nats.micro.v1.{verb.lower()}_response":
                    raise SystemExit(f"{subject}: wrong type {answer.get('type')!r}")
            out[verb][level] = [kind.from_dict(a).to_dict() for a in answers]
    await nc.close()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
