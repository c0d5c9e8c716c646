#!/usr/bin/env bash
# Verify throughput with many keys in PostgreSQL behind the cache (issue 10's scale
# figures): N real opaque keys (default 1e7) bulk-loaded by COPY into a database of the
# script's own, then `Keygate::verify` through `CachedStore<PostgresStore>` at a 99% hit
# rate against the same gate at 100% (interleaved), the cost of one miss against the same
# read with 1e3 keys in the table, the change log's cost per write with the N keys present,
# and memory per cached key. What each part measures: benches/revocation.rs (`scale`,
# `write-cost`, `memory`). Prints the markdown of benches/README.md, "Verify with 1e7 keys
# in PostgreSQL"; also written to target/scale-bench.md.
#
#   PGADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres bash benches/scale.sh
#
# Settings (environment): N (keys, 1e7: ~3.5 GB of table and indexes while it runs), HOT
# (the cached hot set, 1e5 = 1% of N), WRITES (writes per side for the log's cost, 2000),
# MEMKEYS (records for memory per cached key, 1e6), DB (the database created for the run
# and dropped at the end, kg_scale).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000000}
HOT=${HOT:-100000}
WRITES=${WRITES:-2000}
MEMKEYS=${MEMKEYS:-1000000}
DB=${DB:-kg_scale}
ADMIN=${PGADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
URL="${ADMIN%/*}/$DB"

bin=$(cargo bench --no-run --bench revocation --features postgres,redis,testing \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    exe = json.loads(line).get("executable")
    if exe:
        print(exe)' | tail -1)

psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
trap 'psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
export KEYGATE_TEST_POSTGRES_URL=$URL

{
  echo "Machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); commit $(git rev-parse --short HEAD); $(date -u '+%F %H:%M') UTC."
  echo "Load before: $(uptime | sed 's/.*load average/load average/')."
  echo
  "$bin" scale "$N" "$HOT"
  echo
  echo "Cost of the change log per write, with the $N keys in the table ($WRITES writes per side, alternating, one row):"
  echo
  echo "| write | n | p50 without log | p50 with log | p99 without | p99 with | p50 ratio |"
  echo "|---|---|---|---|---|---|---|"
  "$bin" write-cost postgres "$WRITES"
  echo
  echo "Memory per cached key ($MEMKEYS records, resident-set growth, one process per line):"
  echo
  records=$("$bin" memory records "$MEMKEYS" | awk '{print $3}')
  cache=$("$bin" memory cache "$MEMKEYS" | awk '{print $3}')
  python3 - "$MEMKEYS" "$records" "$cache" <<'PY'
import sys
n, records, cache = (int(x) for x in sys.argv[1:])
print("| what | bytes per key |")
print("|---|---|")
print(f"| the records alone (`Arc<KeyRecord>` as a store decodes them, in a `Vec`) | {records / n:.0f} |")
print(f"| `CachedStore` holding them (entry + record) | {cache / n:.0f} |")
print(f"| of which the cache's own (entry, index, TTL), the difference | {(cache - records) / n:.0f} |")
PY
  echo
  echo "Load after: $(uptime | sed 's/.*load average/load average/')."
} | tee target/scale-bench.md
