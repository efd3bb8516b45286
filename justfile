# Developer shortcuts. Nothing in the README depends on `just`.

export MEMCACHED_URL := env_var_or_default("MEMCACHED_URL", "memcached://127.0.0.1:11211")
export PG_DATABASE_URL := env_var_or_default("PG_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
export MYSQL_DATABASE_URL := env_var_or_default("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1:3306/test")

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

# Benchmarks (cached vs uncached reads, invalidation cost).
bench:
    cargo run --release -p caching-tests --all-features --bin bench

# The stress harness: 8 readers, 2 writers, 60 s on PostgreSQL + memcached.
stress:
    cargo run --release -p caching-tests --all-features --bin stress -- --seconds 60 --readers 8 --writers 2

# Every fault mode of the stress harness for 60 s each, on private memcached servers (evict
# twice: the default mode, whose stale results are the documented exposure, and eviction-safe).
chaos:
    for mode in none restart stall stall2 evict "evict --eviction-safe" corrupt; do \
        echo "== stress --fault $mode"; \
        cargo run -q --release -p caching-tests --all-features --bin stress -- \
            --seconds 60 --readers 8 --writers 2 --fault $mode || exit 1; \
    done

# API docs.
doc:
    cargo doc --workspace --all-features --no-deps
