#!/usr/bin/env bash
# Revocation across nodes (issue 10): revoke-to-refusal on another node, the change log's
# cost per write, memory per cached key, and lookups with many keys in PostgreSQL behind
# the cache. Prints the markdown tables of benches/README.md, "Revocation across nodes".
# What each mode measures: benches/revocation.rs.
#
#   KEYGATE_TEST_POSTGRES_URL=postgres://… KEYGATE_TEST_REDIS_URL=redis://… bash benches/revocation.sh
#
# With KEYGATE_TEST_REDIS_CLUSTER_URLS set (eval "$(.ci/cluster.sh start)") the latency
# table also has Redis Cluster rows (no stalled trials there, no one proxy sits in B's
# path: see benches/revocation.rs). ONLY=latency runs the latency table alone.
#
# Settings (environment): TRIALS (revoke-to-refusal trials per backend, default 200),
# WRITES (writes per side for the log's cost, 2000), MEMKEYS (records for memory, 1e6),
# MANY (keys in PostgreSQL for throughput, 1e6; the issue's figure is 1e7, which needs
# ~4 GB of table and index and a long insert). The output is also written to
# target/revocation-bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-200}
WRITES=${WRITES:-2000}
MEMKEYS=${MEMKEYS:-1000000}
MANY=${MANY:-1000000}
: "${KEYGATE_TEST_POSTGRES_URL:?set KEYGATE_TEST_POSTGRES_URL}"
: "${KEYGATE_TEST_REDIS_URL:?set KEYGATE_TEST_REDIS_URL}"

# Build once (the bench profile), then run the binary directly for each mode.
bin=$(cargo bench --no-run --bench revocation --features postgres,redis,testing \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    exe = json.loads(line).get("executable")
    if exe:
        print(exe)' | tail -1)
bench() { "$bin" "$@"; }

{
  echo "Machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); commit $(git rev-parse --short HEAD); $(date -u +%F)."
  echo
  echo "Revoke on node A -> first refusal on node B (B polls every 1 ms), default settings"
  echo "(TTL 5 s, heartbeat 250 ms, deadline 250 ms: documented bound 500 ms), $TRIALS trials per"
  echo "backend; every 4th trial silently drops B's feed connection (0-250 ms before the revoke), every 4th from"
  echo "the second has the server kill it (0-50 ms before the revoke)."
  echo
  echo "| trials | n | p50 | p99 | max | latest acceptance after revoke returned | p99 <= 1 s |"
  echo "|---|---|---|---|---|---|---|"
  bench latency postgres "$TRIALS"
  bench latency redis "$TRIALS"
  if [ -n "${KEYGATE_TEST_REDIS_CLUSTER_URLS:-}" ]; then
    bench latency redis-cluster "$TRIALS"
  fi
  if [ "${ONLY:-}" = latency ]; then exit 0; fi
  echo
  echo "Cost of the change log per write ($WRITES writes per side, alternating, one row):"
  echo
  echo "| write | n | p50 without log | p50 with log | p99 without | p99 with | p50 ratio |"
  echo "|---|---|---|---|---|---|---|"
  bench write-cost postgres "$WRITES"
  bench write-cost redis "$WRITES"
  echo
  echo "Memory per cached key ($MEMKEYS keys, resident-set growth, one process per line):"
  echo
  records=$(bench memory records "$MEMKEYS" | awk '{print $3}')
  cache=$(bench memory cache "$MEMKEYS" | awk '{print $3}')
  memorystore=$(bench memory memorystore "$MEMKEYS" | awk '{print $3}')
  python3 - "$MEMKEYS" "$records" "$cache" "$memorystore" <<'PY'
import sys
n, records, cache, mem = (int(x) for x in sys.argv[1:])
print("| what | bytes per key |")
print("|---|---|")
print(f"| the records alone (`Arc<KeyRecord>` as a store decodes them, in a `Vec`) | {records / n:.0f} |")
print(f"| `CachedStore` holding them (entry + record) | {cache / n:.0f} |")
print(f"| of which the cache's own (entry, index, TTL), the difference | {(cache - records) / n:.0f} |")
print(f"| `MemoryStore` holding the same records, for comparison | {mem / n:.0f} |")
PY
  echo
  echo "Lookups with many keys in PostgreSQL behind the cache (99% hits; interleaved chunks):"
  echo
  echo "| setup | 99% hits | baseline | ratio | store reads |"
  echo "|---|---|---|---|---|"
  bench throughput "$MANY"
} | tee target/revocation-bench.md
