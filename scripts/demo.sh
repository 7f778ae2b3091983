#!/usr/bin/env bash
# Builds redis-bisync, starts two Redis servers on localhost that replicate
# to each other (A on port 7001, B on 7002; their link on 7101/7102), shows
# a write on each side read back from the other, and prints SYNC.STATUS of
# both. The servers keep running; `bash scripts/demo.sh stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo="$root/demo"

stop() {
  for p in 7001 7002; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done
}
if [ "${1:-}" = stop ]; then stop; echo "demo servers stopped"; exit 0; fi

bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
echo "== building the module (cargo build --release)"
cargo build --release --quiet
module="$root/target/release/libredis_bisync.so"

stop
mkdir -p "$demo/a" "$demo/b"
start() { # name port link peer
  redis-server --port "$2" --bind 127.0.0.1 --dir "$demo/$1" --logfile "$demo/$1/redis.log" \
    --daemonize yes --save "" --appendonly no \
    --loadmodule "$module" node-id "$1" listen "127.0.0.1:$3" peer "127.0.0.1:$4"
}
start a 7001 7101 7102
start b 7002 7102 7101

wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" && return 0; sleep 0.1; done
  echo "demo: timed out waiting for $what" >&2; exit 1
}
link_up() { redis-cli -p "$1" sync.status | grep -A1 -x link | tail -1 | grep -qx up; }
wait_for "link up on A" link_up 7001
wait_for "link up on B" link_up 7002

echo "== A: SET greeting 'hello from A';  B: HSET profile name bisync"
redis-cli -p 7001 set greeting "hello from A" >/dev/null
redis-cli -p 7002 hset profile name bisync lang rust >/dev/null
wait_for "greeting on B" sh -c '[ "$(redis-cli -p 7002 get greeting)" = "hello from A" ]'
wait_for "profile on A" sh -c '[ "$(redis-cli -p 7001 hget profile name)" = "bisync" ]'
echo "B reads greeting:      $(redis-cli -p 7002 get greeting)"
echo "A reads profile name:  $(redis-cli -p 7001 hget profile name)"
echo
echo "== SYNC.STATUS on A"; redis-cli -p 7001 sync.status | paste - -
echo
echo "== SYNC.STATUS on B"; redis-cli -p 7002 sync.status | paste - -
echo
echo "The pair keeps running: redis-cli -p 7001 / -p 7002. Logs: $demo/*/redis.log"
echo "Stop it with: bash scripts/demo.sh stop"
