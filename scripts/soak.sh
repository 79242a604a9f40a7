#!/usr/bin/env bash
# The soak: SOAK_STATIONS stations (default 32) for SOAK_DURATION (default 10m) against a release
# `kensa serve` on loopback, over native HTTP, native gRPC and the Open Inference Protocol (HTTP
# and gRPC), with TLS on both ports and a token per station (bound to its station id). Prints
# each minute's p50/p99 and errors, the server's resident memory and open descriptors at start
# and end, and checks that every acknowledged unit is stored once. Bounded in time; it sends
# traffic to 127.0.0.1 only. The certificates and tokens are made here, for this run only.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${SOAK_DURATION:-10m}
stations=${SOAK_STATIONS:-32}

scripts/setup-ort.sh
cargo build --release --locked -p kensa --bin kensa
cargo build --release --locked -p kensa-bench --bin kensa-soak

work=$(mktemp -d /tmp/kensa-soak.XXXXXX)
server=""
cleanup() {
  if [[ -n "$server" ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

new_token() {
  head -c 32 /dev/urandom | base64 | tr -d '/+=\n'
}

# A CA and a server certificate for kensa.test, valid for a day, for this run only.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=kensa soak CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kensa.test" \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:kensa.test\nextendedKeyUsage=serverAuth\n' >"$work/server.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 1 -extfile "$work/server.ext" -out "$work/server.pem" 2>/dev/null

# One token per station, bound to its station id, and one for the MES check.
: >"$work/tokens"
: >"$work/clients.toml"
for i in $(seq 0 $((stations - 1))); do
  token=$(new_token)
  echo "$token" >>"$work/tokens"
  printf '[[client]]\nname = "soak-%d"\ntoken_sha256 = "%s"\nscopes = ["station"]\nstations = ["soak-%d"]\n\n' \
    "$i" "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" "$i" >>"$work/clients.toml"
done
mes=$(new_token)
printf '[[client]]\nname = "mes"\ntoken_sha256 = "%s"\nscopes = ["mes"]\n' \
  "$(printf %s "$mes" | sha256sum | cut -d' ' -f1)" >>"$work/clients.toml"

http=$(free_port)
grpc=$(free_port)
target/release/kensa serve --model-repository models/demo --device cpu \
  --http-port "$http" --grpc-port "$grpc" --data-dir "$work/data" \
  --tls-cert "$work/server.pem" --tls-key "$work/server.key" \
  --auth-clients "$work/clients.toml" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  if curl -sf --cacert "$work/ca.pem" --resolve "kensa.test:$http:127.0.0.1" \
    "https://kensa.test:$http/readyz" >/dev/null; then
    break
  fi
  sleep 0.2
done

echo "machine: $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
target/release/kensa-soak --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" \
  --ca "$work/ca.pem" --station-tokens "$work/tokens" --mes-token "$mes" \
  --pid "$server" --duration "$duration" --stations "$stations" || status=$?
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server warnings and errors: $(grep -cE '"level":"(WARN|ERROR)"|WARN|ERROR' "$work/server.log" || true)"
grep -E 'ERROR' "$work/server.log" | head -5 || true
exit "$status"
