#!/usr/bin/env bash
# Installs what building and testing redis-bisync needs on Debian 12 (as root):
# redis-server 7.0, clang and libclang-dev (for the redis-module bindings),
# openssl (scripts/make-test-certs.sh, used by the TLS tests),
# and checks for a Rust toolchain. Safe to run again: it installs only what
# is missing.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || need+=(cargo rustc)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root (or install them) and retry" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]} with apt-get (quiet; about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  aptlog=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    rm -f "$aptlog"
    echo "setup: apt-get failed (output above)" >&2
    exit 1
  fi
  rm -f "$aptlog"
  # Debian's redis-server package starts a server on 6379; we do not need it.
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: no cargo found" >&2; exit 1; }
# The dependencies (and dev-dependencies) need Rust 1.88;
# Debian 12's own rustc is 1.63: say so instead of failing mid-build.
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if ! [ "$rustc_minor" -ge 88 ] 2>/dev/null; then
  echo "setup: Rust >= 1.88 is required, found: $(rustc --version) (install it with rustup)" >&2
  exit 1
fi
redis-server --version | grep -q "v=7\." || {
  echo "setup: redis-server 7.x is required, found: $(redis-server --version)" >&2
  exit 1
}
