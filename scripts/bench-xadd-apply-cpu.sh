#!/bin/bash
# CPU of the applying peer (b) and the writer (a) per 1M XADD into one stream (prefilled 200k),
# for each module build given, or `native` for a master and its native replica
# (usage: scripts/bench-xadd-apply-cpu.sh native before.so after.so).
# Starts a pair on ports 17011/17012 (17111/17112 for the link) in /tmp/perf/{a,b}.
set -u
mkdir -p /tmp/perf/a /tmp/perf/b
pair() {
  redis-cli -p 17011 shutdown nosave >/dev/null 2>&1; redis-cli -p 17012 shutdown nosave >/dev/null 2>&1; sleep 0.5
  if [ "$1" = native ]; then
    for n in a:17011 b:17012; do
      IFS=: read -r id port <<<"$n"
      redis-server --port "$port" --bind 127.0.0.1 --dir /tmp/perf/$id --logfile /tmp/perf/$id/redis.log --daemonize yes \
        --save "" --appendonly no --enable-debug-command yes
    done
    until redis-cli -p 17012 ping >/dev/null 2>&1; do sleep 0.1; done
    redis-cli -p 17012 replicaof 127.0.0.1 17011 >/dev/null
    until redis-cli -p 17012 info replication | grep -q 'master_link_status:up'; do sleep 0.2; done
    return
  fi
  for n in a:17011:17111:17112 b:17012:17112:17111; do
    IFS=: read -r id port listen peer <<<"$n"
    redis-server --port "$port" --bind 127.0.0.1 --dir /tmp/perf/$id --logfile /tmp/perf/$id/redis.log --daemonize yes \
      --save "" --appendonly no --enable-debug-command yes --loadmodule "$1" node-id "$id" listen 127.0.0.1:$listen peer 127.0.0.1:$peer
  done
  until redis-cli -p 17011 sync.status 2>/dev/null | grep -q '^up$'; do sleep 0.2; done
}
# Repetitions outside, configurations inside: slow drifts in machine load hit all alike.
for rep in 1 2 3 4; do
 for so in "$@"; do
  pair "$so"
  redis-cli -p 17011 eval "for i = 1, 200000 do redis.call('XADD', KEYS[1], '*', 'n', i) end" 1 mystream >/dev/null
  until [ "$(redis-cli -p 17012 xlen mystream)" = "200000" ]; do sleep 0.2; done
  A=$(redis-cli -p 17011 info server | grep process_id | cut -d: -f2 | tr -d '\r'); B=$(redis-cli -p 17012 info server | grep process_id | cut -d: -f2 | tr -d '\r')
  t(){ awk '{print $14+$15}' /proc/$1/stat; }
  a0=$(t $A); b0=$(t $B)
  rps=$(redis-benchmark -p 17011 -n 1000000 -r 1000000 -P 16 -c 50 -q xadd mystream '*' f element:__rand_int__ | tr '\r' '\n' | tail -1 | awk '{print $(NF-5)}')
  until [ "$(redis-cli -p 17012 xlen mystream)" = "1200000" ]; do sleep 0.2; done
  a1=$(t $A); b1=$(t $B)
  echo "$(basename $so) rep $rep: writer rps $rps, writer ticks/M $((a1-a0)), peer ticks/M $((b1-b0)), digests $(redis-cli -p 17011 debug digest-value mystream) $(redis-cli -p 17012 debug digest-value mystream)"
 done
done
redis-cli -p 17011 shutdown nosave >/dev/null 2>&1; redis-cli -p 17012 shutdown nosave >/dev/null 2>&1
