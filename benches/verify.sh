#!/usr/bin/env bash
# Runs `cargo bench --bench verify` and prints each figure beside its floor as a markdown
# table (criterion medians, read from target/criterion/<group>/<side>/<size>/new/).
#
#   bash benches/verify.sh              # bench, then print the table
#   bash benches/verify.sh --table      # only print the table from the last run
#   bash benches/verify.sh -- ARGS      # pass ARGS to the bench binary (e.g. a filter)
#
# The table is also written to target/criterion/verify-table.md. Exit status is the
# bench's; a missed target is reported in the table, not as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

run=1
args=()
while (($#)); do
  case "$1" in
    --table) run=0 ;;
    --) shift; args=("$@"); break ;;
    *) echo "usage: $0 [--table] [-- bench args]" >&2; exit 2 ;;
  esac
  shift
done

if ((run)); then
  cargo bench --bench verify -- "${args[@]+"${args[@]}"}"
fi

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
  echo target)

python3 - "$target_dir/criterion" <<'PY' | tee "$target_dir/criterion/verify-table.md"
import json, os, subprocess, sys

root = sys.argv[1]

def load(*parts):
    try:
        with open(os.path.join(root, *parts)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None

def median(bench):
    """Criterion's median time per iteration (ns) for `group/side/size`."""
    est = load(bench, "new", "estimates.json")
    return est["median"]["point_estimate"] if est else None

def paired(bench):
    """Median keygate/floor ratio over samples where both ran interleaved (see verify.rs)."""
    group, _, size = bench.split("/")
    res = load(group, "paired", f"{size}.json")
    return res["median_ratio"] if res else None

def fmt(ns):
    if ns is None:
        return "—"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"

def times(x):
    return "—" if x is None else f"{x:.2f}×"

# (label, measured, reference, kind, limit). kind "pair": keygate vs its floor, judged on
# the interleaved ratio (falling back to the ratio of medians); "ratio": ratio of medians;
# "abs": measured median against an absolute limit (ns); "info": no target.
rows = [
    ("opaque verify, 1e3 keys", "opaque_verify/keygate/1e3", "opaque_verify/floor/1e3", "pair", 1.5),
    ("opaque verify, 1e6 keys (4096 cycled)", "opaque_verify/keygate/1e6", "opaque_verify/floor/1e6", "pair", 1.5),
    ("opaque verify, 1e6 keys (2^18 cycled, cold)", "opaque_verify/keygate/1e6_cold", "opaque_verify/floor/1e6_cold", "pair", 1.5),
    ("opaque verify 1e6 vs 1e3, keygate", "opaque_verify/keygate/1e6", "opaque_verify/keygate/1e3", "ratio", 1.3),
    ("opaque verify 1e6 vs 1e3, floor (reference)", "opaque_verify/floor/1e6", "opaque_verify/floor/1e3", "info", None),
    ("opaque verify 1e6 cold vs 1e3, keygate", "opaque_verify/keygate/1e6_cold", "opaque_verify/keygate/1e3", "info", None),
    ("opaque verify 1e6 cold vs 1e3, floor (reference)", "opaque_verify/floor/1e6_cold", "opaque_verify/floor/1e3", "info", None),
    ("JWT verify, 1e3 keys", "jwt_verify/keygate/1e3", "jwt_verify/floor/1e3", "pair", 1.3),
    ("JWT verify, 1e6 keys (4096 cycled)", "jwt_verify/keygate/1e6", "jwt_verify/floor/1e6", "pair", 1.3),
    ("JWT verify 1e6 vs 1e3, keygate", "jwt_verify/keygate/1e6", "jwt_verify/keygate/1e3", "info", None),
    ("mint, opaque", "mint/keygate/opaque", None, "abs", 10_000.0),
    ("mint, JWT", "mint/keygate/jwt", None, "abs", 10_000.0),
    ("block_on(ready) alone (paid in every verify row)", "executor/block_on_ready", None, "info", None),
]

def machine():
    cpu = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {cpu}"

print(f"Machine: {machine()}. Times are criterion medians per iteration.")
print("ratio: keygate vs floor rows use the interleaved ratio (both timed in alternating chunks of")
print("256 iterations, median over chunk pairs); other rows divide the two criterion medians.")
print()
print("| benchmark | median | floor median | ratio | ratio of medians | target | pass/fail |")
print("|---|---|---|---|---|---|---|")
for label, meas, ref, kind, limit in rows:
    m = median(meas)
    r = median(ref) if ref else None
    of_medians = m / r if m is not None and r else None
    ratio = of_medians
    if kind == "pair":
        ratio = paired(meas) or of_medians
    if kind in ("pair", "ratio"):
        target = f"≤ {limit:g}×"
        verdict = "—" if ratio is None else ("pass" if ratio <= limit else "FAIL")
    elif kind == "abs":
        target = f"≤ {fmt(limit)}"
        verdict = "—" if m is None else ("pass" if m <= limit else "FAIL")
    else:
        target, verdict = "—", "info"
    print(f"| {label} | {fmt(m)} | {fmt(r)} | {times(ratio)} | {times(of_medians)} | {target} | {verdict} |")
PY
