#!/usr/bin/env bash
# Runs `cargo bench --bench local_first` (see benches/local_first.rs): LocalFirst's measured
# overshoot beside its documented bound (N simulated nodes, deterministic), and the latency
# of a local-first check beside the exact store check it replaces on the request path.
#
#   bash benches/local_first.sh                  # MemoryLimiter only
#   KEYGATE_TEST_REDIS_URL=redis://127.0.0.1:6379/ \
#   KEYGATE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/kg_bench \
#     bash benches/local_first.sh --stores       # plus RedisStore and PostgresStore rows
#
# The table is printed and written to target/local-first-table.md, with `uptime` before it.
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
[[ "${1:-}" == "--stores" ]] && features=(--features redis,postgres)
echo "load: $(uptime)"
cargo bench --bench local_first "${features[@]}"
