#!/usr/bin/env python3
"""Draws the panels of deploy/grafana/dashboards/ricochet.json without Grafana.

Each panel's own PromQL queries are evaluated by a Prometheus that scraped ricochet (its
HTTP API, query_range), and drawn with matplotlib, one chart a panel, in the dashboard's
order. It is not a Grafana screenshot: the layout and styling are matplotlib's; the series
are what the dashboard's queries return. docs/operations.md shows one made from a demo run.

    scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 6 --out dashboard.png

Needs matplotlib (`pip install matplotlib`). Variables: $route and $instance match every
value; $__rate_interval is --rate-interval (default 10s: four 2 s scrapes, Grafana's rule).
"""

import argparse
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CIRCUIT = {0: "closed", 1: "open", 2: "half-open"}


def query_range(prometheus, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr!r}: {answer}")
    return answer["data"]["result"]


def legend(template, labels):
    text = template or "{{__name__}}"
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate-interval", default="10s")
    parser.add_argument("--out", default="dashboard.png")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/ricochet.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    end = time.time()
    start = end - args.minutes * 60
    step = max(1, int(args.minutes * 60 / 200))

    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(18, 3.1 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(panel["title"], fontsize=10, loc="left")
        drawn = 0
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", args.rate_interval)
                .replace("$route", ".*")
                .replace("$instance", ".*")
            )
            for series in query_range(args.prometheus, expr, start, end, step):
                times = [(float(t) - end) / 60 for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                drawstyle = "steps-post" if panel["type"] == "state-timeline" else "default"
                ax.plot(times, values, drawstyle=drawstyle, linewidth=1.2,
                        label=legend(target.get("legendFormat", ""), series["metric"]))
                drawn += 1
        if panel["type"] == "state-timeline":
            ax.set_yticks(list(CIRCUIT), list(CIRCUIT.values()))
            ax.set_ylim(-0.3, 2.3)
        if drawn == 0:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        elif drawn <= 8:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.01, 0.97, f"{drawn} series", transform=ax.transAxes, va="top",
                    fontsize=7, color="grey")
        ax.tick_params(labelsize=7)
        ax.set_xlim(-args.minutes, 0)
        ax.set_xlabel("minutes before the end of the run", fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(
        "ricochet dashboard (deploy/grafana/dashboards/ricochet.json): its queries evaluated by "
        "Prometheus, drawn with matplotlib, not a Grafana screenshot" + (f"\n{args.note}" if args.note else ""),
        fontsize=12,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.985 if not args.note else 0.975))
    figure.savefig(args.out, dpi=55)
    print(f"{args.out}: {len(panels)} panels")


if __name__ == "__main__":
    main()
