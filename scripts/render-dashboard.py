#!/usr/bin/env python3
"""Draws the Grafana dashboard's panels from Prometheus answers, where Grafana itself is not
installed: tests/observability/dashboard.rs writes each panel's query_range results to a JSON
file, this script plots them (timeseries as lines, stats as their last value, tables as rows).

usage: render-dashboard.py PANELS.json OUT.png
"""
import json
import math
import re
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = 4


def legend(series):
    labels = series.get("metric") or {}
    fmt = series.get("legend") or ""
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    shown = {k: v for k, v in labels.items() if k not in ("job", "instance", "__name__")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "value"


def points(series):
    out = []
    for t, v in series.get("values", []):
        v = float(v)
        if not math.isnan(v):
            out.append((datetime.fromtimestamp(float(t), tz=timezone.utc), v))
    return out


def human(value, unit):
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024:
                return f"{value:.3g} {suffix}"
            value /= 1024
        return f"{value:.3g} PiB"
    if unit == "percentunit":
        return f"{value * 100:.3g} %"
    if unit == "s":
        return f"{value:.3g} s"
    return f"{value:.4g}"


def draw(ax, panel):
    ax.set_title(panel["title"], fontsize=9)
    series = panel["series"]
    kind = panel["type"]
    if kind == "stat":
        values = [p[-1][1] for p in map(points, series) if p]
        text = human(sum(values), panel.get("unit", "")) if values else "no data"
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=20, transform=ax.transAxes)
        ax.axis("off")
        return
    if kind == "table":
        rows = [f"{legend(s)}: {points(s)[-1][1]:g}" for s in series if points(s)]
        ax.text(0.05, 0.9, "\n".join(rows) or "no data", va="top", fontsize=8,
                transform=ax.transAxes, family="monospace")
        ax.axis("off")
        return
    drawn = [(s, points(s)) for s in series]
    # Series that stay at zero (counters started at 0 for every label) only clutter the legend.
    if any(v != 0 for _, p in drawn for _, v in p):
        drawn = [(s, p) for s, p in drawn if any(v != 0 for _, v in p)]
    for s, p in drawn:
        if p:
            ax.plot([t for t, _ in p], [v for _, v in p], label=legend(s)[:40], linewidth=1)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper left")


def main():
    data = json.load(open(sys.argv[1]))
    panels = data["panels"]
    rows = math.ceil(len(panels) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * 4.2, rows * 2.6))
    for ax, panel in zip(axes.flat, panels):
        draw(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(data.get("title", ""), fontsize=12)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=80)


if __name__ == "__main__":
    main()
