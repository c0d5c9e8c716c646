#!/usr/bin/env bash
# Runs `cargo bench --bench limits` and prints what a rate limit adds to a verify, and
# keygate's in-process GCRA beside `governor` used directly, as ratios of criterion
# medians from the same run (plus the paired, chunk-interleaved verify ratio).
#
#   bash benches/limits.sh           # bench, then print the table
#   bash benches/limits.sh --table   # only print the table from the last run
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--table" ]; then
  cargo bench --bench limits
fi

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
  echo target)

python3 - "$target_dir/criterion" <<'PY'
import json, os, sys

root = sys.argv[1]

def median(name):
    path = os.path.join(root, "limits", name.replace("/", "_"), "new", "estimates.json")
    with open(path) as fh:
        return json.load(fh)["median"]["point_estimate"]

plain = median("verify/plain")
limited = median("verify/one_limit")
ours = median("gcra/keygate")
keyed = median("gcra/governor_keyed")
direct = median("gcra/governor_direct")
paired = {}
try:
    with open(os.path.join(root, "limits", "paired.json")) as fh:
        paired = json.load(fh)
except OSError:
    pass

print("| measure | median | ratio |")
print("|---|---|---|")
print(f"| verify, no limit | {plain:.0f} ns | 1.00 |")
target = "meets" if limited / plain <= 1.15 else "MISSES"
print(f"| verify, one limit | {limited:.0f} ns | {limited / plain:.2f} (target <= 1.15: {target}) |")
if paired:
    print(f"| verify, one limit / no limit, paired chunks | | {paired['median_ratio']:.2f} (p25 {paired['p25']:.2f}, p75 {paired['p75']:.2f}) |")
print(f"| governor direct `check` | {direct:.0f} ns | 1.00 |")
print(f"| governor keyed `check_key`, 1e3 keys | {keyed:.0f} ns | {keyed / direct:.2f} |")
print(f"| keygate `MemoryLimiter::check_now`, 1e3 keys | {ours:.0f} ns | {ours / direct:.2f} ({ours / keyed:.2f}x governor keyed) |")
PY
