#!/usr/bin/env bash
# Runs the whole test suite: formatting and lint checks, the release build
# of the module, unit and property tests of the pure core, the seeded
# simulation, and the integration tests that start real servers with the
# module, once per server of the compatibility matrix (the system's
# redis-server and each stock build in ../shared/redis-builds/), plus
# cross-version pairs. Fails loudly if anything it needs is missing: a
# missing server build fails the run, it is never skipped.
#
# Environment: TEST_THREADS (default 3) threads per test binary;
# MATRIX="system redis-7.4.1 …" runs only those labelled runs (default: all);
# BUILDS=path overrides ../shared/redis-builds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
builds="${BUILDS:-../shared/redis-builds}"
# Absolute: the test harness starts each server from inside its data dir.
[ -d "$builds" ] && builds="$(cd "$builds" && pwd)"
threads="${TEST_THREADS:-3}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings
# One build serves every step below: Cargo.toml asks for the dev-dependencies' features
# on the shared crates, so `cargo build` and `cargo test` do not rebuild each other.
echo "== cargo build --release"
cargo build --release --all-targets
module="$(pwd)/target/release/libredis_bisync.so"
test -f "$module" || { echo "module was not built" >&2; exit 1; }
export BISYNC_MODULE="$module"

failed=()
# run LABEL CARGO-TEST-ARGS…: one labelled step; a failure is recorded, the others still run.
run() {
  local label="$1"; shift
  local start=$SECONDS
  echo
  echo "==================== $label"
  if cargo test --release --no-fail-fast "$@" -- --test-threads "$threads"; then
    echo "==================== $label: ok ($((SECONDS - start)) s)"
  else
    echo "==================== $label: FAILED ($((SECONDS - start)) s)" >&2
    failed+=("$label")
  fi
}

# Unit, property, simulation and fuzz-corpus tests do not start servers: run them once.
run "unit+simulation" --lib --test simulation --test fuzz_corpus --test harness_selftest

integration=(--test replication --test convergence --test resilience --test fullsync --test hostile --test tls --test operator --test elements --test restart)

# server LABEL → path of its binary (empty if the label is unknown).
server_path() {
  case "$1" in
    system) command -v redis-server || true ;;
    redis-7.2.6) echo "$builds/redis-7.2.6/src/redis-server" ;;
    redis-7.4.1) echo "$builds/redis-7.4.1/src/redis-server" ;;
    valkey-8.0.1) echo "$builds/valkey-8.0.1/src/valkey-server" ;;
  esac
}

# check_server LABEL: the binary exists and runs; otherwise the run fails, loudly.
check_server() {
  local bin
  bin="$(server_path "$1")"
  if [ -z "$bin" ] || [ ! -x "$bin" ] || ! "$bin" --version >/dev/null 2>&1; then
    echo "==================== $1: SERVER MISSING: '${bin:-?}' is not an executable server build" >&2
    failed+=("$1 (server missing)")
    return 1
  fi
  echo "== $1: $("$bin" --version)"
}

# Same-version runs: every integration test against one server; the 7.4 run adds the
# hash-field-TTL tests (they need the feature and fail if the server lacks it).
for label in ${MATRIX:-system redis-7.2.6 redis-7.4.1 valkey-8.0.1 system+redis-7.4.1 redis-7.2.6+valkey-8.0.1}; do
  case "$label" in
    *+*)
      # Cross-version pair: node a runs the first server, node b the second.
      a="${label%%+*}"; b="${label#*+}"
      check_server "$a" && check_server "$b" || continue
      BISYNC_REDIS_SERVER="$(server_path "$a")" BISYNC_REDIS_SERVER_B="$(server_path "$b")" \
        run "$label (node a: $a, node b: $b)" --test replication --test convergence --test crossversion --test elements
      ;;
    *)
      check_server "$label" || continue
      extra=()
      [ "$label" = redis-7.4.1 ] && extra=(--test field_ttl)
      BISYNC_REDIS_SERVER="$(server_path "$label")" BISYNC_SERVER_LABEL="$label" \
        run "$label" "${integration[@]}" "${extra[@]}"
      ;;
  esac
done

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all runs passed"
