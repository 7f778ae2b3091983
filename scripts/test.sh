#!/usr/bin/env bash
# Runs the whole test suite: formatting and lint checks, the release build
# of the module, unit and property tests of the pure core, the seeded
# simulation, and the integration tests that start real redis-server
# processes with the module. Fails loudly if anything it needs is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo "== cargo build --release"
cargo build --release
test -f target/release/libredis_bisync.so || { echo "module was not built" >&2; exit 1; }
echo "== cargo test"
BISYNC_MODULE="$(pwd)/target/release/libredis_bisync.so" cargo test --release -- --test-threads "${TEST_THREADS:-3}"
