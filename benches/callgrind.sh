#!/usr/bin/env bash
# Instructions per verify under callgrind (load-independent, unlike wall-clock times):
# a verify without a limit, with one in-memory limit, and the opaque floor of
# benches/verify.rs, each over the same 1e3 keys (see "Instruction counts" in
# benches/limits.rs). Needs valgrind.
#
#   bash benches/callgrind.sh          # N=20000 iterations of each loop
#   N=5000 bash benches/callgrind.sh
#
# Note: under valgrind, ring uses its portable SHA-256 (no SHA extensions), so hashing
# weighs more here than on the metal.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}

cargo bench --bench limits --no-run --quiet 2>/dev/null || cargo bench --bench limits --no-run
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$(ls -t "$target_dir"/release/deps/limits-* | grep -v '\.d$' | head -1)
out="$target_dir/callgrind.limits.out"
KEYGATE_CALLGRIND=$N valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >/dev/null 2>"$out.log"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
  python3 -c '
import re, sys
n = int(sys.argv[1])
found = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s.*limits::(cg_\w+)", line)
    if m and m.group(2) not in found:
        found[m.group(2)] = int(m.group(1).replace(",", "")) / n
plain, limit, floor = (found.get(k) for k in ("cg_plain", "cg_one_limit", "cg_floor"))
print(f"instructions per iteration, N={n} (callgrind):")
print("| loop | Ir per iteration | ratio |")
print("|---|---:|---|")
print(f"| opaque floor (HMAC + map lookup + compare) | {floor:,.0f} | 1.00 |")
print(f"| verify, no limit | {plain:,.0f} | {plain / floor:.3f} to the floor |")
print(f"| verify, one in-memory limit | {limit:,.0f} | {limit / plain:.3f} to no limit |")
' "$N"
