#!/usr/bin/env bash
# Forward auth through nginx: the cost of asking `keygate serve` on every request.
#
# One nginx (started by .ci/proxies.sh with the README's snippet, keygate-cli/proxies/
# nginx.conf) serves, in the same run:
#   - 127.0.0.1:17182 "auth": the snippet's server, `auth_request` to a release build of
#     `keygate serve` (127.0.0.1:17180, SQLite, the first-start key sent), then the upstream;
#   - 127.0.0.1:17184 "open": the same upstream proxied without auth.
# The upstream is nginx itself answering a fixed body on 127.0.0.1:17181. Requests/s of each
# are measured with wrk, interleaved open, auth, open, auth, ... ROUNDS times; the ratio is
# median(auth) / median(open); the target is >= 0.9.
#
#   bash benches/forward_auth.sh
#   ROUNDS=5 DURATION=10s bash benches/forward_auth.sh
#
# Environment: DURATION (5s), CONNECTIONS (16), THREADS (1), ROUNDS (3), PIN (1: with 2+
# CPUs, nginx and keygate on CPU 0 and wrk on CPU 1; 0: no pinning).
# Needs wrk and nginx (and caddy, which .ci/proxies.sh starts too): `.ci/proxies.sh install`.
# The table is printed and written to target/forward-auth-bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
PIN=${PIN:-1}

for tool in wrk nginx caddy; do
  command -v "$tool" >/dev/null || { echo "$tool is required: .ci/proxies.sh install" >&2; exit 1; }
done
server_cpu=() wrk_cpu=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  server_cpu=(taskset -c 0) wrk_cpu=(taskset -c 1)
fi

echo "building keygate (release)" >&2
cargo build --release --quiet -p keygate-cli
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d)
keygate_pid=
proxies_were_running=$(.ci/proxies.sh status | grep -c ' running' || true)
cleanup() {
  if [ -n "$keygate_pid" ] && kill -0 "$keygate_pid" 2>/dev/null; then
    kill -TERM "$keygate_pid" 2>/dev/null || true
    wait "$keygate_pid" 2>/dev/null || true
  fi
  # Put the proxies back as they were (the snippet alone, or stopped).
  if [ "$proxies_were_running" -gt 0 ]; then
    NGINX_EXTRA= .ci/proxies.sh start >/dev/null
  else
    .ci/proxies.sh stop >/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The upstream, and the same upstream without auth, beside the snippet's server.
export NGINX_EXTRA='  server { listen 127.0.0.1:17181; location / { return 200 "upstream\n"; } }
  server { listen 127.0.0.1:17184; location / { proxy_set_header Host $host; proxy_pass http://127.0.0.1:17181; } }'
.ci/proxies.sh start >&2
# nginx's master (from its pid file) and workers.
nginx_master=$(cat /tmp/keygate-proxies/nginx/nginx.pid)
nginx_pids="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"
# nginx runs as its own daemon; pin its processes too.
if [ ${#server_cpu[@]} -gt 0 ]; then
  for pid in $nginx_pids; do taskset -pc 0 "$pid" >/dev/null; done
fi

KEYGATE_ADDR=127.0.0.1:17180 KEYGATE_DB="sqlite://$work/keys.db" KEYGATE_LOG=warn \
  KEYGATE_LOG_FORMAT=json "${server_cpu[@]}" "$target_dir/release/keygate" serve \
  >"$work/stdout" 2>"$work/stderr" &
keygate_pid=$!
key=
for _ in $(seq 1 200); do
  key=$(sed -n 's/^admin API key: //p' "$work/stdout")
  [ -n "$key" ] && break
  sleep 0.05
done
if [ -z "$key" ]; then
  echo "keygate serve did not start:" >&2
  cat "$work/stderr" >&2
  exit 1
fi

# Both sides must answer 200 with the key, and the auth side 401 without it.
check() {
  local want=$1; shift
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || { echo "expected $want, got $got: $*" >&2; exit 1; }
}
check 200 -H "Authorization: Bearer $key" http://127.0.0.1:17184/things/1
check 200 -H "Authorization: Bearer $key" http://127.0.0.1:17182/things/1
check 401 http://127.0.0.1:17182/things/1

# CPU time so far (user + system, clock ticks) of the processes $1.
ticks() {
  local total=0 pid
  for pid in $1; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

# One wrk run; prints "requests/s requests nginx-CPU-ticks keygate-CPU-ticks". Fails if
# any answer was not 2xx.
run_wrk() {
  local port=$1 duration=$2 out nginx_before keygate_before nginx_after keygate_after
  nginx_before=$(ticks "$nginx_pids") keygate_before=$(ticks "$keygate_pid")
  out=$("${wrk_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" \
    -H "Authorization: Bearer $key" "http://127.0.0.1:$port/things/1")
  nginx_after=$(ticks "$nginx_pids") keygate_after=$(ticks "$keygate_pid")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers on port $port:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v nginx=$((nginx_after - nginx_before)) -v keygate=$((keygate_after - keygate_before)) '
    /requests in/ { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    END { print rps, requests, nginx, keygate }' <<<"$out"
}

run_wrk 17184 1s >/dev/null # warm-up
run_wrk 17182 1s >/dev/null
results="$work/results.tsv"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for side in open auth; do
    port=17184
    [ "$side" = auth ] && port=17182
    read -r rps requests nginx_ticks keygate_ticks < <(run_wrk "$port" "$DURATION")
    printf '%s\t%s\t%s\t%s\t%s\n' "$side" "$rps" "$requests" "$nginx_ticks" "$keygate_ticks" >>"$results"
    echo "round $round $side: $rps req/s, $requests requests, CPU ticks nginx $nginx_ticks, keygate $keygate_ticks" >&2
  done
done

mkdir -p "$target_dir"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
python3 - "$results" "$(nproc)" "${cpu:-unknown}" "${#server_cpu[@]}" \
  "wrk -t$THREADS -c$CONNECTIONS -d$DURATION" "$ROUNDS" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$(nginx -v 2>&1 | sed 's/.*: //')" "$(getconf CLK_TCK)" <<'PY' | tee "$target_dir/forward-auth-bench.md"
import statistics, sys
path, nproc, cpu, pinned, command, rounds, load, nginx, clk_tck = sys.argv[1:]
tick_us = 1e6 / int(clk_tck)
runs, cpu_us, keygate_us = {}, {}, {}
for line in open(path):
    side, rps, requests, nginx_ticks, keygate_ticks = line.split("\t")
    n = max(int(requests), 1)
    runs.setdefault(side, []).append(float(rps))
    cpu_us.setdefault(side, []).append((int(nginx_ticks) + int(keygate_ticks)) * tick_us / n)
    keygate_us.setdefault(side, []).append(int(keygate_ticks) * tick_us / n)
open_, auth = statistics.median(runs["open"]), statistics.median(runs["auth"])
ratio = auth / open_
cpu_open, cpu_auth = statistics.median(cpu_us["open"]), statistics.median(cpu_us["auth"])
cpu_ratio = cpu_open / cpu_auth
print(f"Machine: {nproc} CPUs, {cpu}; load average at the end {load}. {nginx}, one worker. "
      f"`{command}`, {rounds} interleaved rounds; "
      + ("nginx and keygate pinned to CPU 0, wrk to CPU 1." if pinned != "0" else "no CPU pinning."))
print()
print("Throughput ratio = median(auth req/s) / median(no-auth req/s). CPU ratio = "
      "median(no-auth CPU per request) / median(auth CPU per request), CPU being nginx's "
      "and keygate's own (user + system), which other load on the machine disturbs less.")
print()
print("| request | no auth req/s | auth_request + keygate req/s | throughput ratio | "
      "no auth CPU µs/req | auth CPU µs/req (of which keygate) | CPU ratio | target >= 0.9 | runs req/s (no auth / auth) |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
kg = statistics.median(keygate_us["auth"])
each = lambda side: ", ".join(f"{r:,.0f}" for r in runs[side])
verdict = "met" if ratio >= 0.9 else "MISSED"
print(f"| GET /things/1, valid opaque key | {open_:,.0f} | {auth:,.0f} | {ratio:.3f} | "
      f"{cpu_open:.1f} | {cpu_auth:.1f} ({kg:.1f}) | {cpu_ratio:.3f} | {verdict} | "
      f"{each('open')} / {each('auth')} |")
PY
