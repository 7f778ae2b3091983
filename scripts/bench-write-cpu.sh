#!/bin/bash
# CPU of the writer (a) and the applying peer (b) per 1M writes of one redis-benchmark command,
# for each module build given, 3 repetitions with the builds interleaved:
#   scripts/bench-write-cpu.sh "hset myhash:__rand_int__ element:__rand_int__ xxx" before.so after.so
# A build may carry extra module arguments after a '#', commas for spaces:
#   scripts/bench-write-cpu.sh "incr counter:__rand_int__" now.so "now.so#history-size,0"
# Starts a pair on ports 17011/17012 (17111/17112 for the link) in /tmp/perf/{a,b}.
set -u
ARGS="$1"; shift
mkdir -p /tmp/perf/a /tmp/perf/b
for rep in 1 2 3; do
 for entry in "$@"; do
  so="${entry%%#*}"; extra=""; [ "$entry" != "$so" ] && extra="$(echo "${entry#*#}" | tr ',' ' ')"
  redis-cli -p 17011 shutdown nosave >/dev/null 2>&1; redis-cli -p 17012 shutdown nosave >/dev/null 2>&1; sleep 0.5
  for n in a:17011:17111:17112 b:17012:17112:17111; do
    IFS=: read -r id port listen peer <<<"$n"
    redis-server --port "$port" --bind 127.0.0.1 --dir /tmp/perf/$id --logfile /tmp/perf/$id/redis.log --daemonize yes \
      --save "" --appendonly no --loadmodule "$so" node-id "$id" listen 127.0.0.1:$listen peer 127.0.0.1:$peer $extra
  done
  until redis-cli -p 17011 sync.status 2>/dev/null | grep -q '^up$'; do sleep 0.2; done
  A=$(redis-cli -p 17011 info server | grep process_id | cut -d: -f2 | tr -d '\r'); B=$(redis-cli -p 17012 info server | grep process_id | cut -d: -f2 | tr -d '\r')
  t(){ awk '{print $14+$15}' /proc/$1/stat; }
  a0=$(t $A); b0=$(t $B)
  rps=$(redis-benchmark -p 17011 -n 1000000 -r 1000000 -P 16 -c 50 -q $ARGS | tr '\r' '\n' | tail -1 | awk '{print $(NF-5)}')
  sleep 0.3; until [ "$(redis-cli -p 17011 sync.status | grep -A1 '^backlog_bytes$' | tail -1)" = "0" ]; do sleep 0.2; done; sleep 0.3
  a1=$(t $A); b1=$(t $B)
  echo "$(basename "$so")${extra:+ ($extra)} rep $rep: rps $rps writer $((a1-a0)) peer $((b1-b0))"
 done
done
redis-cli -p 17011 shutdown nosave >/dev/null 2>&1; redis-cli -p 17012 shutdown nosave >/dev/null 2>&1
