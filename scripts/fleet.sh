#!/usr/bin/env bash
# Starts a Roost fleet on one machine, each part on free loopback ports with
# its data in one throw-away directory: Postgres, Redis, a control plane
# (`roost controlplane`) and N data-plane nodes (`roost dataplane`) sharing
# Postgres, Redis as the session store and one operator token. Prints the
# `export` lines that point a shell (or a test) at it:
#
#   eval "$(scripts/fleet.sh start 3)"   # ROOST_API_URL, ROOST_NODE1_MQTT, ...
#   kill -9 "$ROOST_NODE2_PID"           # a node crashes
#   scripts/fleet.sh restart-node 2      # ...and comes back on its ports
#   scripts/fleet.sh stop
#
# Only the export lines go to stdout; progress and errors go to stderr. Each
# process logs to $ROOST_FLEET_DIR/<name>.log (controlplane, node1, ...).
#
# Environment:
#   ROOST_FLEET_DIR       state directory (default /tmp/roost-fleet); start
#                         stops a fleet left in it, stop removes it
#   ROOST_BIN             the roost binary (default bin/roost, built with
#                         `go build` when missing)
#   ROOST_ADMIN_TOKEN     the operator token to use (default: a new one)
#   ROOST_FLEET_SPREAD    passed to every roost process when set
#   ROOST_FLEET_NODE_ENV  space-separated KEY=VALUE pairs added to every
#                         node's environment, last (so they win), e.g.
#                         "ROOST_INSTANCE_IDLE=5s ROOST_DRAIN_TIMEOUT=5s"
#   ROOST_FLEET_TIMEOUT   seconds to wait for each process to be ready (30)
#
# Needs Debian's postgresql and redis-server packages, curl, and python3 for
# picking free ports. Runs Postgres as the `postgres` user when started as
# root, as initdb refuses to run as root.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${ROOST_FLEET_DIR:-/tmp/roost-fleet}
case $state in /*) ;; *) state="$PWD/$state" ;; esac
marker="$state/.roost-fleet"
timeout=${ROOST_FLEET_TIMEOUT:-30}

say() { echo "fleet: $*" >&2; }
die() { say "$*"; exit 1; }

# free_ports N prints N distinct free loopback ports, one a line: all are
# bound at once, so none is handed out twice. They are drawn from
# 10000-19999, below the kernel's ephemeral range (where it picks the local
# ports of outgoing connections) and apart from the 20000-31999 the Go
# tests' own servers take: a node restarted by restart-node must find its
# ports free, and a port the kernel handed out (bind to port 0) may by then
# be the local end of some outgoing connection.
free_ports() {
  python3 - "$1" <<'PY' 2>/dev/null && return
import random, socket, sys
low = 32768
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    pass
hi = min(20000, low)
if hi <= 10000:
    sys.exit("fleet.sh: the kernel's ephemeral range starts at %d, below 10000" % low)
socks = []
for _ in range(2000):
    if len(socks) == int(sys.argv[1]):
        break
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, hi)))
    except OSError:
        s.close()
        continue
    socks.append(s)
if len(socks) != int(sys.argv[1]):
    sys.exit(1)
for s in socks:
    print(s.getsockname()[1])
PY
  local i
  for ((i = 0; i < $1; i++)); do echo $((10000 + RANDOM % 10000 + i)); done
}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  die "postgres not found: apt-get install -y postgresql"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# alive PID: the process runs (a zombie, which init may not reap in a
# container, does not count).
alive() {
  local s
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
  s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$s" ] && [ "$s" != Z ]
}

# ours NAME: the pid in $state/NAME.pid, if that process still runs roost.
ours() {
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -Eq ' (controlplane|dataplane) ' || return 1
  echo "$pid"
}

# q VALUE: VALUE single-quoted for the shell.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# ---- Postgres and Redis, as scripts/services.sh starts them ----

start_postgres() {
  local pgbin port dir
  pgbin=$(pg_bin)
  port=$(free_ports 1)
  dir="$state/postgres"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir"
    # The postgres user must reach the directory: a state dir under a
    # private one (a test's temporary directory) gets its Postgres in /tmp.
    if ! runuser -u postgres -- test -w "$dir"; then
      rmdir "$dir"
      dir=$(mktemp -d /tmp/roost-fleet-pg.XXXXXX)
      chmod 755 "$dir"
      chown postgres:postgres "$dir"
      echo "$dir" >"$state/postgres.dir"
    fi
  fi
  say "postgres on 127.0.0.1:$port ($dir)"
  as_pg "$pgbin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # No Unix socket: TCP only, and no limit on the state dir's path length.
  as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k '' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$dir/server.log" >&2; die "postgres did not start"; }
  as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U postgres roost
  database_url="postgres://postgres@127.0.0.1:$port/roost?sslmode=disable"
}

pg_dir() { cat "$state/postgres.dir" 2>/dev/null || echo "$state/postgres"; }

stop_postgres() {
  local dir
  dir=$(pg_dir)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  case $dir in /tmp/roost-fleet-pg.*) rm -rf "$dir" ;; esac
}

start_redis() {
  local port dir
  command -v redis-server >/dev/null || die "redis-server not found: apt-get install -y redis-server"
  port=$(free_ports 1)
  dir="$state/redis"
  mkdir -p "$dir"
  say "redis on 127.0.0.1:$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis_url="redis://127.0.0.1:$port/0"
}

stop_redis() {
  local pid
  pid=$(cat "$state/redis/redis.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# ---- Roost ----

roost_bin() {
  local bin=${ROOST_BIN:-$root/bin/roost}
  case $bin in /*) ;; *) bin="$PWD/$bin" ;; esac
  if [ ! -x "$bin" ]; then
    command -v go >/dev/null || die "$bin is missing and go is not on PATH to build it"
    say "building $bin"
    (cd "$root" && go build -o "$bin" ./cmd/roost) >&2
  fi
  echo "$bin"
}

# launch NAME ROLE [KEY=VALUE...]: runs `roost ROLE` with the settings in
# its own session (a terminal's Ctrl-C or hang-up does not reach it), output
# appended to NAME.log, its pid in NAME.pid. The subshell execs setsid, which
# execs roost (it forks only for a process-group leader, which a background
# job of a script is not): the pid is roost's own.
launch() {
  local name=$1 role=$2
  shift 2
  local detach=()
  command -v setsid >/dev/null && detach=(setsid)
  (
    for kv in "$@"; do export "${kv?}"; done
    exec "${detach[@]}" "$bin" "$role"
  ) </dev/null >>"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

# wait_ready NAME HTTP_PORT [MQTT_PORT]: until /readyz answers 200 (and the
# MQTT port accepts TCP), or the process exits, or the timeout.
wait_ready() {
  local name=$1 http=$2 mqtt=${3:-} pid end
  pid=$(cat "$state/$name.pid")
  end=$((SECONDS + timeout))
  while :; do
    if ! alive "$pid"; then
      tail -n 30 "$state/$name.log" >&2
      say "$name (pid $pid) exited; its log: $state/$name.log"
      return 1
    fi
    if curl -fs -m 2 -o /dev/null "http://127.0.0.1:$http/readyz" &&
      { [ -z "$mqtt" ] || (exec 3<>"/dev/tcp/127.0.0.1/$mqtt") 2>/dev/null; }; then
      return 0
    fi
    if ((SECONDS >= end)); then
      tail -n 30 "$state/$name.log" >&2
      say "$name (pid $pid) not ready after ${timeout}s; its log: $state/$name.log"
      return 1
    fi
    sleep 0.1
  done
}

# The settings every roost process shares, and a node's own.
common_env() {
  local e=(
    "ROOST_DATABASE_URL=$database_url"
    "ROOST_ADMIN_TOKEN=$admin_token"
    "ROOST_SESSION_STORE=redis"
    "ROOST_REDIS_URL=$redis_url"
  )
  [ -n "$spread" ] && e+=("ROOST_FLEET_SPREAD=$spread")
  printf '%s\n' "${e[@]}"
}

start_controlplane() {
  local endpoints="" i env
  for ((i = 1; i <= nodes; i++)); do
    endpoints+="${endpoints:+,}mqtt://127.0.0.1:$(node_port "$i" mqtt)"
  done
  mapfile -t env < <(common_env)
  mkdir -p "$state/controlplane"
  launch controlplane controlplane "${env[@]}" \
    "ROOST_DATA_DIR=$state/controlplane" \
    "ROOST_HTTP_ADDR=127.0.0.1:$cp_http" \
    "ROOST_DEVICE_ENDPOINTS=$endpoints"
}

# node_port I KIND: node I's http, mqtt or forward port.
node_port() { local v="node$1_$2"; echo "${!v}"; }

# check_node_env: ROOST_FLEET_NODE_ENV is KEY=VALUE pairs.
check_node_env() {
  local extra kv
  read -ra extra <<<"$node_env"
  for kv in "${extra[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "ROOST_FLEET_NODE_ENV: \"$kv\" is not KEY=VALUE"
  done
}

start_node() {
  local i=$1 env extra
  mapfile -t env < <(common_env)
  read -ra extra <<<"$node_env"
  mkdir -p "$state/node$i"
  launch "node$i" dataplane "${env[@]}" \
    "ROOST_DATA_DIR=$state/node$i" \
    "ROOST_HTTP_ADDR=127.0.0.1:$(node_port "$i" http)" \
    "ROOST_MQTT_ADDR=127.0.0.1:$(node_port "$i" mqtt)" \
    "ROOST_NODE_URL=http://127.0.0.1:$(node_port "$i" http)" \
    "ROOST_FORWARD_ADDR=127.0.0.1:$(node_port "$i" forward)" \
    "${extra[@]}"
}

# The fleet's layout, kept in $state/fleet.env for restart-node and stop.
save_layout() {
  local i
  {
    echo "nodes=$nodes"
    echo "bin=$(q "$bin")"
    echo "database_url=$(q "$database_url")"
    echo "redis_url=$(q "$redis_url")"
    echo "admin_token=$(q "$admin_token")"
    echo "spread=$(q "$spread")"
    echo "node_env=$(q "$node_env")"
    echo "cp_http=$cp_http"
    for ((i = 1; i <= nodes; i++)); do
      echo "node${i}_http=$(node_port "$i" http) node${i}_mqtt=$(node_port "$i" mqtt) node${i}_forward=$(node_port "$i" forward)"
    done
  } >"$state/fleet.env"
}

load_layout() {
  [ -f "$state/fleet.env" ] || die "no fleet in $state (ROOST_FLEET_DIR)"
  # shellcheck source=/dev/null
  . "$state/fleet.env"
  # What the caller sets now wins over what the fleet started with.
  spread=${ROOST_FLEET_SPREAD:-$spread}
  node_env=${ROOST_FLEET_NODE_ENV:-$node_env}
}

print_node() {
  echo "export ROOST_NODE$1_MQTT=$(q "127.0.0.1:$(node_port "$1" mqtt)")"
  echo "export ROOST_NODE$1_HTTP=$(q "http://127.0.0.1:$(node_port "$1" http)")"
  echo "export ROOST_NODE$1_PID=$(cat "$state/node$1.pid")"
}

# stop_roost NAME...: SIGTERM (a drain), then SIGKILL for what is left
# after 10 s.
stop_roost() {
  local name pid pids=() end
  for name in "$@"; do
    if pid=$(ours "$name"); then
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  say "stopping roost (pids ${pids[*]})"
  end=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while alive "$pid" && ((SECONDS < end)); do sleep 0.1; done
    if alive "$pid"; then
      say "pid $pid did not drain within 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# stop_processes ends the roost processes, then Redis, then Postgres.
stop_processes() {
  local names=(controlplane) f
  for f in "$state"/node*.pid; do
    if [ -e "$f" ]; then names+=("$(basename "$f" .pid)"); fi
  done
  stop_roost "${names[@]}"
  stop_redis
  stop_postgres
}

# cmd_stop [quiet]
cmd_stop() {
  if [ ! -e "$marker" ]; then
    [ -z "${1:-}" ] && [ -e "$state" ] && say "$state is not a fleet's directory (no .roost-fleet): left alone"
    return 0
  fi
  stop_processes
  rm -rf "$state"
  say "stopped; removed $state"
}

# start_failed stops what a failed start started, and keeps the logs.
start_failed() {
  stop_processes
  say "start failed; the logs are in $state (scripts/fleet.sh stop removes it)"
}

cmd_start() {
  nodes=${1:-3}
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "usage: $0 start N (N data-plane nodes, at least 1)"
  if [ -e "$state" ] && [ ! -e "$marker" ] && [ -n "$(ls -A "$state")" ]; then
    die "$state exists and is not a fleet's directory; set ROOST_FLEET_DIR elsewhere"
  fi
  admin_token=${ROOST_ADMIN_TOKEN:-rop_fleet-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
  [ ${#admin_token} -ge 16 ] || die "ROOST_ADMIN_TOKEN: must be at least 16 characters"
  spread=${ROOST_FLEET_SPREAD:-}
  node_env=${ROOST_FLEET_NODE_ENV:-}
  check_node_env
  bin=$(roost_bin)
  # A fleet left in the directory goes first.
  cmd_stop quiet
  mkdir -p "$state"
  chmod 755 "$state"
  touch "$marker"
  # A failure from here on stops what was started; the logs stay.
  trap start_failed EXIT

  start_postgres
  start_redis
  local ports i
  mapfile -t ports < <(free_ports $((1 + 3 * nodes)))
  [ ${#ports[@]} -eq $((1 + 3 * nodes)) ] || die "could not pick free ports"
  cp_http=${ports[0]}
  for ((i = 1; i <= nodes; i++)); do
    printf -v "node${i}_http" %s "${ports[3 * i - 2]}"
    printf -v "node${i}_mqtt" %s "${ports[3 * i - 1]}"
    printf -v "node${i}_forward" %s "${ports[3 * i]}"
  done
  save_layout

  say "control plane on http://127.0.0.1:$cp_http"
  start_controlplane
  wait_ready controlplane "$cp_http"
  for ((i = 1; i <= nodes; i++)); do
    say "node $i: mqtt 127.0.0.1:$(node_port "$i" mqtt), http 127.0.0.1:$(node_port "$i" http), forward 127.0.0.1:$(node_port "$i" forward)"
    start_node "$i"
  done
  for ((i = 1; i <= nodes; i++)); do
    wait_ready "node$i" "$(node_port "$i" http)" "$(node_port "$i" mqtt)"
  done
  trap - EXIT
  say "ready: $nodes node(s); stop with: ROOST_FLEET_DIR=$state $0 stop"

  echo "export ROOST_FLEET_DIR=$(q "$state")"
  echo "export ROOST_FLEET_NODES=$nodes"
  echo "export ROOST_API_URL=$(q "http://127.0.0.1:$cp_http")"
  echo "export ROOST_ADMIN_TOKEN=$(q "$admin_token")"
  echo "export ROOST_CONTROLPLANE_PID=$(cat "$state/controlplane.pid")"
  echo "export ROOST_FLEET_DATABASE_URL=$(q "$database_url")"
  echo "export ROOST_FLEET_REDIS_URL=$(q "$redis_url")"
  for ((i = 1; i <= nodes; i++)); do print_node "$i"; done
}

cmd_restart_node() {
  local i=${1:-} pid
  load_layout
  if ! [[ $i =~ ^[0-9]+$ ]] || ((i < 1 || i > nodes)); then
    die "usage: $0 restart-node I (1..$nodes)"
  fi
  check_node_env
  if pid=$(ours "node$i"); then
    die "node $i is running (pid $pid); kill it first"
  fi
  say "node $i again: mqtt 127.0.0.1:$(node_port "$i" mqtt), http 127.0.0.1:$(node_port "$i" http)"
  echo "--- restarted $(date -u +%FT%TZ) ---" >>"$state/node$i.log"
  start_node "$i"
  wait_ready "node$i" "$(node_port "$i" http)" "$(node_port "$i" mqtt)"
  echo "export ROOST_NODE${i}_PID=$(cat "$state/node$i.pid")"
}

case "${1:-}" in
  start) cmd_start "${2:-3}" ;;
  stop) cmd_stop ;;
  restart-node) cmd_restart_node "${2:-}" ;;
  *) echo "usage: $0 start [N] | stop | restart-node I" >&2; exit 2 ;;
esac
