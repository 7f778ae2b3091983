#!/usr/bin/env bash
# Builds redis-bisync, starts two Redis servers on localhost that replicate
# to each other (A on port 7001, B on 7002; their link on 7101/7102, with a
# shared secret as in production: demo/bisync.secret, mode 0600), shows a
# write on each side read back from the other, and prints SYNC.STATUS of
# both. The servers keep running; `bash scripts/demo.sh stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo="$root/demo"

# Is the server on port $1 the demo's node $2 (its data dir is ours)?
is_demo() {
  [ "$(redis-cli -p "$1" config get dir 2>/dev/null | sed -n 2p)" = "$demo/$2" ]
}
# Stops the demo servers that are running; prints the ports it stopped.
stop() {
  local stopped=()
  for n in "a 7001" "b 7002"; do
    set -- $n
    if is_demo "$2" "$1"; then
      redis-cli -p "$2" shutdown nosave >/dev/null 2>&1 || true
      stopped+=("$2")
    fi
  done
  echo "${stopped[*]}"
}
if [ "${1:-}" = stop ]; then
  ports=$(stop)
  if [ -n "$ports" ]; then echo "demo servers stopped (ports: $ports)"
  else echo "no demo servers were running (nothing to stop on ports 7001, 7002)"; fi
  exit 0
fi

bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
echo "== building the module (cargo build --release): a first build compiles about 100 crates"
echo "   and takes about 2 minutes on 2 cores; later runs take seconds"
cargo build --release
module="$root/target/release/libredis_bisync.so"

stop >/dev/null
for p in 7001 7002; do
  if redis-cli -p "$p" ping >/dev/null 2>&1; then
    echo "demo: port $p is used by another Redis server (not the demo's); stop it first" >&2
    exit 1
  fi
done
mkdir -p "$demo/a" "$demo/b"
# The link's shared secret, readable by this user only, as production should
# have it (scripts/install.sh makes /etc/redis/bisync.secret the same way).
secret="$demo/bisync.secret"
if [ ! -s "$secret" ]; then
  (umask 077; head -c 32 /dev/urandom | base64 >"$secret")
fi
chmod 600 "$secret"
start() { # name port link peer
  redis-server --port "$2" --bind 127.0.0.1 --dir "$demo/$1" --logfile "$demo/$1/redis.log" \
    --daemonize yes --save "" --appendonly no \
    --loadmodule "$module" node-id "$1" listen "127.0.0.1:$3" peer "127.0.0.1:$4" \
    secret-file "$secret"
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
echo "The link is authenticated with the shared secret $secret (link_security: secret above)."
echo "The pair keeps running: redis-cli -p 7001 / -p 7002. Logs: $demo/*/redis.log"
echo "Stop it with: bash scripts/demo.sh stop"
