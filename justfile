# Developer shortcuts. Nothing in the README depends on `just`.

export MEMCACHED_URL := env_var_or_default("MEMCACHED_URL", "memcached://127.0.0.1:11211")
export PG_DATABASE_URL := env_var_or_default("PG_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
export MYSQL_DATABASE_URL := env_var_or_default("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1:3306/test")
export REDIS_URL := env_var_or_default("REDIS_URL", "redis://127.0.0.1:6379")

# Tests that need no server (bundled SQLite, locmem).
test:
    cargo test --workspace

# Every suite, with the servers (run `just services` first).
test-all:
    cargo test --workspace --all-features

# Start memcached on 127.0.0.1:11211 (as root it needs -u root).
services:
    (exec 3<>/dev/tcp/127.0.0.1/11211) 2>/dev/null || memcached -u root -d -l 127.0.0.1 -p 11211 -m 1024

# What CI runs.
ci:
    bash .ci/run

# The benchmark runner: every figure and ratio of docs/src/benchmarks.md in one run (a few
# minutes). Pass arguments through: `just bench --quick`, `just bench --json run.json`,
# `just bench --mix`.
bench *ARGS:
    cargo run --release -p caching-tests --all-features --bin bench -- {{ARGS}}

# A full run written to target/bench.json, the size-sweep plot of the docs drawn from it, and
# the tables of docs/src/benchmarks.md ("One run") printed from it.
bench-plot:
    cargo run --release -p caching-tests --all-features --bin bench -- --json target/bench.json
    python3 scripts/plot_bench.py target/bench.json docs/src/bench-hit-vs-size.svg
    python3 scripts/bench_tables.py target/bench.json

# Database queries per refill of a hot entry, 2 processes x 50 readers, lease on and off.
stampede:
    cargo run --release -p caching-tests --all-features --bin stampede

# Criterion benches of the hot functions (key derivation, payload decoding, locmem get).
bench-hot:
    cargo bench -p caching-tests --bench hot

# The stress harness: 8 readers, 2 writers, 60 s on PostgreSQL + memcached.
stress:
    cargo run --release -p caching-tests --all-features --bin stress -- --seconds 60 --readers 8 --writers 2

# The same with writes moving add-ons between the `author2_id` lists readers read.
stress-moving:
    cargo run --release -p caching-tests --all-features --bin stress -- --seconds 60 --readers 8 --writers 2 --moving

# The moving-rows stress run on Redis (REDIS_URL).
stress-redis:
    cargo run --release -p caching-tests --all-features --bin stress -- --seconds 60 --readers 8 --writers 2 --moving --redis

# The stress harness's async mode: the runs of `stress` and `stress-moving` with their readers
# and writers as tokio tasks (8 per reader and writer: 64 + 16 tasks on 2 worker threads, an
# AsyncCachedConnection each), one write in ten cancelled by a tiny timeout.
stress-async:
    cargo run --release -p caching-tests --all-features --bin stress -- --seconds 60 --readers 8 --writers 2 --async
    cargo run --release -p caching-tests --all-features --bin stress -- --seconds 60 --readers 8 --writers 2 --async --moving

# Every fault mode of the stress harness for 60 s each, in the default and the eviction-safe
# mode, on private memcached servers (default-mode evict reports its documented exposure).
chaos:
    for mode in restart stall stall2 corrupt evict; do \
        for safe in "" --eviction-safe; do \
            echo "== stress --fault $mode $safe"; \
            cargo run -q --release -p caching-tests --all-features --bin stress -- \
                --seconds 60 --readers 8 --writers 2 --fault $mode $safe || exit 1; \
        done; \
    done

# API docs.
doc:
    cargo doc --workspace --all-features --no-deps
