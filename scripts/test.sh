#!/usr/bin/env bash
# `make test`: every test with the race detector, printed as a plain `go test`
# prints them, then what was skipped and why, and what failed.
#
# A test that needs a server (Postgres, Redis, stripe-mock) finds it through
# ROOST_TEST_POSTGRES_URL, ROOST_TEST_REDIS_URL and ROOST_TEST_STRIPE_URL. Each
# one that is not set and is installed is started here for this run, on a free
# loopback port with throw-away data, and stopped at the end
# (ROOST_TEST_SERVICES=none starts none). CI (.ci/run) sets all three itself
# and ROOST_TEST_STRICT=1, so nothing is started here and a skip is a failure.
#
#   scripts/test.sh [go test flags]     (GO names the go command; default go)
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

tmp=$(mktemp -d /tmp/roost-test.XXXXXX)
chmod 755 "$tmp"
cleanup() {
  [ -n "${ROOST_SERVICES_DIR:-}" ] && scripts/services.sh stop
  rm -rf "$tmp"
}
trap cleanup EXIT

"$GO" build -o "$tmp/testsummary" ./internal/testsummary || exit 1

if [ "${ROOST_TEST_SERVICES:-auto}" != none ] &&
  [ -z "${ROOST_TEST_POSTGRES_URL:-}" -o -z "${ROOST_TEST_REDIS_URL:-}" -o -z "${ROOST_TEST_STRIPE_URL:-}" ]; then
  export ROOST_SERVICES_DIR="$tmp/services"
  if exports=$(scripts/services.sh start-missing); then
    eval "$exports"
    [ -n "$exports" ] && echo "make test started for this run (stopped at the end):" \
      "$(echo "$exports" | sed -n 's/^export \(ROOST_TEST_[A-Z]*_URL\)=.*/\1/p' | tr '\n' ' ')" >&2
  else
    echo "make test: could not start the test servers (see above); the tests that need them skip" >&2
  fi
fi

# -timeout: the broker package alone takes 7-10 minutes under -race on two
# busy cores, near go test's default 10; a hang still ends, with its stacks.
"$GO" test -race -count=1 -timeout 25m -json "$@" ./... | "$tmp/testsummary"
status=("${PIPESTATUS[@]}")

# What only holds without the race detector (it enlarges every frame):
# a connection's goroutine stack stays at 16 KiB under mochi's read loop.
echo "without -race:"
"$GO" test -count=1 -run '^TestConnectionStackSize$' ./broker/
plain=$?
[ "${status[0]}" = 0 ] && [ "${status[1]}" = 0 ] && [ "$plain" = 0 ]
