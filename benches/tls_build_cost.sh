#!/usr/bin/env bash
# What the `tls` feature costs to build (issue 10): two clean release builds of the keygate
# library, with features postgres,redis and postgres,redis,tls, each in a scratch target
# directory, timed, plus the crates each links (cargo tree, normal dependencies).
#
#   benches/tls_build_cost.sh            (about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="${TLS_COST_TARGET:-$PWD/target/tls-build-cost}"
for features in postgres,redis postgres,redis,tls; do
  dir="$scratch/${features//,/-}"
  rm -rf "$dir"
  crates=$(cargo tree -p keygate --features "$features" -e normal --prefix none \
    | sed 's/ (\*)$//' | sort -u | wc -l)
  start=$(date +%s.%N)
  CARGO_TARGET_DIR="$dir" cargo build --release -p keygate --features "$features" --quiet
  end=$(date +%s.%N)
  printf '%-22s %3d crates (keygate included)   clean release build %6.1f s   load %s\n' \
    "$features" "$crates" "$(echo "$end - $start" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
  rm -rf "$dir"
done
