#!/usr/bin/env bash
# The benchmark command (issue 6): measures redis-bisync against plain Redis and
# native replication on this machine (figures B1-B8) and writes BENCHMARKS.md.
#
#   bash scripts/bench.sh            # full run: 5 interleaved repetitions, ~20 min
#   QUICK=1 bash scripts/bench.sh    # smoke test: each figure once, small sizes, ~2-3 min
#
# Environment (all optional):
#   BISYNC_MODULE=path.so   module to load; default: cargo build --release, then
#                           target/release/libredis_bisync.so
#   OUT=BENCHMARKS.md       report path;  RESULTS_JSON=target/bench/results.json raw data
#                           (QUICK: target/bench/BENCHMARKS-quick.md and results-quick.json, so a
#                           smoke run never overwrites the committed BENCHMARKS.md)
#   FIGURES=B1,B2,...       figures to run (default all: B1,B2,B3,B4,B5,B6,B7,B7S,B8;
#                           B7S = B7 by key size, B8 = INCRBY from both sides + sum check)
#   REPEATS=5               repetitions per figure (QUICK: 1)
#   BENCH_TIMEOUT=1800      hard limit for the whole run, seconds (QUICK: 600)
#   KEEP=1                  keep the work directory (server logs) after a successful run
#   sizes: B1_SECONDS B1_TESTS B1_MODES B2_SAMPLES B2_LOAD_RATE B2_GAP_MS B3_SETS B4_KEYS
#          B5_KEYS B5_CHANGES B5_DIRTY_ROUNDS B5_TIMEOUT B6_KEYS B7_WRITES B7_TIMEOUT
#          B7_DRAIN_TIMEOUT B7_PIPELINE B7S_SIZES B7S_TESTS B7S_WRITES B8_KEYS B8_SECONDS B8_CHUNK
#          B8_CONVERGE_TIMEOUT B8_VARIANTS VALUE_SIZE DRAIN_TIMEOUT ACK_TIMEOUT
#          BISYNC_ARGS (extra module arguments) BISYNC_SECRET=0 (no secret-file)
#          (defaults at the top of scripts/bench.py; BENCHMARKS.md records the values used)
#
# Every server is started on a free loopback port under a fresh work directory in
# /tmp and stopped at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

for tool in redis-server redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is not installed (bash scripts/setup.sh installs Redis)" >&2; exit 1; }
done
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
  || { echo "bench: python3 >= 3.9 is needed" >&2; exit 1; }

if [ -z "${BISYNC_MODULE:-}" ]; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  echo "== cargo build --release"
  cargo build --release --quiet
  BISYNC_MODULE="$root/target/release/libredis_bisync.so"
fi
[ -f "$BISYNC_MODULE" ] || { echo "bench: module not found: $BISYNC_MODULE" >&2; exit 1; }
BISYNC_MODULE=$(cd "$(dirname "$BISYNC_MODULE")" && pwd)/$(basename "$BISYNC_MODULE")

quick=${QUICK:-0}
if [ "$quick" != 0 ]; then limit=${BENCH_TIMEOUT:-600}; else limit=${BENCH_TIMEOUT:-1800}; fi
if [ "$quick" != 0 ]; then
  out=${OUT:-$root/target/bench/BENCHMARKS-quick.md}
  json=${RESULTS_JSON:-$root/target/bench/results-quick.json}
else
  out=${OUT:-$root/BENCHMARKS.md}
  json=${RESULTS_JSON:-$root/target/bench/results.json}
fi
mkdir -p "$(dirname "$out")" "$(dirname "$json")"
git_desc="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock build.rs 2>/dev/null)" ]; then
  git_desc="$git_desc (with uncommitted changes in src/ or Cargo files)"
fi

work=$(mktemp -d /tmp/bisync-bench.XXXXXX)
status=1
runner=
starttime() { # pid -> its start time in clock ticks (field 22 of /proc/<pid>/stat), or nothing
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  st=${st##*) }
  set -- $st
  echo "${20}"
}
ours() { # "pid starttime" line from bench.py: is that process still alive and the same one?
  [ -n "$1" ] && [ -n "$2" ] && [ "$(starttime "$1")" = "$2" ]
}
cleanup() {
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    kill -TERM "$runner" 2>/dev/null || true  # bench.py stops its servers and writes a partial report
    for _ in $(seq 1 30); do kill -0 "$runner" 2>/dev/null || break; sleep 0.5; done
  fi
  # Backstop: stop every redis-server this run started (recorded by bench.py as
  # "pid starttime"), by pid, if it is still that same process.
  if [ -f "$work/pids" ]; then
    left=0
    while read -r pid st; do
      if ours "$pid" "$st"; then
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        left=1
      fi
    done <"$work/pids"
    if [ "$left" = 1 ]; then
      sleep 2
      while read -r pid st; do
        if ours "$pid" "$st"; then kill -KILL "$pid" 2>/dev/null || true; fi
      done <"$work/pids"
    fi
  fi
  if [ "$status" = 0 ] && [ "${KEEP:-0}" = 0 ]; then
    rm -rf "$work"
  else
    echo "bench: server logs kept in $work" >&2
  fi
}
trap cleanup EXIT
trap 'status=130; exit 130' INT
trap 'status=143; exit 143' TERM

echo "== benchmarking $BISYNC_MODULE (work dir $work, time limit ${limit}s)"
# In the background + wait, so that Ctrl-C / TERM reach the trap at once.
timeout --signal=TERM --kill-after=30 "$limit" \
  python3 "$root/scripts/bench.py" --work "$work" --module "$BISYNC_MODULE" \
  --out "$out" --json "$json" --git "$git_desc" &
runner=$!
set +e
wait "$runner"
status=$?
set -e
runner=
if [ "$status" = 124 ]; then echo "bench: stopped after the ${limit}s limit" >&2; fi
[ -f "$out" ] && echo "== wrote $out"
exit "$status"
