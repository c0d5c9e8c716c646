#!/usr/bin/env bash
# Runs `cargo bench --bench flood` and prints the valid key's median verify latency with no
# flood and under a flood of >= 10^6 distinct forged keys, and their ratio (target <= 2x),
# from criterion's estimates of this run.
#
#   bash benches/flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench flood
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
python3 - "$target_dir/criterion/flood" <<'PY'
import json, os, sys
root = sys.argv[1]
def median(side):
    with open(os.path.join(root, side, "new", "estimates.json")) as fh:
        return json.load(fh)["median"]["point_estimate"]
quiet, flood = median("valid_verify_no_flood"), median("valid_verify_under_flood")
ratio = flood / quiet
print(f"valid verify, median: no flood {quiet / 1e3:.2f} µs, under flood {flood / 1e3:.2f} µs, "
      f"ratio {ratio:.2f}x (target <= 2x: {'met' if ratio <= 2 else 'MISSED'})")
PY
