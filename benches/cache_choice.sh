#!/usr/bin/env bash
# Why CachedStore is built on quick_cache (issue 7): compares quick_cache and moka as
# CachedStore uses them. Builds benches/cache-choice/ (a standalone project, not part of
# keygate's build or CI) in release and prints, per crate: hit latency, hit latency
# under a flood of distinct-id misses, what cancelled loads leave behind, then the
# dependency count and the clean release build time of each crate alone (-j2).
#
#   benches/cache_choice.sh
set -euo pipefail
cd "$(dirname "$0")/cache-choice"
target="${CACHE_CHOICE_TARGET:-$PWD/../../target/cache-choice}"
CARGO_TARGET_DIR="$target" cargo build --release --quiet
"$target/release/cache-choice"

echo
echo "## dependencies and clean build time of each crate alone (release, -j2)"
scratch="$target/alone"
rm -rf "$scratch"
for spec in 'quick_cache = { version = "0.7", default-features = false }' \
            'moka = { version = "0.12", features = ["future"] }'; do
    name="${spec%% *}"
    dir="$scratch/$name"
    mkdir -p "$dir/src"
    printf '[package]\nname = "alone-%s"\nversion = "0.0.0"\nedition = "2021"\n\n[workspace]\n\n[dependencies]\n%s\n' \
        "${name//_/-}" "$spec" > "$dir/Cargo.toml"
    echo 'fn main() {}' > "$dir/src/main.rs"
    (cd "$dir" && cargo generate-lockfile --quiet)
    deps=$(cd "$dir" && cargo tree -e normal --prefix none | sed 's/ (\*)$//' | sort -u | grep -vc '^alone-')
    start=$(date +%s.%N)
    (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build --release -j2 --quiet)
    end=$(date +%s.%N)
    printf '%-12s %3d crates (itself included)   clean build %5.1f s\n' \
        "$name" "$deps" "$(echo "$end - $start" | bc)"
done
