#!/bin/bash
# LMOVE between two lists, the source prefilled with 200k elements: rate and link bytes per move,
# for plain Redis, native replication and two module builds (BENCHMARKS.md, "List moves").
# Usage: BEFORE=<old .so> AFTER=<new .so> bash scripts/bench-lmove.sh   (needs redis-server,
# redis-cli, redis-benchmark on PATH; ports 17011-17013 and 17111-17112 on 127.0.0.1).
set -u
BEFORE=${BEFORE:?set BEFORE to a module .so}; AFTER=${AFTER:?set AFTER to a module .so}
DIR=$(mktemp -d); mkdir -p "$DIR/a" "$DIR/b" "$DIR/lm"
pair() {
  stop
  for n in a b; do
    if [ $n = a ]; then port=17011; l=17111; p=17112; else port=17012; l=17112; p=17111; fi
    redis-server --port $port --bind 127.0.0.1 --dir "$DIR/$n" --logfile "$DIR/$n/redis.log" --daemonize yes \
      --save "" --appendonly no --enable-debug-command yes --loadmodule "$1" node-id $n listen 127.0.0.1:$l peer 127.0.0.1:$p
  done
  for i in $(seq 1 100); do [ "$(redis-cli -p 17011 sync.status | grep -A1 '^link$' | tail -1)" = up ] && return 0; sleep 0.1; done
  echo "the pair did not link up"; exit 1
}
N=${N:-30000}; SIZE=${SIZE:-200000}
fill='for i=1,tonumber(ARGV[1]) do redis.call("RPUSH", KEYS[1], "pre:"..i) end'
bench() { redis-benchmark -p $1 -n $N -P 16 -c 50 -q LMOVE src dst LEFT RIGHT | grep -o '[0-9.]* requests per second' | cut -d' ' -f1; }
stop() { for p in 17011 17012 17013; do redis-cli -p $p shutdown nosave >/dev/null 2>&1; done; sleep 0.5; }
wait_len() { for i in $(seq 1 600); do [ "$(redis-cli -p $1 llen $2)" = "$3" ] && return 0; sleep 0.1; done; echo "timeout waiting for $2=$3 on $1"; }
for cfg in plain native before after; do
  stop
  case $cfg in
    plain) redis-server --port 17011 --save "" --appendonly no --daemonize yes --dir "$DIR/lm" >/dev/null
           sleep 0.3; redis-cli -p 17011 eval "$fill" 1 src $SIZE >/dev/null
           echo "$cfg rps=$(bench 17011)";;
    native) redis-server --port 17011 --save "" --appendonly no --daemonize yes --dir "$DIR/lm" >/dev/null
           redis-server --port 17013 --save "" --appendonly no --daemonize yes --dir "$DIR/lm" --replicaof 127.0.0.1 17011 >/dev/null
           sleep 1; redis-cli -p 17011 eval "$fill" 1 src $SIZE >/dev/null; wait_len 17013 src $SIZE
           o0=$(redis-cli -p 17011 info replication | grep master_repl_offset | tr -d '\r' | cut -d: -f2)
           r=$(bench 17011); wait_len 17013 dst $N
           o1=$(redis-cli -p 17011 info replication | grep master_repl_offset | tr -d '\r' | cut -d: -f2)
           echo "$cfg rps=$r bytes/move=$(( (o1-o0)/N ))";;
    before|after) if [ $cfg = before ]; then pair "$BEFORE"; else pair "$AFTER"; fi
           redis-cli -p 17011 eval "$fill" 1 src $SIZE >/dev/null; wait_len 17012 src $SIZE; sleep 0.5
           b0=$(redis-cli -p 17011 sync.status | grep -A1 '^bytes_sent$' | tail -1)
           r=$(bench 17011); wait_len 17012 dst $N; sleep 0.5
           b1=$(redis-cli -p 17011 sync.status | grep -A1 '^bytes_sent$' | tail -1)
           d1=$(redis-cli -p 17011 debug digest-value src dst | tr '\n' ' '); d2=$(redis-cli -p 17012 debug digest-value src dst | tr '\n' ' ')
           [ "$d1" = "$d2" ] && same=equal || same=DIFFER
           echo "$cfg rps=$r bytes/move=$(( (b1-b0)/N )) digests=$same";;
  esac
done
stop
