#!/usr/bin/env bash
# What the `tls` feature costs to build (issue 10). In one scratch target directory: a
# clean release build of the keygate library with features postgres,redis, then the same
# with tls added (what switching the feature on costs: the 7 new crates, and sqlx-core,
# sqlx-postgres, sqlx, redis and keygate rebuilt with their TLS code). Prints both times,
# the load average, and the crates each feature set links (cargo tree, normal deps).
#
#   benches/tls_build_cost.sh            (a few minutes on 2 idle cores)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${TLS_COST_TARGET:-$PWD/target/tls-build-cost}"
rm -rf "$dir"
for features in postgres,redis postgres,redis,tls; do
  crates=$(cargo tree -p keygate --features "$features" -e normal --prefix none \
    | sed 's/ (\*)$//' | sort -u | wc -l)
  start=$(date +%s.%N)
  CARGO_TARGET_DIR="$dir" cargo build --release -p keygate --features "$features" --quiet
  end=$(date +%s.%N)
  printf '%-20s %3d crates (keygate included)   %-28s %6.1f s   load %s\n' \
    "$features" "$crates" "$([ "$features" = postgres,redis ] && echo "clean release build" || echo "then with tls (incremental)")" \
    "$(echo "$end - $start" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
done
rm -rf "$dir"
