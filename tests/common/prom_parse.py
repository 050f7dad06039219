#!/usr/bin/env python3
"""Parses Prometheus text format from stdin with prometheus_client's own parser (an
implementation independent of ricochet's exporter) and prints its samples as JSON:
[{"family": ..., "type": ..., "name": ..., "labels": {...}, "value": ...}, ...].
A line the parser does not accept fails the run."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({
            "family": family.name,
            "type": family.type,
            "name": sample.name,
            "labels": sample.labels,
            "value": sample.value,
        })
print(json.dumps(samples))
