#!/bin/bash
# A consumer group reading a 200k-entry stream: one script per request reads one entry
# (XREADGROUP COUNT 1) and acknowledges it (XACK), 20,000 requests from 10 clients.
# For `plain` (one server), `native` (a master and its native replica) and each module build
# given: requests/s on a, link bytes per request (bisync: SYNC.STATUS bytes_sent; native: the
# replication offset), and for the module whether b's groups equal a's afterwards (XINFO STREAM FULL without
# the consumers' seen/active times).
# Usage: scripts/bench-xreadgroup.sh plain native before.so after.so (N=… requests, REPS=…;
# a build that ships the whole stream per read needs a small N: ~5 requests/s)
# Starts servers on ports 17021/17022 (17121/17122 for the link) in /tmp/perf-xrg/{a,b}.
set -u
REPS=${REPS:-3}
N=${N:-20000}
mkdir -p /tmp/perf-xrg/a /tmp/perf-xrg/b
stop() { redis-cli -p 17021 shutdown nosave >/dev/null 2>&1; redis-cli -p 17022 shutdown nosave >/dev/null 2>&1; sleep 0.5; }
server() { # id port [args...]
  local id=$1 port=$2; shift 2
  redis-server --port "$port" --bind 127.0.0.1 --dir /tmp/perf-xrg/$id --logfile /tmp/perf-xrg/$id/redis.log \
    --daemonize yes --save "" --appendonly no --enable-debug-command yes "$@"
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}
start() {
  stop
  case "$1" in
    plain) server a 17021 ;;
    native)
      server a 17021; server b 17022
      redis-cli -p 17022 replicaof 127.0.0.1 17021 >/dev/null
      until redis-cli -p 17022 info replication | grep -q 'master_link_status:up'; do sleep 0.2; done ;;
    *)
      server a 17021 --loadmodule "$1" node-id a listen 127.0.0.1:17121 peer 127.0.0.1:17122
      server b 17022 --loadmodule "$1" node-id b listen 127.0.0.1:17122 peer 127.0.0.1:17121
      until redis-cli -p 17021 sync.status 2>/dev/null | grep -q '^up$'; do sleep 0.2; done ;;
  esac
}
sent() {
  case "$1" in
    plain) echo 0 ;;
    native) redis-cli -p 17021 info replication | grep '^master_repl_offset' | cut -d: -f2 | tr -d '\r' ;;
    *) redis-cli -p 17021 sync.status | grep -A1 -x bytes_sent | tail -1 ;;
  esac
}
groups() {
  redis-cli -p "$1" xinfo stream ev full count 0 |
    awk 'skip { skip = 0; next } /^(seen-time|active-time)$/ { skip = 1; next } { print }' | md5sum | cut -c1-8
}
READ="local r = redis.call('XREADGROUP','GROUP','g','c1','COUNT','1','STREAMS',KEYS[1],'>') \
local id = r[1][2][1][1] redis.call('XACK', KEYS[1], 'g', id) return id"
for rep in $(seq 1 "$REPS"); do
  for cfg in "$@"; do
    start "$cfg"
    redis-cli -p 17021 eval "for i = 1, 200000 do redis.call('XADD', KEYS[1], '*', 'n', i) end" 1 ev >/dev/null
    redis-cli -p 17021 xgroup create ev g 0 >/dev/null
    redis-cli -p 17021 xgroup createconsumer ev g c1 >/dev/null
    if [ "$cfg" != plain ]; then until [ "$(redis-cli -p 17022 xlen ev)" = 200000 ]; do sleep 0.2; done; sleep 1; fi
    s0=$(sent "$cfg")
    rps=$(redis-benchmark -p 17021 -n "$N" -c 10 -q eval "$READ" 1 ev | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)
    same=-
    if [ "$cfg" != plain ] && [ "$cfg" != native ]; then
      for _ in $(seq 1 600); do [ "$(groups 17021)" = "$(groups 17022)" ] && break; sleep 0.1; done
      [ "$(groups 17021)" = "$(groups 17022)" ] && same=yes || same=NO
    fi
    s1=$(sent "$cfg")
    echo "rep $rep $(basename "$cfg"): $rps requests/s, $(( (s1 - s0) / N )) link bytes per request, groups equal: $same"
  done
done
stop
