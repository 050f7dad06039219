#!/usr/bin/env python3
"""Avro for ricochet's tests, written and read by fastavro: an implementation independent of
ricochet's, so that a bug shared by ricochet's encoder and decoder cannot hide.

    avro_tool.py encode SCHEMA ID RECORD_JSON [--ref SCHEMA]...  -> hex of the wire format
    avro_tool.py decode SCHEMA HEX [--ref SCHEMA]...             -> {"id": N, "record": {...}}

The wire format is Confluent's: byte 0, the schema id as 4 bytes big-endian, the Avro body.
"""
import io
import json
import struct
import sys

import fastavro


def parse(schema, refs):
    named = {}
    for ref in refs:
        fastavro.parse_schema(json.loads(ref), named_schemas=named)
    return fastavro.parse_schema(json.loads(schema), named_schemas=named)


def main(argv):
    refs = [argv[i + 1] for i, a in enumerate(argv) if a == "--ref"]
    args = [a for i, a in enumerate(argv) if a != "--ref" and (i == 0 or argv[i - 1] != "--ref")]
    command = args[0]
    if command == "encode":
        schema, schema_id, record = args[1], int(args[2]), json.loads(args[3])
        out = io.BytesIO()
        out.write(struct.pack(">bI", 0, schema_id))
        fastavro.schemaless_writer(out, parse(schema, refs), record)
        print(out.getvalue().hex())
    elif command == "decode":
        schema, wire = args[1], bytes.fromhex(args[2])
        magic, schema_id = struct.unpack(">bI", wire[:5])
        assert magic == 0, "not the Confluent wire format"
        body = io.BytesIO(wire[5:])
        record = fastavro.schemaless_reader(body, parse(schema, refs))
        assert body.read() == b"", "bytes after the record"
        print(json.dumps({"id": schema_id, "record": record}))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
