#!/usr/bin/env python3
"""Draws hit latency against result size from a bench run's JSON (python3 stdlib only).

    cargo run --release -p caching-tests --all-features --bin bench -- --json run.json
    python3 scripts/plot_bench.py run.json [docs/src/bench-hit-vs-size.svg]

Reads the size sweep's metrics, `size_sweep_<series>_<rows>` (the median, in us), and
writes an SVG with log-scale axes, one line per series and a legend.
"""

import json
import math
import re
import sys
from xml.sax.saxutils import escape

DEFAULT_OUT = "docs/src/bench-hit-vs-size.svg"

# Known series: label, colour, dash pattern (none for hits, dashed for the floor, dotted for
# the databases). Unknown series get a grey line and their raw name.
SERIES = {
    "locmem_hit": ("locmem hit", "#1b9e77", ""),
    "memcached_hit": ("memcached hit", "#d95f02", ""),
    "redis_hit": ("Redis hit", "#7570b3", ""),
    "memcached_floor": ("memcached floor (get + decode)", "#d95f02", "6 4"),
    "redis_floor": ("Redis floor (get + decode)", "#7570b3", "6 4"),
    "sqlite_uncached": ("SQLite (in memory), uncached", "#666666", "2 3"),
    "pg_uncached": ("PostgreSQL, uncached", "#e7298a", "2 3"),
}

W, H = 820, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 270, 40, 60


def load_series(path):
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    pattern = re.compile(r"^size_sweep_(.+)_(\d+)$")
    series = {}
    for name, m in run.get("metrics", {}).items():
        match = pattern.match(name)
        if not match:
            continue
        value = m["value"] if isinstance(m, dict) else m
        if value is None or value <= 0:
            continue
        series.setdefault(match.group(1), []).append((int(match.group(2)), float(value)))
    for points in series.values():
        points.sort()
    return run, series


def decades(lo, hi):
    return list(range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1))


def svg(run, series):
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    xd, yd = decades(min(xs), max(xs)), decades(min(ys), max(ys))
    x0, x1, y0, y1 = xd[0], xd[-1], yd[0], yd[-1]
    if x0 == x1:
        x1 += 1
    if y0 == y1:
        y1 += 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        return LEFT + (math.log10(x) - x0) / (x1 - x0) * pw

    def py(y):
        return TOP + ph - (math.log10(y) - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT + pw / 2}" y="22" text-anchor="middle" font-size="14">'
        "Read latency against result size (median, log-log)</text>",
    ]
    # Grid and ticks: decades labelled, 2..9 as light lines.
    for d in range(x0, x1 + 1):
        x = px(10**d)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#ccc"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{10**d:g}</text>')
    for d in range(y0, y1 + 1):
        y = py(10**d)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ccc"/>')
        label = f"{10**d:g}" if d >= 0 else f"{10**d:.{-d}f}"
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        if d < y1:
            for k in range(2, 10):
                yy = py(k * 10**d)
                out.append(
                    f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + pw}" y2="{yy:.1f}" stroke="#eee"/>'
                )
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
    )
    out.append(
        f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">rows in the result</text>'
    )
    out.append(
        f'<text transform="translate(18 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
        "microseconds per read</text>"
    )
    order = [s for s in SERIES if s in series] + sorted(s for s in series if s not in SERIES)
    for i, name in enumerate(order):
        label, colour, dash = SERIES.get(name, (name, "#999999", ""))
        pts = series[name]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>'
        )
        for x, y in pts:
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(label)}: {x} rows, {y:.1f} us</title></circle>"
            )
        ly = TOP + 10 + i * 20
        lx = LEFT + pw + 15
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"{dash_attr}/>'
        )
        out.append(f'<text x="{lx + 34}" y="{ly + 4}">{escape(label)}</text>')
    params = run.get("run", {})
    note = "quick run" if params.get("quick") else "full run"
    out.append(
        f'<text x="{LEFT + pw + 15}" y="{TOP + ph}" fill="#666">{escape(note)}, '
        "bench --json</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 2 if len(argv) < 2 else 0
    out = argv[2] if len(argv) > 2 else DEFAULT_OUT
    run, series = load_series(argv[1])
    if not series:
        print(f"{argv[1]}: no size_sweep_<series>_<rows> metrics", file=sys.stderr)
        return 1
    with open(out, "w", encoding="utf-8") as f:
        f.write(svg(run, series))
    print(f"wrote {out}: {', '.join(sorted(series))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
