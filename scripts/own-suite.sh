#!/usr/bin/env bash
# Runs a server release's own test suite (the unit files the module affects) in external
# mode, once against a plain server and once against node a of a replicating pair of the
# same release, and prints the pass/fail counts and failing test names of both.
#
#   bash scripts/own-suite.sh redis-7.4.1 [unit/type/hash unit/expire …]
#   bash scripts/own-suite.sh redis-7.0.15   # Debian's server; its suite from Debian's source package
#
# Needs tclsh (Debian: tcl) and a built module (target/release/libredis_bisync.so, or
# BISYNC_MODULE). The suite is copied to a temporary directory first (it writes into
# tests/tmp and ../shared/redis-builds is read-only). Results go to $OUT (default
# /tmp/bisync-own-suite-<release>). Ports: $PORT (default 21000) to $PORT+4.
set -euo pipefail
cd "$(dirname "$0")/.."
release="${1:?usage: own-suite.sh RELEASE [unit…]}"; shift || true
builds="${BUILDS:-../shared/redis-builds}"
src="$builds/$release"
if [ "$release" = redis-7.0.15 ] && [ ! -x "$src/runtest" ]; then
  # Debian's own server: its test suite comes from Debian's source package of the same
  # version (needs a deb-src line, added here), with the packaged binaries in src/.
  src="${DEBIAN_SUITE:-/tmp/bisync-redis-7.0.15-suite}"
  if [ ! -x "$src/runtest" ]; then
    [ "$(redis-server --version | grep -o 'v=[0-9.]*')" = v=7.0.15 ] ||
      { echo "redis-server is not 7.0.15 (apt-get install redis-server)" >&2; exit 1; }
    list=/etc/apt/sources.list.d/bisync-deb-src.sources
    [ -f "$list" ] || { sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$list"; apt-get update -qq; }
    dl=$(mktemp -d); (cd "$dl" && apt-get source --download-only -qq redis >/dev/null 2>&1) ||
      { echo "could not download Debian's redis source package" >&2; exit 1; }
    rm -rf "$src"; mkdir -p "$src"; tar -xzf "$dl"/redis_7.0.15.orig.tar.gz -C "$src" --strip-components=1
    rm -rf "$dl"
    for b in redis-server redis-cli redis-benchmark redis-check-aof redis-check-rdb; do
      ln -sf "$(command -v $b || echo /usr/bin/$b)" "$src/src/$b"
    done
  fi
fi
[ -x "$src/runtest" ] || { echo "no test suite in $src" >&2; exit 1; }
command -v tclsh >/dev/null || { echo "tclsh is missing (apt-get install tcl)" >&2; exit 1; }
module="${BISYNC_MODULE:-$(pwd)/target/release/libredis_bisync.so}"
[ -f "$module" ] || { echo "module $module not built" >&2; exit 1; }
bin=$(ls "$src"/src/*-server | head -1)
units=("$@")
[ ${#units[@]} -gt 0 ] || units=(unit/type/hash unit/type/incr unit/type/list unit/type/set
  unit/type/string unit/type/zset unit/type/stream unit/type/stream-cgroups unit/expire
  unit/multi unit/scripting unit/keyspace unit/functions)
[ -f "$src/tests/unit/type/hash-field-expire.tcl" ] && units+=(unit/type/hash-field-expire)
out="${OUT:-/tmp/bisync-own-suite-$release}"
port="${PORT:-21000}"
rm -rf "$out"; mkdir -p "$out"
work=$(mktemp -d); cp -r "$src/." "$work/"; chmod -R u+w "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start NAME PORT [module args…]: one server in the background, waits for PING.
start() {
  local name="$1" p="$2"; shift 2
  mkdir -p "$out/$name"
  local args=(--port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$out/$name"
    --logfile "$out/$name/server.log" --enable-debug-command yes --enable-module-command yes)
  [ $# -gt 0 ] && args+=(--loadmodule "$module" "$@")
  "$bin" "${args[@]}" & pids+=($!)
  for _ in $(seq 100); do
    "$src"/src/*-cli -p "$p" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server $name did not start" >&2; exit 1
}

# Tests that cannot run in external mode at all (they ask the harness for the server's pid,
# which an external server does not give, and the exception ends the whole run).
skips=("SRANDMEMBER with a dict containing long chain")
# Guard the shared machine against a runaway server (kB of virtual memory per process).
ulimit -v "${MEM_LIMIT_KB:-8000000}"

suite() {
  local label="$1" p="$2" singles=()
  for u in "${units[@]}"; do singles+=(--single "$u"); done
  for t in "${skips[@]}"; do singles+=(--skiptest "$t"); done
  local start_s=$SECONDS
  # --baseport: runtest's own listening port is found from it; two runs at once with the
  # default both took 21079 (one failed to bind and ran no test).
  (cd "$work" && ./runtest --host 127.0.0.1 --port "$p" --clients 1 --timeout 1200 \
      --baseport $((port + 100)) \
      "${singles[@]}") 2>&1 | sed 's/\x1b\[[0-9;]*m//g' > "$out/$label.log" || true
  local ok err
  ok=$(grep -c '^\[ok\]' "$out/$label.log" || true)
  err=$(grep -cE '^\[(err|exception)\]' "$out/$label.log" || true)
  echo "$release $label: $ok passed, $err failed ($((SECONDS - start_s)) s)"
  # A run that ran nothing (the harness could not start) is a failure, not a pass.
  [ "$ok" -gt 0 ] || { echo "$release $label: no test ran, see $out/$label.log" >&2; tail -5 "$out/$label.log" >&2; exit 1; }
  grep -E '^\[(err|exception)\]' "$out/$label.log" | sed 's/^/    /' || true
}

start plain "$port"
suite plain "$port"
# The pair runs with the test hooks on: every element record and list command carries the
# origin's digest of its key, and b logs a mismatch if its own differs (see README, "Tests").
export BISYNC_TEST_HOOKS=1
start a $((port + 1)) node-id a listen 127.0.0.1:$((port + 2)) peer 127.0.0.1:$((port + 3))
start b $((port + 4)) node-id b listen 127.0.0.1:$((port + 3)) peer 127.0.0.1:$((port + 2))
suite pair $((port + 1))
mismatches=$(cat "$out/a/server.log" "$out/b/server.log" | grep -cE 'self-check mismatch|set-hint mismatch' || true)
echo "$release pair: $mismatches self-check mismatches in the logs of a and b"
grep -hE 'self-check mismatch|set-hint mismatch' "$out/a/server.log" "$out/b/server.log" | head -5 | sed 's/^/    /' || true
[ "$mismatches" = 0 ] || exit 1
