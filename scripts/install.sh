#!/usr/bin/env bash
# Installs redis-bisync on this server where redis.conf.example expects it:
#   the module -> /usr/local/lib/libredis_bisync.so  (mode 0755: Redis 7 loads only executable modules)
#   the secret -> /etc/redis/bisync.secret           (mode 0600, owned by the redis user)
# then prints the loadmodule line to add to redis.conf. Run it as root on both
# servers. Both must hold the SAME secret: run it on the first server, copy that
# secret file to the second (scp, keeping mode 0600), then run it there: an
# existing secret is never replaced.
#
# Environment (all optional):
#   BISYNC_MODULE=path.so        install this build (default: cargo build --release first)
#   BISYNC_LIB_DIR=/usr/local/lib
#   BISYNC_SECRET_FILE=/etc/redis/bisync.secret
#   BISYNC_OWNER=redis           user that must read the secret (the Redis server's user)
set -euo pipefail
cd "$(dirname "$0")/.."
lib_dir=${BISYNC_LIB_DIR:-/usr/local/lib}
secret=${BISYNC_SECRET_FILE:-/etc/redis/bisync.secret}
owner=${BISYNC_OWNER:-redis}

if [ -z "${BISYNC_MODULE:-}" ]; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null || { echo "install: no cargo found (bash scripts/setup.sh checks what is missing)" >&2; exit 1; }
  echo "install: building the module (cargo build --release; a first build takes about 2 minutes on 2 cores)"
  cargo build --release
  BISYNC_MODULE=target/release/libredis_bisync.so
fi
[ -f "$BISYNC_MODULE" ] || { echo "install: module not found: $BISYNC_MODULE" >&2; exit 1; }

# The module: copied next to its destination, then renamed over it, so a
# server that has the old file mapped keeps running on it.
mkdir -p "$lib_dir"
dest="$lib_dir/libredis_bisync.so"
cp "$BISYNC_MODULE" "$dest.new"
chmod 0755 "$dest.new"
mv -f "$dest.new" "$dest"
echo "install: module  $dest"

# The secret: created with no permission for anyone but its owner from the
# first byte on (umask), never replaced.
mkdir -p "$(dirname "$secret")"
if [ -s "$secret" ]; then
  echo "install: secret  $secret (kept: it already exists)"
else
  (
    umask 077
    head -c 32 /dev/urandom | base64 >"$secret.new"
    mv -f "$secret.new" "$secret"
  )
  echo "install: secret  $secret (new: copy this same file to the other server)"
fi
chmod 0600 "$secret"
if [ "$(id -u)" = 0 ] && [ -n "$owner" ] && id "$owner" >/dev/null 2>&1; then
  chown "$owner:" "$secret"
fi

cat <<MSG
install: done. Add to redis.conf (see redis.conf.example; on the other server swap listen and peer, node-id b):
  loadmodule $dest node-id a listen <this host>:7101 peer <other host>:7101 secret-file $secret
MSG
