#!/usr/bin/env bash
# The admin page (keygate::admin::page) in a real browser: headless Chromium driven over
# WebDriver by tests/browser/admin_page.py (Python `selenium`), against both example
# servers (axum: examples/server.rs, actix-web: examples/actix_server.rs), each on a free
# port with a fresh SQLite database. Screenshots at desktop (1280x800) and phone (390x844)
# widths land in target/admin-page-screenshots/<server>/ (git-ignored).
#
# `.ci/run` calls it. Under CI=true it installs what is missing (Debian packages chromium
# and chromium-driver, PyPI selenium) and any failure fails CI. Elsewhere, without
# Chromium, its driver or selenium, it says so and exits 0 (skipped), so a contributor
# without a browser can still run .ci steps by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export CHROMIUM CHROMEDRIVER
# Selenium must not try to download a browser or driver: both are given.
export SE_OFFLINE=true

have_all() {
  [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ] && python3 -c 'import selenium' 2>/dev/null
}

if ! have_all; then
  if [ "${CI:-}" = "true" ]; then
    if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
    fi
    python3 -c 'import selenium' 2>/dev/null || python3 -m pip install --quiet 'selenium>=4.20,<5'
    have_all || { echo "admin page: FAIL: Chromium, chromedriver or selenium still missing" >&2; exit 1; }
  else
    echo "admin page: SKIPPED: needs $CHROMIUM, $CHROMEDRIVER and python3 -m pip install selenium (CI=true installs them)"
    exit 0
  fi
fi
"$CHROMIUM" --version
"$CHROMEDRIVER" --version
python3 -c 'import selenium; print("selenium", selenium.__version__)'

# The examples share the library build of `cargo test --workspace --all-features`.
cargo build --all-features --example server --example actix_server
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir

for server in server actix_server; do
  python3 tests/browser/admin_page.py "$target_dir/debug/examples/$server" \
    "$target_dir/admin-page-screenshots/$server"
done
echo "admin page: ok (screenshots in $target_dir/admin-page-screenshots/)"
