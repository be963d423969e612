#!/usr/bin/env bash
# Starts the servers Roost's tests use, each on a free loopback port with its
# data in a throw-away directory, and prints the `export` lines that point the
# tests at them:
#
#   eval "$(scripts/services.sh start)"    # then: make test
#   scripts/services.sh stop
#
# `start-missing` starts only those whose ROOST_TEST_*_URL is not set and that
# are installed, and says on stderr which it could not start; `make test`
# (scripts/test.sh) uses it, in a directory of its own (ROOST_SERVICES_DIR).
#
# Needs Debian's postgresql and redis-server packages, and stripe-mock (Go). Runs Postgres as the
# `postgres` user when started as root, as initdb refuses to run as root.
set -euo pipefail

state=${ROOST_SERVICES_DIR:-/tmp/roost-services}

free_port() {
  python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  echo "postgres not found: apt-get install -y postgresql" >&2
  exit 1
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin port dir
  bin=$(pg_bin)
  port=$(free_port)
  dir="$state/postgres"
  rm -rf "$dir"; mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$state"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null
  echo "export ROOST_TEST_POSTGRES_URL='postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable'"
}

stop_postgres() {
  local dir="$state/postgres"
  [ -d "$dir/data" ] || return 0
  as_pg "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
}

start_redis() {
  local port dir
  command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 1; }
  port=$(free_port)
  dir="$state/redis"
  rm -rf "$dir"; mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "export ROOST_TEST_REDIS_URL='redis://127.0.0.1:$port/0'"
}

# stripe-mock (go install github.com/stripe/stripe-mock@v0.203.0) answers
# Stripe's API from its OpenAPI spec, for the billing tests.
start_stripe() {
  local port dir bin
  bin=$(command -v stripe-mock || echo "$(go env GOPATH 2>/dev/null)/bin/stripe-mock")
  [ -x "$bin" ] || { echo "stripe-mock not found: go install github.com/stripe/stripe-mock@v0.203.0" >&2; return 0; }
  port=$(free_port)
  dir="$state/stripe"
  rm -rf "$dir"; mkdir -p "$dir"
  # It serves HTTPS too, on :12112 unless told otherwise: a port of its own.
  "$bin" -http-addr "127.0.0.1:$port" -https-addr "127.0.0.1:" >"$dir/stripe-mock.log" 2>&1 &
  echo $! >"$dir/stripe-mock.pid"
  local up=
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null -H 'Authorization: Bearer sk_test_123' "http://127.0.0.1:$port/v1/customers" && { up=1; break; }
    sleep 0.1
  done
  [ -n "$up" ] || { echo "stripe-mock did not start:" >&2; cat "$dir/stripe-mock.log" >&2; exit 1; }
  echo "export ROOST_TEST_STRIPE_URL='http://127.0.0.1:$port'"
}

stop_stripe() {
  local pidfile="$state/stripe/stripe-mock.pid"
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
}

stop_redis() {
  local pidfile="$state/redis/redis.pid"
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
}

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
have_redis() { command -v redis-server >/dev/null; }

start_missing() {
  mkdir -p "$state"; chmod 755 "$state"
  if [ -z "${ROOST_TEST_POSTGRES_URL:-}" ]; then
    if have_postgres; then start_postgres; else echo "Postgres is not installed (apt-get install postgresql)" >&2; fi
  fi
  if [ -z "${ROOST_TEST_REDIS_URL:-}" ]; then
    if have_redis; then start_redis; else echo "redis-server is not installed (apt-get install redis-server)" >&2; fi
  fi
  if [ -z "${ROOST_TEST_STRIPE_URL:-}" ]; then start_stripe; fi
}

case "${1:-start}" in
  start) stop_postgres; stop_redis; stop_stripe; mkdir -p "$state"; chmod 755 "$state"; start_postgres; start_redis; start_stripe ;;
  start-missing) start_missing ;;
  stop) stop_postgres; stop_redis; stop_stripe ;;
  *) echo "usage: $0 start|start-missing|stop" >&2; exit 2 ;;
esac
