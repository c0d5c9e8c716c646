#!/usr/bin/env bash
# Real HTTP clients against the running example servers (`examples/server.rs` for axum,
# `examples/actix_server.rs` for actix-web), each on a free port with a fresh SQLite file.
# `.ci/run` runs it after the tests; run it by hand the same way: `tests/clients/run.sh`.
#
# Per server: read the `admin API key: ...` line it prints on first start; then with curl,
# Python `requests` (flow.py) and Node's built-in `fetch` (flow.mjs): create a key for
# `user` -> use it -> deactivate it -> refused -> delete it -> 404, sending
# `Authorization: Bearer <key>` as Audiobookshelf documents it. Then SIGTERM must make the
# server exit 0, having flushed last-used times to the database, with the pepper kept
# beside the database (mode 600, never printed), and a second start on the same database
# must print no key and still accept the first admin key.
#
# Needs cargo, curl, python3 with `requests` and Node 18+. Anything missing or any
# unexpected answer fails the script (exit 1) with a message; servers it started are
# stopped on every exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

STARTUP=60  # seconds for a server to print its key and answer /healthz
SHUTDOWN=30 # seconds for a server to exit after SIGTERM

fail() {
  echo "clients: FAIL: $*" >&2
  exit 1
}

for tool in curl python3 node; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
python3 -c 'import requests' 2>/dev/null || fail "the Python package requests is required (pip install requests)"

# The examples share the library build of `cargo test --workspace --all-features`.
cargo build --all-features --example server --example actix_server
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir
profile_dir=$target_dir/debug/examples

# The example servers write their pepper to `<db>.pepper` (default `keygate.db.pepper`, in
# the working directory): `git add -A` in a checkout must not pick it up.
grep -qx '\*\.pepper' .gitignore || fail ".gitignore has no '*.pepper' line"
for path in keygate.db.pepper data/keys.db.pepper; do
  if git check-ignore -q "$path"; then :; else
    [ $? -eq 1 ] && fail "$path is not git-ignored"
  fi
done

work=$(mktemp -d)
server_pid=
cleanup() {
  status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*/stderr*; do
      [ -f "$log" ] && printf -- '--- %s ---\n%s\n' "$log" "$(cat "$log")" >&2
    done
    echo "clients: kept $work for inspection" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start BINARY DIR TAG: starts a server over DIR/keys.db in DIR; sets server_pid, port, out, err.
start() {
  local binary=$1 dir=$2 tag=$3
  port=$(free_port)
  out=$dir/stdout-$tag err=$dir/stderr-$tag
  (cd "$dir" && exec env -u KEYGATE_PEPPER -u KEYGATE_PEPPER_FILE -u KEYGATE_PEPPER_VERSION \
    -u KEYGATE_JWT_SECRET KEYGATE_ADDR="127.0.0.1:$port" KEYGATE_DB="sqlite://$dir/keys.db" \
    KEYGATE_PREFIX=abs "$binary" </dev/null >"$out" 2>"$err") &
  server_pid=$!
  local deadline=$((SECONDS + STARTUP))
  until [ "$(curl -s --max-time 2 "http://127.0.0.1:$port/healthz" || true)" = ok ]; do
    kill -0 "$server_pid" 2>/dev/null || fail "$binary exited early; stderr: $(cat "$err")"
    [ $SECONDS -lt $deadline ] || fail "$binary not healthy within ${STARTUP}s"
    sleep 0.1
  done
}

# stop: SIGTERM, and the exit status must be 0 within SHUTDOWN seconds.
stop() {
  kill -TERM "$server_pid"
  local deadline=$((SECONDS + SHUTDOWN))
  while kill -0 "$server_pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "server did not exit within ${SHUTDOWN}s of SIGTERM"
    sleep 0.1
  done
  local status=0
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" -eq 0 ] || fail "exit status $status after SIGTERM; stderr: $(cat "$err")"
}

# call METHOD PATH KEY [JSON]: curl as Audiobookshelf's docs show it; sets status, headers, body.
call() {
  local method=$1 path=$2 key=$3 data=${4-}
  local args=(-sS --max-time 10 -X "$method" -D "$work/headers" -o "$work/body" -w '%{http_code}')
  [ -n "$key" ] && args+=(-H "Authorization: Bearer $key")
  [ -n "$data" ] && args+=(-H "Content-Type: application/json" --data "$data")
  status=$(curl "${args[@]}" "http://127.0.0.1:$port$path") || fail "curl $method $path"
  headers=$(tr -d '\r' <"$work/headers")
  body=$(cat "$work/body")
}

expect() { # expect STATUS WHAT
  [ "$status" = "$1" ] || fail "curl $2: expected $1, got $status: $body"
}

json() { # json EXPR: EXPR over the last body, as `j`, printed
  python3 -c "import json, sys; j = json.load(sys.stdin); print($1)" <<<"$body"
}

challenge() {
  grep -i '^www-authenticate:' <<<"$headers" | cut -d: -f2- | sed 's/^ *//' || true
}

curl_flow() {
  local admin=$1
  call POST /api/api-keys "$admin" '{"name":"curl flow","userId":"user","expiresIn":3600,"isActive":true}'
  expect 200 create
  local key id
  key=$(json 'j["apiKey"]["apiKey"]')
  id=$(json 'j["apiKey"]["id"]')
  [ "$(json 'j["apiKey"]["userId"]')" = user ] || fail "create: userId: $body"
  call GET /api/libraries "$key"
  expect 200 use
  [ "$(json 'isinstance(j["libraries"], list)')" = True ] || fail "use: $body"
  call GET /api/api-keys "$key"
  expect 403 non-admin
  call GET /api/libraries ""
  expect 401 "no key"
  case $(challenge) in
    *error=*) fail "no key: challenge names an error: $(challenge)" ;;
    "Bearer realm="*) ;;
    *) fail "no key: challenge $(challenge)" ;;
  esac
  call PATCH "/api/api-keys/$id" "$admin" '{"isActive":false}'
  expect 200 deactivate
  [ "$(json 'j["apiKey"]["isActive"]')" = False ] || fail "deactivate: $body"
  call GET /api/libraries "$key"
  expect 401 refused
  [[ $(challenge) == *'error="invalid_token"'* ]] || fail "refused: challenge $(challenge)"
  call DELETE "/api/api-keys/$id" "$admin"
  expect 200 delete
  call GET "/api/api-keys/$id" "$admin"
  expect 404 gone
  echo "curl flow: ok"
}

last_used_at() { # last_used_at DB ID: the column, or "None"
  python3 - "$1" "$2" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
row = db.execute("SELECT last_used_at FROM keygate_keys WHERE id = ?", (sys.argv[2],)).fetchone()
if row is None:
    sys.exit(f"no record {sys.argv[2]}")
print(row[0])
EOF
}

clients_against() {
  local example=$1
  local binary=$profile_dir/$example dir=$work/$example
  mkdir -p "$dir"

  # First start: a fresh database, so exactly one line on stdout with the admin key.
  start "$binary" "$dir" first
  local admin
  admin=$(sed -n 's/^admin API key: //p' "$out" | head -1)
  [[ $admin == abs_* ]] || fail "$example: no 'admin API key: abs_...' line; stdout: $(cat "$out")"
  curl_flow "$admin"
  KEYGATE_URL="http://127.0.0.1:$port" KEYGATE_ADMIN_KEY="$admin" python3 tests/clients/flow.py ||
    fail "$example: flow.py"
  KEYGATE_URL="http://127.0.0.1:$port" KEYGATE_ADMIN_KEY="$admin" node tests/clients/flow.mjs ||
    fail "$example: flow.mjs"
  stop
  [ "$(cat "$out")" = "admin API key: $admin" ] ||
    fail "$example: stdout carries more than the key line: $(cat "$out")"

  # The pepper was generated beside the database, private, and never printed.
  local pepper_file=$dir/keys.db.pepper
  [ -f "$pepper_file" ] || fail "$example: no pepper file beside the database"
  [ "$(stat -c %a "$pepper_file")" = 600 ] || fail "$example: pepper file mode $(stat -c %a "$pepper_file")"
  local pepper
  pepper=$(tr -d '[:space:]' <"$pepper_file")
  [ ${#pepper} -ge 32 ] || fail "$example: pepper shorter than 32 characters"
  if grep -qF -- "$pepper" "$err"; then fail "$example: pepper printed on stderr"; fi

  # Second start on the same database: no key printed, the first admin key still works.
  start "$binary" "$dir" second
  call GET /api/me "$admin"
  expect 200 "me after restart"
  [ "$(json 'j["userId"]')" = admin ] || fail "$example: /api/me: $body"
  # A key used once: its last use is queued in memory (the admin key's first use just
  # flushed, so the next flush is an interval away) until shutdown writes it.
  call POST /api/api-keys "$admin" '{"name":"flush probe","userId":"user"}'
  expect 200 "create probe"
  local probe_key probe_id
  probe_key=$(json 'j["apiKey"]["apiKey"]')
  probe_id=$(json 'j["apiKey"]["id"]')
  call GET /api/libraries "$probe_key"
  expect 200 "use probe"
  [ "$(last_used_at "$dir/keys.db" "$probe_id")" = None ] ||
    fail "$example: last use written before shutdown"
  stop
  [ ! -s "$out" ] || fail "$example: a later start printed: $(cat "$out")"
  [ "$(last_used_at "$dir/keys.db" "$probe_id")" != None ] ||
    fail "$example: SIGTERM did not flush the pending last-used time; stderr: $(cat "$err")"
  echo "$example: ok"
}

clients_against server
clients_against actix_server
echo "clients: ok"
