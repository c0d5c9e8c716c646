#!/usr/bin/env bash
# Redis topologies for Redis Cluster and Sentinel work (issue 10), on ports of their own:
#   Cluster:  3 masters on 127.0.0.1:21001-21003, one replica each on 21004-21006 (cluster
#             bus on port + 10000)
#   Sentinel: master "keygate" on 21101, its replica on 21102, sentinels on 21111-21113
#             (quorum 2)
# All ports (bus included) below 32768, outside Linux's ephemeral range: a server's
# outgoing connections would otherwise take the ports of servers not started yet.
# Everything lives in /tmp/keygate-cluster. .ci/run starts it for tests/stores/redis_topologies.rs
# (the conformance suite, a killed feed and a failover on each topology) and
# benches/revocation.sh uses the cluster. The failover tests leave the roles swapped,
# which the next run does not mind.
#
#   .ci/cluster.sh start   starts what is not running (idempotent), then prints the
#                          `export` lines a test would read: eval "$(.ci/cluster.sh start)"
#   .ci/cluster.sh stop    stops every server it started and removes /tmp/keygate-cluster
set -euo pipefail

WORK=/tmp/keygate-cluster
CLUSTER_PORTS=(21001 21002 21003 21004 21005 21006)
MASTER=21101
REPLICA=21102
SENTINELS=(21111 21112 21113)

log() { echo "cluster.sh: $*" >&2; }
ping() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }

cluster_ok() {
  ping "${CLUSTER_PORTS[0]}" &&
    redis-cli -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' &&
    [ "$(redis-cli -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster nodes 2>/dev/null | grep -c master)" = 3 ]
}

sentinel_ok() {
  for port in "${SENTINELS[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" sentinel get-master-addr-by-name keygate 2>/dev/null |
      grep -q 127.0.0.1 || return 1
  done
}

server() { # port dir extra-args...
  local port=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --daemonize yes "$@" >/dev/null
}

stop() {
  for pidfile in "$WORK"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$WORK"
}

start_cluster() {
  for port in "${CLUSTER_PORTS[@]}"; do
    server "$port" "$WORK/c$port" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 50); do ping "$port" && break; sleep 0.1; done
  done
  local nodes=()
  for port in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$WORK/create.log" 2>&1 ||
    { log "redis-cli --cluster create failed:"; cat "$WORK/create.log" >&2; exit 1; }
}

start_sentinel() {
  server "$MASTER" "$WORK/m$MASTER"
  server "$REPLICA" "$WORK/r$REPLICA" --replicaof 127.0.0.1 "$MASTER"
  for port in "${SENTINELS[@]}"; do
    mkdir -p "$WORK/s$port"
    # A sentinel rewrites its configuration file: one per sentinel, writable.
    cat > "$WORK/s$port/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
pidfile $WORK/s$port/redis.pid
logfile $WORK/s$port/redis.log
dir $WORK/s$port
sentinel monitor keygate 127.0.0.1 $MASTER 2
sentinel down-after-milliseconds keygate 2000
sentinel failover-timeout keygate 10000
EOF
    redis-server "$WORK/s$port/sentinel.conf" --sentinel >/dev/null
  done
}

start() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null; }
  if ! { cluster_ok && sentinel_ok; }; then
    stop
    mkdir -p "$WORK"
    start_cluster
    start_sentinel
  fi
  for _ in $(seq 1 100); do cluster_ok && sentinel_ok && break; sleep 0.2; done
  cluster_ok || { log "the cluster did not become ok:"; cat "$WORK/create.log" >&2; exit 1; }
  sentinel_ok || { log "the sentinels do not know the master"; exit 1; }
  local urls=() sentinels=()
  for port in "${CLUSTER_PORTS[@]}"; do urls+=("redis://127.0.0.1:$port/"); done
  for port in "${SENTINELS[@]}"; do sentinels+=("redis://127.0.0.1:$port/"); done
  (IFS=,; cat <<EOF
export KEYGATE_TEST_REDIS_CLUSTER_URLS=${urls[*]}
export KEYGATE_TEST_REDIS_SENTINEL_URLS=${sentinels[*]}
export KEYGATE_TEST_REDIS_SENTINEL_MASTER=keygate
EOF
  )
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
