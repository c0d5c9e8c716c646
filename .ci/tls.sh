#!/usr/bin/env bash
# TLS servers for the TLS store tests (tests/stores/tls.rs), on ports of their own:
#   PostgreSQL 15+ with ssl=on on 127.0.0.1 and 127.0.0.2, port 25432 (cleartext refused)
#   Redis with TLS only on 127.0.0.1 and 127.0.0.2, port 26379 (no cleartext port)
# (Ports below 32768, outside Linux's ephemeral range, so no outgoing connection holds them.)
# Both present a certificate for `localhost` and 127.0.0.1 (not 127.0.0.2, so a test can
# show that verify-full checks the name), signed by a CA generated for the run; a second,
# unrelated CA is generated for the wrong-CA tests. Everything lives in /tmp/keygate-tls.
#
#   .ci/tls.sh start   starts what is not running (idempotent), then prints the
#                      `export` lines the tests read: eval "$(.ci/tls.sh start)"
#   .ci/tls.sh stop    stops both servers and removes /tmp/keygate-tls
#
# Runs as root (CI) or as a user who may `runuser -u postgres`; PostgreSQL runs as postgres.
set -euo pipefail

WORK=/tmp/keygate-tls
PG_PORT=25432
REDIS_PORT=26379
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

log() { echo "tls.sh: $*" >&2; }

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

pg_up() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
redis_up() {
  [ -f "$WORK/ca.pem" ] && redis-cli --tls --cacert "$WORK/ca.pem" -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}

stop() {
  if [ -f "$WORK/pg/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$WORK/redis.pid" ]; then
    local pid
    pid=$(cat "$WORK/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$WORK"
}

certificates() {
  mkdir -p "$WORK"
  chmod 755 "$WORK"
  cd "$WORK"
  # The CA the servers' certificate chains to.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=keygate test CA" -keyout ca.key -out ca.pem 2>/dev/null
  # An unrelated CA: trusting it alone must not let the servers' certificate through.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=keygate wrong CA" -keyout wrong-ca.key -out wrong-ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
  chmod 644 ca.pem wrong-ca.pem server.pem
  chmod 600 ca.key wrong-ca.key server.key
}

start_postgres() {
  [ -n "$PG_BIN" ] || { log "no PostgreSQL under /usr/lib/postgresql"; exit 1; }
  mkdir -p "$WORK/pg" "$WORK/pgsock"
  touch "$WORK/pg.log"
  chown postgres: "$WORK/pg" "$WORK/pgsock" "$WORK/pg.log"
  chmod 700 "$WORK/pg"
  as_postgres "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 >/dev/null
  install -o postgres -m 600 "$WORK/server.key" "$WORK/pg/server.key"
  install -o postgres -m 644 "$WORK/server.pem" "$WORK/pg/server.pem"
  cat >> "$WORK/pg/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1,127.0.0.2'
unix_socket_directories = '$WORK/pgsock'
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server.key'
fsync = off
max_connections = 200
EOF
  # TLS or nothing over TCP; the socket (this script's admin) stays open.
  cat > "$WORK/pg/pg_hba.conf" <<EOF
local all all trust
hostssl all all 127.0.0.0/8 trust
hostnossl all all 0.0.0.0/0 reject
EOF
  as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -t 30 start >/dev/null ||
    { log "TLS PostgreSQL did not start:"; cat "$WORK/pg.log" >&2; exit 1; }
}

start_redis() {
  if ! ldd "$(command -v redis-server)" | grep -q libssl; then
    log "this redis-server was built without TLS"; exit 1
  fi
  redis-server --port 0 --tls-port "$REDIS_PORT" --bind 127.0.0.1 127.0.0.2 \
    --tls-cert-file "$WORK/server.pem" --tls-key-file "$WORK/server.key" \
    --tls-ca-cert-file "$WORK/ca.pem" --tls-auth-clients no \
    --save "" --appendonly no --dir "$WORK" --pidfile "$WORK/redis.pid" \
    --logfile "$WORK/redis.log" --daemonize yes >/dev/null
}

start() {
  command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
  if ! { pg_up && redis_up; }; then
    stop
    certificates
    start_postgres
    start_redis
  fi
  for _ in $(seq 1 50); do pg_up && redis_up && break; sleep 0.2; done
  pg_up || { log "TLS PostgreSQL did not start:"; cat "$WORK/pg.log" >&2; exit 1; }
  redis_up || { log "TLS Redis did not start:"; cat "$WORK/redis.log" >&2; exit 1; }
  cat <<EOF
export KEYGATE_TEST_TLS_CA=$WORK/ca.pem
export KEYGATE_TEST_TLS_WRONG_CA=$WORK/wrong-ca.pem
export KEYGATE_TEST_POSTGRES_TLS_URL=postgres://postgres@localhost:$PG_PORT/postgres
export KEYGATE_TEST_REDIS_TLS_URL=rediss://localhost:$REDIS_PORT/
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
