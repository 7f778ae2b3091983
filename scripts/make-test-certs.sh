#!/usr/bin/env bash
# Make a throw-away CA and one certificate per node for the bisync link's TLS.
#
#   bash scripts/make-test-certs.sh DIR [NODE...]      (default nodes: a b)
#
# Writes DIR/ca.crt, DIR/ca.key and DIR/<node>.crt, DIR/<node>.key for each node.
# Each node certificate is valid for both ends of TLS (serverAuth and clientAuth),
# because either node may dial the other, and names 127.0.0.1, ::1 and localhost.
# Extra names: BISYNC_TLS_SANS="IP:10.0.0.1,DNS:redis-a.example" (appended).
# For testing and trials; in production use certificates from your own CA.
set -euo pipefail
dir=${1:?usage: make-test-certs.sh DIR [NODE...]}
shift
nodes=("$@")
[ ${#nodes[@]} -gt 0 ] || nodes=(a b)
if ! command -v openssl >/dev/null; then
    echo "make-test-certs: openssl is required (apt-get install -y openssl)" >&2
    exit 1
fi
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 3650 -subj "/CN=bisync test CA" 2>/dev/null
sans="IP:127.0.0.1,IP:::1,DNS:localhost${BISYNC_TLS_SANS:+,$BISYNC_TLS_SANS}"
for n in "${nodes[@]}"; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$dir/$n.key" -out "$dir/$n.csr" -subj "/CN=bisync-$n" 2>/dev/null
    openssl x509 -req -in "$dir/$n.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 825 -out "$dir/$n.crt" \
        -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans") \
        2>/dev/null
    rm -f "$dir/$n.csr"
done
rm -f "$dir/ca.srl"
chmod 644 "$dir"/*.crt
echo "certificates in $dir: ca.crt ${nodes[*]/%/.crt}"
