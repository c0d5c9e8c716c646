#!/usr/bin/env bash
# Runs `cargo bench --bench limit_stores --features redis,postgres,testing` and prints the
# store-backed limiters' figures as a markdown table of ratios to baselines measured in the
# same run (see benches/limit_stores.rs for what each row is):
#
#   verify with one limit (Redis limiter)  vs  a bare EVALSHA of the same script
#   verify with one limit (PG limiter)     vs  the bare statement through sqlx
#   Redis round trips per verified request (commands sent, counted by a TCP proxy)
#
#   bash benches/limit_stores.sh            # bench, then print the table
#   bash benches/limit_stores.sh --table    # only print the table of the last run
#
# Starts a private redis-server on port ${LIMIT_BENCH_REDIS_PORT:-6391} (no persistence,
# data in a temp dir) so the command count sees no other client, and stops it at the end.
# The PostgreSQL rows need KEYGATE_TEST_POSTGRES_URL. Table also in
# target/criterion/limit-stores-table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

run=1
[[ "${1:-}" == "--table" ]] && run=0

port=${LIMIT_BENCH_REDIS_PORT:-6391}
if ((run)); then
  started=0
  if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
    dir=$(mktemp -d /tmp/keygate-limit-bench-redis.XXXXXX)
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$dir" --pidfile "$dir/redis.pid" >/dev/null
    started=1
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
  fi
  KEYGATE_BENCH_REDIS_URL="redis://127.0.0.1:$port/" \
    cargo bench --bench limit_stores --features redis,postgres,testing
fi

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
  echo target)

python3 - "$target_dir/criterion" <<'PY' | tee "$target_dir/criterion/limit-stores-table.md"
import json, os, sys
root = sys.argv[1]

def load(*parts):
    try:
        with open(os.path.join(root, *parts)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None

def median(group, side):
    est = load(group, side, "new", "estimates.json")
    return est["median"]["point_estimate"] if est else None

def us(ns):
    return "—" if ns is None else f"{ns / 1000:.1f} µs"

def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.3f}"

print("| group | measured | median | baseline | baseline median | interleaved ratio | ratio of medians | also: verify without limit |")
print("|---|---|---|---|---|---|---|---|")
for group, base in [("limit_redis", "bare_evalsha"), ("limit_pg", "bare_statement")]:
    m, b, n = median(group, "verify_limit"), median(group, base), median(group, "verify_nolimit")
    p = load(group, "paired", "verify_limit.json")
    pr = "—" if not p else f"{p['median_ratio']:.3f} ({p['pairs']} pairs)"
    print(f"| {group} | verify_limit | {us(m)} | {base} | {us(b)} | {pr} | {ratio(m, b)} | {us(n)} |")
rt = load("limit_stores", "round_trips.json")
print()
if rt:
    print(f"Redis: {rt['requests']} verifies with one limit sent {rt['client_commands']} commands "
          f"(counting proxy): **{rt['round_trips_per_request']:.3f} round trips per request** (target 1). "
          f"Redis ran {rt['server_commands']} commands in all ({rt['evalsha']} EVALSHA, the rest inside the script: "
          + ", ".join(f"{k} {v}" for k, v in sorted(rt['server_commands_by_name'].items())) + ").")
else:
    print("Redis round trips: not measured (no Redis).")
PY
