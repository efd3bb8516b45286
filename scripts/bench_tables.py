#!/usr/bin/env python3
"""Prints the tables of docs/src/benchmarks.md ("One run") from a bench run's JSON
(python3 stdlib only), so the page shows one run's figures exactly as measured.

    cargo run --release -p caching-tests --all-features --bin bench -- --json run.json
    python3 scripts/bench_tables.py run.json

Figures the run skipped (a server or feature missing) print as a dash.
"""

import json
import sys


def main(path):
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    metrics = run.get("metrics", {})
    ratios = run.get("ratios", {})

    def m(name):
        v = metrics.get(name)
        return None if v is None else v["value"]

    def us(v):
        if v is None:
            return "-"
        if v >= 100:
            return f"{v:.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"

    def read(name):
        p50, p99 = m(f"{name}_p50"), m(f"{name}_p99")
        if p50 is None:
            return "-"
        return f"{us(p50)} ({us(p99)})"

    def cost(name):
        v, p99 = m(name), m(f"{name}_p99")
        if v is None:
            return "-"
        return f"{us(v)} ({us(p99)})"

    def ratio(name, digits=2):
        v = ratios.get(name)
        return "-" if v is None else f"{v:.{digits}f}"

    def trips(name):
        v = m(name)
        return "-" if v is None else f"{v:.0f}"

    out = []
    out.append("| read | uncached | locmem hit | memcached hit | Redis hit | floor: locmem | memcached | Redis |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for db, label in [("sqlite", "SQLite"), ("pg", "PostgreSQL")]:
        for what, wlabel in [("pk", "by pk"), ("list100", "100 rows"), ("count", "count")]:
            cells = [read(f"{db}_{what}_uncached")]
            cells += [read(f"{db}_{s}_{what}_hit") for s in ("locmem", "memcached", "redis")]
            if what == "count":
                cells += ["", "", ""]
            else:
                cells += [us(m(f"floor_{s}_{what}_p50")) for s in ("locmem", "memcached", "redis")]
            out.append(f"| {label}, {wlabel} | " + " | ".join(cells) + " |")
    out.append("")

    out.append("| figure | this run | target |")
    out.append("|---|---:|---:|")
    targets = [
        ("`hit_vs_floor_list100` (memcached hit / floor, 100 rows)", ratio("hit_vs_floor_list100"), "≤ 1.15"),
        ("`hit_vs_floor_pk`", ratio("hit_vs_floor_pk"), "≤ 1.15"),
        ("`pg_uncached_vs_locmem_hit` (100 rows)", ratio("pg_uncached_vs_locmem_hit", 1), "≥ 30"),
        ("`miss_fill_vs_uncached` (PostgreSQL + memcached, 100 rows)", ratio("miss_fill_vs_uncached"), "≤ 2.0"),
        ("`miss_round_trips`", trips("miss_round_trips"), "≤ 3"),
        ("`save_round_trips` (a row in one cached query)", trips("save_round_trips"), "≤ 4"),
        (
            "`invalidate_k{1,10,100,1000}_round_trips`",
            ", ".join(trips(f"invalidate_k{k}_round_trips") for k in (1, 10, 100, 1000)),
            "flat in K",
        ),
        (
            "`fanout_{10,100,1000}_round_trips`",
            ", ".join(trips(f"fanout_{n}_round_trips") for n in (10, 100, 1000)),
            "flat in children",
        ),
        ("`invalidate_k100_memcached`", f"{us(m('invalidate_k100_memcached'))} µs", "≤ 1 ms"),
        (
            "`threads2_vs_threads1` (locmem)",
            f"{ratio('threads2_vs_threads1')} (calibration {ratio('cpu_threads2_vs_threads1')})",
            "≥ 1.8",
        ),
        ("`codec_decode_100`", f"{us(m('codec_decode_100'))} µs", "≤ 2 µs"),
        ("`key_derivation_100`", f"{us(m('key_derivation_100'))} µs", "≤ 3 µs"),
    ]
    for name, value, target in targets:
        out.append(f"| {name} | {value} | {target} |")
    out.append("")

    out.append("| database | uncached | locmem miss + fill | memcached | Redis | round trips |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for db, label in [("sqlite", "SQLite"), ("pg", "PostgreSQL")]:
        base = m(f"{db}_list100_uncached_miss_phase_p50")
        cells = [read(f"{db}_list100_uncached_miss_phase")]
        for s in ("locmem", "memcached", "redis"):
            cell = read(f"{db}_{s}_list100_miss_fill")
            v = m(f"{db}_{s}_list100_miss_fill_p50")
            if v is not None and base:
                cell += f": {v / base:.2f}×"
            cells.append(cell)
        cells.append(trips(f"{db}_memcached_list100_miss_fill_round_trips"))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")

    out.append("| save of | round trips | locmem | memcached | Redis |")
    out.append("|---|---:|---:|---:|---:|")
    rows = [("save_one", "a row in 1 cached query")]
    rows += [(f"invalidate_k{k}", f"a row in {k} cached queries") for k in (10, 100, 1000)]
    rows += [(f"fanout_{n}", f"a child of a parent with {n} cached children") for n in (10, 100, 1000)]
    for prefix, label in rows:
        t = trips(f"{prefix}_memcached_round_trips")
        cells = [cost(f"{prefix}_{s}") for s in ("locmem", "memcached", "redis")]
        out.append(f"| {label} | {t} | " + " | ".join(cells) + " |")
    out.append("")

    out.append("| database | cache | default hit, 100 rows | eviction-safe | cost | default hit, by pk | eviction-safe |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for db, label in [("sqlite", "SQLite"), ("pg", "PostgreSQL")]:
        for s, slabel in [("locmem", "locmem"), ("memcached", "memcached"), ("redis", "Redis")]:
            d, e = m(f"{db}_{s}_list100_hit_p50"), m(f"{db}_{s}_safe_list100_hit_p50")
            c = f"{e / d:.1f}×" if d and e else "-"
            cells = [us(d), us(e), c, us(m(f"{db}_{s}_pk_hit_p50")), us(m(f"{db}_{s}_safe_pk_hit_p50"))]
            out.append(f"| {label} | {slabel} | " + " | ".join(cells) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench_tables.py RUN.json")
    main(sys.argv[1])
