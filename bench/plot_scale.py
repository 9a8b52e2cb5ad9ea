"""Plot T4 propagation time against fleet size from `bench/scale.py --json` results.

    python bench/plot_scale.py results.jsonl [more.jsonl ...] --out docs/img/scale-propagation.svg

Each input line is one run's JSON object (as printed by ``scale.py --json``),
or an object with that run under ``"result"`` and a ``"label"``: runs without
a label or labelled ``after`` make the lines, runs labelled ``before`` (the
same benchmark against an earlier server) are drawn as single points. For each
fleet size the plot shows the median over its runs of the p50, p99 and maximum
propagation time (over the agents that are not slow), and the 2 s target (T4).
It writes a small self-contained SVG, so the documentation needs no plotting
library.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 210, 40, 60
TARGET_S = 2.0
HOLLOW = 'fill="none" stroke="#d62728" stroke-width="2"'
SERIES = (
    ("propagation_p50_s", "p50", "#1f77b4", ""),
    ("propagation_p99_s", "p99", "#d62728", ""),
    ("propagation_max_s", "max", "#7f7f7f", "4 3"),
)


def load(paths: Sequence[Path], label: str = "after") -> list[dict[str, Any]]:
    """The runs with a propagation phase labelled ``label`` (a bare run counts as "after")."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "result" in row:
                if row.get("label", "after") != label or row["result"] is None:
                    continue
                row = row["result"]
            elif label != "after":
                continue
            if row.get("propagation_agents"):
                runs.append(row)
    return runs


def medians(runs: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    by_size: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_size[int(run["agents"])].append(run)
    return {
        size: {key: statistics.median(float(r[key]) for r in rows) for key, *_ in SERIES}
        | {"runs": float(len(rows))}
        for size, rows in sorted(by_size.items())
    }


def svg(points: dict[int, dict[str, float]], title: str, before: dict[int, dict[str, float]]) -> str:
    sizes = list(points)
    x_max = max(sizes + list(before)) * 1.05
    everything = list(points.values()) + list(before.values())
    y_max = max([TARGET_S * 1.25] + [p[key] * 1.15 for p in everything for key, *_ in SERIES])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + v / x_max * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / y_max * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{title}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
    ]
    step = 0.5 if y_max <= 4 else 1.0 if y_max <= 8 else 2.0
    tick = 0.0
    while tick <= y_max:
        out.append(
            f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{LEFT + plot_w}" y2="{y(tick):.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
        tick += step
    for size in sizes:
        out.append(
            f'<text x="{x(size):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{size:,}</text>'
        )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">'
        "agents (one server, SQLite)</text>"
    )
    out.append(
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">seconds from commit to acknowledgement</text>'
    )
    out.append(
        f'<line x1="{LEFT}" y1="{y(TARGET_S):.1f}" x2="{LEFT + plot_w}" y2="{y(TARGET_S):.1f}" '
        'stroke="#2ca02c" stroke-dasharray="8 4"/>'
    )
    legend_y = TOP + 10
    out.append(
        f'<line x1="{LEFT + plot_w + 15}" y1="{legend_y}" x2="{LEFT + plot_w + 40}" y2="{legend_y}" '
        'stroke="#2ca02c" stroke-dasharray="8 4"/>'
        f'<text x="{LEFT + plot_w + 45}" y="{legend_y + 4}">T4 target (p99)</text>'
    )
    for i, (key, name, colour, dash) in enumerate(SERIES):
        coords = " ".join(f"{x(s):.1f},{y(points[s][key]):.1f}" for s in sizes)
        dashing = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{dashing}/>')
        for s in sizes:
            out.append(f'<circle cx="{x(s):.1f}" cy="{y(points[s][key]):.1f}" r="3" fill="{colour}"/>')
        ly = legend_y + 20 * (i + 1)
        out.append(
            f'<line x1="{LEFT + plot_w + 15}" y1="{ly}" x2="{LEFT + plot_w + 40}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"{dashing}/>'
            f'<text x="{LEFT + plot_w + 45}" y="{ly + 4}">{name}</text>'
        )
    ly = legend_y + 20 * (len(SERIES) + 1)
    for size, p in before.items():
        bx, by = x(size), y(p["propagation_p99_s"])
        out.append(f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="5" {HOLLOW}/>')
        out.append(f'<text x="{bx - 8:.1f}" y="{by + 4:.1f}" text-anchor="end">before: p99</text>')
    if before:
        out.append(
            f'<circle cx="{LEFT + plot_w + 27}" cy="{ly}" r="5" {HOLLOW}/>'
            f'<text x="{LEFT + plot_w + 45}" y="{ly + 4}">p99, earlier server</text>'
        )
        ly += 20
    notes = ["1% slow agents (+5 s) left out", "runs per size:"]
    notes += [f"{s:,}: {int(p['runs'])}" for s, p in points.items()]
    for i, note in enumerate(notes):
        out.append(f'<text x="{LEFT + plot_w + 15}" y="{ly + 10 + 14 * i}" font-size="11">{note}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path, nargs="+", help="JSON lines from scale.py --json")
    parser.add_argument("--out", type=Path, default=Path("docs/img/scale-propagation.svg"))
    parser.add_argument("--title", default="T4: a change pushed to every agent at once (medians)")
    args = parser.parse_args(argv)
    points = medians(load(args.results))
    if not points:
        parser.error("no run with a propagation phase in the results")
    before = medians(load(args.results, "before"))
    args.out.write_text(svg(points, args.title, before))
    for size, p in points.items():
        print(
            f"{size:>6} agents, {int(p['runs'])} run(s): p50 {p['propagation_p50_s']:.2f} s, "
            f"p99 {p['propagation_p99_s']:.2f} s, max {p['propagation_max_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
