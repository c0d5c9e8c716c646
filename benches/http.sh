#!/usr/bin/env bash
# What keygate adds to an HTTP request, measured with wrk on loopback.
#
# For axum (examples/server.rs) and actix-web (examples/actix_server.rs), both release
# builds over SQLite behind CachedStore: requests/s of `GET /api/ping-open` (no auth) and of
# `GET /api/ping` (the same handler and body behind the `Principal` extractor, sent a valid
# opaque key), interleaved open, auth, open, auth, ... ROUNDS times. The ratio is
# median(auth) / median(open); the target is >= 0.95.
#
#   bash benches/http.sh                    # defaults: 3 rounds of 5 s, wrk -t1 -c16
#   ROUNDS=5 DURATION=10s bash benches/http.sh
#   FRAMEWORKS=axum bash benches/http.sh    # just one
#
# Environment: DURATION (5s), CONNECTIONS (16), THREADS (1), ROUNDS (3),
# FRAMEWORKS ("axum actix"), PIN (1: with 2+ CPUs, server on CPU 0 and wrk on CPU 1, so
# they do not fight over one core; the servers then run one worker each; 0: no pinning).
#
# Needs wrk (installed with apt-get when missing and running as root), python3 and cargo.
# The table is printed and written to target/http-bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
FRAMEWORKS=${FRAMEWORKS:-axum actix}
PIN=${PIN:-1}

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing wrk" >&2
    apt-get install -y -qq wrk >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq wrk; }
  else
    echo "wrk is required: apt-get install wrk" >&2
    exit 1
  fi
fi

server_cpu=() wrk_cpu=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  server_cpu=(taskset -c 0) wrk_cpu=(taskset -c 1)
fi

echo "building release examples" >&2
cargo build --release --quiet --features axum,actix,sqlite --example server --example actix_server
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts example $1 on a fresh database; sets server_pid, port and key.
start_server() {
  local example=$1 dir="$work/$1"
  mkdir -p "$dir"
  port=$(free_port)
  (cd "$dir" && KEYGATE_ADDR=127.0.0.1:$port KEYGATE_DB="sqlite://$dir/keys.db" \
    exec "${server_cpu[@]}" "$target_dir/release/examples/$example" >"$dir/stdout" 2>"$dir/stderr") &
  server_pid=$!
  key=
  for _ in $(seq 1 200); do
    key=$(sed -n 's/^admin API key: //p' "$dir/stdout")
    [ -n "$key" ] && break
    sleep 0.05
  done
  if [ -z "$key" ]; then
    echo "$example did not start:" >&2
    cat "$dir/stderr" >&2
    exit 1
  fi
  # The key must be accepted, or the "auth" runs would measure 401s.
  python3 - "$port" "$key" <<'PY'
import sys, urllib.request
port, key = sys.argv[1], sys.argv[2]
for path, auth in (("/api/ping-open", None), ("/api/ping", key)):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", f"Bearer {auth}")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and r.read() == b"pong", (path, r.status)
PY
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "server exited with $?" >&2; exit 1; }
  server_pid=
}

# The server's CPU time so far (user + system), in clock ticks.
server_ticks() {
  awk '{ print $14 + $15 }' "/proc/$server_pid/stat"
}

# One wrk run; prints "requests/s  requests  server-CPU-ticks". Fails if any answer was
# not 2xx.
run_wrk() {
  local path=$1 duration=$2 out before after
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$duration")
  if [ "$path" = /api/ping ]; then
    args+=(-H "Authorization: Bearer $key")
  fi
  before=$(server_ticks)
  out=$("${wrk_cpu[@]}" wrk "${args[@]}" "http://127.0.0.1:$port$path")
  after=$(server_ticks)
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers on $path:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v cpu=$((after - before)) '
    /requests in/ { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    END { print rps, requests, cpu }' <<<"$out"
}

results="$work/results.tsv"
: >"$results"
for framework in $FRAMEWORKS; do
  case "$framework" in
    axum) example=server ;;
    actix) example=actix_server ;;
    *) echo "unknown framework $framework" >&2; exit 2 ;;
  esac
  start_server "$example"
  run_wrk /api/ping-open 1s >/dev/null # warm-up: connections, caches, allocator
  run_wrk /api/ping 1s >/dev/null
  for round in $(seq 1 "$ROUNDS"); do
    for side in open auth; do
      path=/api/ping-open
      [ "$side" = auth ] && path=/api/ping
      read -r rps requests ticks < <(run_wrk "$path" "$DURATION")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$framework" "$side" "$round" "$rps" "$requests" \
        "$ticks" >>"$results"
      echo "$framework round $round $side: $rps req/s, $requests requests, $ticks CPU ticks" >&2
    done
  done
  stop_server
done

mkdir -p "$target_dir"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
python3 - "$results" "$(nproc)" "${cpu:-unknown}" "${#server_cpu[@]}" \
  "wrk -t$THREADS -c$CONNECTIONS -d$DURATION" "$ROUNDS" "$(getconf CLK_TCK)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY' | tee "$target_dir/http-bench.md"
import statistics, sys
path, nproc, cpu, pinned, command, rounds, clk_tck, load = sys.argv[1:]
tick_us = 1e6 / int(clk_tck)
runs = {}
for line in open(path):
    framework, side, _, rps, requests, ticks = line.split("\t")
    runs.setdefault(framework, {}).setdefault(side, []).append(
        (float(rps), int(requests) and int(ticks) * tick_us / int(requests)))
print(f"Machine: {nproc} CPUs, {cpu}; load average at the end {load}. "
      f"`{command}`, {rounds} interleaved rounds; "
      + ("server pinned to CPU 0, wrk to CPU 1." if pinned != "0" else "no CPU pinning."))
print()
print("Throughput ratio = median(keygate req/s) / median(no-auth req/s). CPU ratio = "
      "median(no-auth server CPU per request) / median(keygate server CPU per request): the "
      "same ratio computed from the server's own CPU time, which other load on the machine "
      "disturbs far less than throughput.")
print()
print("| framework | no auth req/s | keygate req/s | throughput ratio | no auth CPU µs/req | "
      "keygate CPU µs/req | CPU ratio | target >= 0.95 | runs req/s (no auth / keygate) |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for framework, sides in runs.items():
    med = lambda side, i: statistics.median(r[i] for r in sides[side])
    ratio = med("auth", 0) / med("open", 0)
    cpu_ratio = med("open", 1) / med("auth", 1)
    each = lambda side: ", ".join(f"{r[0]:,.0f}" for r in sides[side])
    verdict = "met" if min(ratio, cpu_ratio) >= 0.95 else (
        "met (CPU)" if cpu_ratio >= 0.95 else "MISSED")
    print(f"| {framework} | {med('open', 0):,.0f} | {med('auth', 0):,.0f} | {ratio:.3f} | "
          f"{med('open', 1):.1f} | {med('auth', 1):.1f} | {cpu_ratio:.3f} | {verdict} | "
          f"{each('open')} / {each('auth')} |")
PY
