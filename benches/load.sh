#!/usr/bin/env bash
# Load benchmark: the gateway against nginx on the same machine, same client
# settings, one run. Drives six targets with wrk and prints req/s, p50, p99
# and the gateway/nginx ratios as a markdown table for BENCHMARKS.md:
#
#   facade    sandgate: GET /payments/v1/customers/{id} (contract example), a public API
#   facade_key  the same on the bundled demo, with the demo tenant's API key
#   facade_jwt  the same on the bundled demo, with a token from its built-in issuer
#   return200 nginx `return 200` with a JSON body of the same size class
#   upstream  sandgate `upstream` API -> a fast local upstream (nginx return 200)
#   proxy     nginx `proxy_pass` (keepalive pool) -> the same upstream
#
# Usage: benches/load.sh   (env: DURATION=10s CONNECTIONS=50 THREADS=2 ROUNDS=3 WARMUP=2s)
#
# PIN_WORKERS=1 runs the sandbox that serves `facade` and `upstream` with
# `pin_workers: true` and gives nginx its nearest equivalent
# (`worker_cpu_affinity auto` and `reuseport` on every listen). The demo
# (`facade_key`, `facade_jwt`) has no configuration file and stays unpinned.
# Installs nginx and wrk with apt when missing. Everything listens on
# 127.0.0.1 on ports the kernel picked; every process it starts is stopped on
# exit (by PID, never by name).
#
# The client is wrk (C, event loop, one thread per core) rather than oha:
# client and servers share the machine's cores, and the lighter the client,
# the less of the CPU it takes from the servers being compared.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
PIN_WORKERS=${PIN_WORKERS:-}
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
BIN=target/release/sandgate
# The commit the binary was built from (read now: others may commit during the run).
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
P_NGX=$(free_port); P_UP=$(free_port); P_PROXY=$(free_port)
P_FACADE=$(free_port); P_FACADE_ADMIN=$(free_port); P_GWUP=$(free_port); P_GWUP_ADMIN=$(free_port)

BODY='{"id":"cus_NffrFeUfNV2Hib","object":"customer","created":1767225600,"email":"jenny.rosen@example.com","name":"Jenny Rosen","description":null,"phone":null,"metadata":{},"livemode":false}'
NGX_AFFINITY=""; NGX_REUSEPORT=""; SG_PIN=""
if [ -n "$PIN_WORKERS" ]; then
  NGX_AFFINITY="worker_cpu_affinity auto;"; NGX_REUSEPORT=" reuseport"; SG_PIN="pin_workers: true"
fi
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes auto;
$NGX_AFFINITY
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$P_UP; keepalive 64; }
  server { listen 127.0.0.1:$P_NGX$NGX_REUSEPORT; location / { default_type application/json; return 200 '$BODY'; } }
  server { listen 127.0.0.1:$P_UP$NGX_REUSEPORT;  location / { default_type application/json; return 200 '$BODY'; } }
  server { listen 127.0.0.1:$P_PROXY$NGX_REUSEPORT; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)

mkdir -p "$WORK/sandbox"
cat > "$WORK/sandbox/sandgate.yaml" <<YAML
listeners:
  - addr: 127.0.0.1:$P_GWUP
admin:
  listen: 127.0.0.1:$P_GWUP_ADMIN
$SG_PIN
apis:
  - name: echo
    prefix: /echo
    mode: upstream
    upstream: { url: "http://127.0.0.1:$P_UP" }
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    mode: facade
YAML
mkdir -p "$WORK/sandbox/contracts" && cp contracts/payments.yaml "$WORK/sandbox/contracts/"
# Access logs off on both sides (nginx: access_log off).
SANDGATE_LOG=warn "$BIN" serve --listen 127.0.0.1:$P_FACADE --admin-listen 127.0.0.1:$P_FACADE_ADMIN >"$WORK/demo.out" & PIDS+=($!)
SANDGATE_LOG=warn "$BIN" serve --config "$WORK/sandbox" >/dev/null & PIDS+=($!)

wait_up() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }
U_DEMO="http://127.0.0.1:$P_FACADE/payments/v1/customers/cus_NffrFeUfNV2Hib"
U_FACADE="http://127.0.0.1:$P_GWUP/payments/v1/customers/cus_NffrFeUfNV2Hib"
U_NGX="http://127.0.0.1:$P_NGX/v1/customers/cus_NffrFeUfNV2Hib"
U_GWUP="http://127.0.0.1:$P_GWUP/echo/v1/customers/cus_NffrFeUfNV2Hib"
U_PROXY="http://127.0.0.1:$P_PROXY/v1/customers/cus_NffrFeUfNV2Hib"
for u in "$U_FACADE" "$U_NGX" "$U_GWUP" "$U_PROXY"; do wait_up "$u"; done
# The demo prints its tenant's credentials; get a token with them.
for _ in $(seq 100); do grep -q '^  client_secret:' "$WORK/demo.out" && break; sleep 0.1; done
API_KEY=$(awk '/^  API key:/ {print $3}' "$WORK/demo.out")
CLIENT_ID=$(awk '/^  client_id:/ {print $2}' "$WORK/demo.out")
CLIENT_SECRET=$(awk '/^  client_secret:/ {print $2}' "$WORK/demo.out")
TOKEN=$(curl -sf -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials \
  "http://127.0.0.1:$P_FACADE/oauth/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
H_KEY="Authorization: Bearer $API_KEY"
H_JWT="Authorization: Bearer $TOKEN"
curl -sf -o /dev/null -H "$H_KEY" "$U_DEMO" && curl -sf -o /dev/null -H "$H_JWT" "$U_DEMO" \
  || { echo "the demo refuses its own credentials" >&2; exit 1; }

# One wrk run: prints "rps p50_ms p99_ms errors" (errors: non-2xx/3xx
# answers plus socket errors; any error makes the run's figures suspect).
run() {
  local url=$1; shift
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Non-2xx or 3xx responses/ { err+=$NF }
    /Socket errors/ { gsub(/,/, ""); err+=$4+$6+$8+$10 }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }'
}
# Warm-up: connections, pools and caches on every path before measuring.
for u in "$U_FACADE" "$U_NGX" "$U_GWUP" "$U_PROXY"; do wrk -t1 -c10 -d"$WARMUP" "$u" >/dev/null; done
wrk -t1 -c10 -d"$WARMUP" -H "$H_KEY" "$U_DEMO" >/dev/null
wrk -t1 -c10 -d"$WARMUP" -H "$H_JWT" "$U_DEMO" >/dev/null

declare -A SUM_RPS SUM_P50 SUM_P99 ERRORS
TARGETS=(facade facade_key facade_jwt return200 upstream proxy)
declare -A URL=([facade]="$U_FACADE" [facade_key]="$U_DEMO" [facade_jwt]="$U_DEMO" [return200]="$U_NGX" [upstream]="$U_GWUP" [proxy]="$U_PROXY")
declare -A HDR=([facade]="X-Bench: 1" [facade_key]="$H_KEY" [facade_jwt]="$H_JWT" [return200]="X-Bench: 1" [upstream]="X-Bench: 1" [proxy]="X-Bench: 1")
for name in "${TARGETS[@]}"; do SUM_RPS[$name]=0; SUM_P50[$name]=0; SUM_P99[$name]=0; ERRORS[$name]=0; done
for r in $(seq "$ROUNDS"); do
  # Interleaved rounds, so drift of the machine affects every target alike.
  for name in "${TARGETS[@]}"; do
    set -- "$name"
    read -r rps p50 p99 err < <(run "${URL[$name]}" -H "${HDR[$name]}")
    echo "round $r $1: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $err" >&2
    ERRORS[$1]=$((ERRORS[$1] + err))
    SUM_RPS[$1]=$(python3 -c "print(${SUM_RPS[$1]}+$rps)")
    SUM_P50[$1]=$(python3 -c "print(${SUM_P50[$1]}+$p50)")
    SUM_P99[$1]=$(python3 -c "print(${SUM_P99[$1]}+$p99)")
  done
done
avg() { python3 -c "print(f'{$1/$ROUNDS:.3f}')"; }
avg_int() { python3 -c "print(f'{$1/$ROUNDS:,.0f}')"; }

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
MEM=$(free -g | awk '/Mem:/{print $2" GiB"}')
echo
echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $COMMIT; machine: $(nproc) cores ($CPU), $MEM;"
echo "load average at start: $LOAD_AT_START; client: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (HTTP/1.1 keep-alive),"
[ -n "$PIN_WORKERS" ] && echo "PIN_WORKERS=1: facade and upstream with pin_workers: true; nginx with worker_cpu_affinity auto and reuseport; the demo rows unpinned;"
echo "$ROUNDS interleaved rounds after a $WARMUP warm-up, means shown; servers and client share the $(nproc) cores."
echo
declare -A LABEL=([facade]="sandgate facade, public API" [facade_key]="sandgate facade, API key (demo)" [facade_jwt]="sandgate facade, JWT (demo, built-in issuer)" [return200]="nginx \`return 200\`" [upstream]="sandgate upstream → nginx" [proxy]="nginx \`proxy_pass\` → nginx")
echo "| target | req/s | p50 ms | p99 ms | errors |"
echo "|---|---:|---:|---:|---:|"
for name in "${TARGETS[@]}"; do
  echo "| ${LABEL[$name]} | $(avg_int ${SUM_RPS[$name]}) | $(avg ${SUM_P50[$name]}) | $(avg ${SUM_P99[$name]}) | ${ERRORS[$name]} |"
done
echo
python3 - "${SUM_RPS[facade]}" "${SUM_RPS[return200]}" "${SUM_RPS[upstream]}" "${SUM_RPS[proxy]}" "${SUM_P99[upstream]}" "${SUM_P99[proxy]}" "${SUM_RPS[facade_key]}" "${SUM_RPS[facade_jwt]}" <<'PY'
import sys
f, n, u, p, u99, p99, fk, fj = map(float, sys.argv[1:])
print(f"facade / nginx return 200: {f/n:.2f}x (target >= 1.00)")
print(f"authenticated facade / nginx return 200: API key {fk/n:.2f}x, JWT {fj/n:.2f}x (target >= 0.90)")
print(f"upstream / nginx proxy_pass: {u/p:.2f}x (target >= 1.00), p99 {u99/p99:.2f}x of nginx's (target <= 1.00)")
PY
