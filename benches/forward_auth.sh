#!/usr/bin/env bash
# Forward auth through nginx: the cost of asking `keygate serve` on every request, beside
# the floors that show what any auth server could reach behind nginx.
#
# One nginx (started by .ci/proxies.sh with the README's snippet, keygate-cli/proxies/
# nginx.conf) serves, in the same run:
#   - "auth": 127.0.0.1:17182, the snippet's server: `auth_request` to a release build of
#     `keygate serve` (127.0.0.1:17180, SQLite, the first-start key sent), then the upstream;
#   - "open": the same upstream proxied without auth (the baseline);
#   - "floor, subrequest": `auth_request` to an internal location that answers 200 itself:
#     the cost of nginx's auth subrequest alone, with no auth server at all;
#   - "floor, proxied 200": `auth_request` proxied, as the snippet does (keepalive), to an
#     nginx location answering 200: an auth server that takes no time, written in C.
# The extra servers share the upstream's port 127.0.0.1:17181 (told apart by Host), so the
# bench needs no ports beyond the proxies' own. The upstream is nginx itself answering a
# fixed body. Requests/s of each are measured with wrk, interleaved ROUNDS times; each ratio
# is median(side) / median(open); the target for "auth" is >= 0.9. `keygate serve`'s
# /auth is also measured alone (wrk straight to it, same key).
#
#   bash benches/forward_auth.sh
#   ROUNDS=5 DURATION=10s bash benches/forward_auth.sh
#
# Environment: DURATION (5s), CONNECTIONS (16), THREADS (1), ROUNDS (3), PIN (1: with 2+
# CPUs, nginx and keygate on CPU 0 and wrk on CPU 1; 0: no pinning).
# Needs wrk and nginx (and Caddy and Traefik, which .ci/proxies.sh starts too):
# `.ci/proxies.sh install`. The table is printed and written to target/forward-auth-bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
PIN=${PIN:-1}

for tool in wrk nginx; do
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

# The upstream, the same upstream without auth, and the two floors, beside the snippet's
# server (names as the Host header tells them apart).
export NGINX_EXTRA='  upstream bench_auth { server 127.0.0.1:17181; keepalive 16; }
  server { listen 127.0.0.1:17181 default_server;
    location / { return 200 "upstream\n"; }
    location = /_ok { return 200; } }
  server { listen 127.0.0.1:17181; server_name open.bench;
    location / { proxy_set_header Host upstream; proxy_pass http://127.0.0.1:17181; } }
  server { listen 127.0.0.1:17181; server_name subrequest.bench;
    auth_request /_floor;
    location / { proxy_set_header Host upstream; proxy_pass http://127.0.0.1:17181; }
    location = /_floor { internal; return 200; } }
  server { listen 127.0.0.1:17181; server_name proxied.bench;
    auth_request /_floor;
    location / { proxy_set_header Host upstream; proxy_pass http://127.0.0.1:17181; }
    location = /_floor { internal; proxy_pass http://bench_auth/_ok;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_set_header Host upstream; proxy_http_version 1.1; proxy_set_header Connection ""; } }'
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
for host in open.bench subrequest.bench proxied.bench; do
  check 200 -H "Host: $host" -H "Authorization: Bearer $key" http://127.0.0.1:17181/things/1
done
check 200 -H "Authorization: Bearer $key" http://127.0.0.1:17182/things/1
check 200 -H "Authorization: Bearer $key" http://127.0.0.1:17180/auth
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

# One wrk run against side $1 (see `url`); prints "requests/s requests nginx-CPU-ticks
# keygate-CPU-ticks". Fails if any answer was not 2xx.
url() {
  case $1 in
    auth) echo "http://127.0.0.1:17182/things/1" ;;
    keygate) echo "http://127.0.0.1:17180/auth" ;;
    *) echo "http://127.0.0.1:17181/things/1" ;;
  esac
}
run_wrk() {
  local side=$1 duration=$2 out nginx_before keygate_before nginx_after keygate_after
  local host=()
  case $side in open | subrequest | proxied) host=(-H "Host: $side.bench") ;; esac
  nginx_before=$(ticks "$nginx_pids") keygate_before=$(ticks "$keygate_pid")
  out=$("${wrk_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" "${host[@]}" \
    -H "Authorization: Bearer $key" "$(url "$side")")
  nginx_after=$(ticks "$nginx_pids") keygate_after=$(ticks "$keygate_pid")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers from $side:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v nginx=$((nginx_after - nginx_before)) -v keygate=$((keygate_after - keygate_before)) '
    /requests in/ { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    END { print rps, requests, nginx, keygate }' <<<"$out"
}

sides=(open subrequest proxied auth keygate)
for side in "${sides[@]}"; do run_wrk "$side" 1s >/dev/null; done # warm-up
results="$work/results.tsv"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for side in "${sides[@]}"; do
    read -r rps requests nginx_ticks keygate_ticks < <(run_wrk "$side" "$DURATION")
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
path, nproc, cpu_name, pinned, command, rounds, load, nginx, clk_tck = sys.argv[1:]
tick_us = 1e6 / int(clk_tck)
runs, cpu_us, keygate_us = {}, {}, {}
for line in open(path):
    side, rps, requests, nginx_ticks, keygate_ticks = line.split("\t")
    n = max(int(requests), 1)
    runs.setdefault(side, []).append(float(rps))
    cpu_us.setdefault(side, []).append((int(nginx_ticks) + int(keygate_ticks)) * tick_us / n)
    keygate_us.setdefault(side, []).append(int(keygate_ticks) * tick_us / n)
med = {side: statistics.median(r) for side, r in runs.items()}
cpu = {side: statistics.median(c) for side, c in cpu_us.items()}
kg = {side: statistics.median(c) for side, c in keygate_us.items()}
open_ = med["open"]
print(f"Machine: {nproc} CPUs, {cpu_name}; load average at the end {load}. {nginx}, one worker. "
      f"`{command}`, {rounds} interleaved rounds; "
      + ("nginx and keygate pinned to CPU 0, wrk to CPU 1." if pinned != "0" else "no CPU pinning."))
print()
print("Throughput ratio = median(req/s) / median(no-auth req/s). CPU = nginx's and keygate's "
      "own (user + system) per request, which other load on the machine disturbs less; "
      "CPU ratio = no-auth CPU / this row's CPU.")
print()
print("| GET /things/1, valid opaque key | req/s | throughput ratio | CPU µs/req (of which keygate) | CPU ratio | runs req/s |")
print("|---|---:|---:|---:|---:|---|")
rows = [
    ("open", "nginx proxying, no auth (baseline)"),
    ("subrequest", "floor: `auth_request` to a location answering 200 itself"),
    ("proxied", "floor: `auth_request` proxied (keepalive) to nginx answering 200"),
    ("auth", "`auth_request` to `keygate serve` (the snippet); target >= 0.9"),
]
for side, label in rows:
    each = ", ".join(f"{r:,.0f}" for r in runs[side])
    print(f"| {label} | {med[side]:,.0f} | {med[side] / open_:.3f} | "
          f"{cpu[side]:.1f} ({kg[side]:.1f}) | {cpu['open'] / cpu[side]:.3f} | {each} |")
each = ", ".join(f"{r:,.0f}" for r in runs["keygate"])
print(f"| `keygate serve` /auth alone (wrk straight to it; no nginx) | {med['keygate']:,.0f} | "
      f"- | {kg['keygate']:.1f} (all) | - | {each} |")
print()
verdict = "met" if med["auth"] / open_ >= 0.9 else "MISSED"
print(f"Target (auth >= 0.9x no auth): {verdict}. Ceiling for any auth server behind this "
      f"nginx set-up (the proxied floor): {med['proxied'] / open_:.3f}x; keygate reaches "
      f"{med['auth'] / med['proxied']:.3f}x of that ceiling.")
PY
