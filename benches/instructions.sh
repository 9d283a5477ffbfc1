#!/usr/bin/env bash
# Instructions per request: the release binary under valgrind's callgrind,
# answering N requests from one keep-alive client, on three routes:
#
#   public    GET /payments/v1/customers/{id} on a public facade API
#   key       the same on the bundled demo, with the demo tenant's API key
#             (identify, admit, clock, decision trace, analytics)
#   jwt       the same with a token from the demo's built-in issuer
#   upstream  GET /echo/v1/customers/{id} forwarded to a local nginx
#   limits_off  the `key` request on a sandbox with the file store and no
#             plan, a tenant provisioned through the admin API
#   limits_on   the same with a plan (rate, two quotas, a concurrency cap,
#             all far above the load): the limit stage's cost is the
#             difference (benches/limits_load.sh measures it in req/s)
#
# Unlike req/s on a shared 2-core VM (±15 % between rounds), an instruction
# count is the same from run to run for the same binary and requests, so a
# change worth 2 % shows. It counts user-space instructions, not the
# kernel's work or cache misses: use it to compare builds, and
# benches/load.sh for throughput. Two columns:
#
#   worker    the worker thread that served the client: the request path
#   all       every gateway thread, adding the background work (trace
#             writer, analytics, quota flushes, the store). Some of that is
#             per second rather than per request, and under callgrind's
#             slowdown a second holds few requests: this column varies more
#             (a few %) and overstates what a loaded gateway spends.
#
# Usage: benches/instructions.sh [route ...]   (env: N=3000 WARM=200 BIN=...)
# Needs valgrind and, for `upstream`, nginx (installed with apt when missing).
# Prints one line per route and, with KEEP=1, leaves callgrind's output in
# target/callgrind/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-3000}
WARM=${WARM:-200}
ROUTES=("$@")
[ ${#ROUTES[@]} -gt 0 ] || ROUTES=(public key upstream)

need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/sandgate
  COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"
else
  COMMIT="binary $BIN"   # built elsewhere: its commit is the caller's to say
fi
BIN=$(realpath "$BIN")

WORK=$(mktemp -d)
OUTDIR=target/callgrind
mkdir -p "$OUTDIR"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
P_UP=$(free_port)

BODY='{"id":"cus_NffrFeUfNV2Hib","object":"customer","created":1767225600,"email":"jenny.rosen@example.com","name":"Jenny Rosen","description":null,"phone":null,"metadata":{},"livemode":false}'
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UP; location / { default_type application/json; return 200 '$BODY'; } }
}
NGX
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)

# One route: start the gateway under callgrind with instrumentation off,
# warm up, switch it on for exactly N requests, dump, and count.
measure() {
  local route=$1 port admin args path out pid
  port=$(free_port); admin=$(free_port)
  path=/payments/v1/customers/cus_NffrFeUfNV2Hib
  case $route in
    public|upstream)
      mkdir -p "$WORK/$route/contracts"
      cp contracts/payments.yaml "$WORK/$route/contracts/"
      cat > "$WORK/$route/sandgate.yaml" <<YAML
listeners:
  - addr: 127.0.0.1:$port
admin:
  listen: 127.0.0.1:$admin
apis:
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    mode: facade
  - name: echo
    prefix: /echo
    mode: upstream
    upstream: { url: "http://127.0.0.1:$P_UP" }
YAML
      args=(serve --config "$WORK/$route")
      [ "$route" = upstream ] && path=/echo/v1/customers/cus_NffrFeUfNV2Hib
      ;;
    key|jwt) args=(serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin") ;;
    limits_off|limits_on)
      mkdir -p "$WORK/$route/contracts" "$WORK/$route/policies"
      cp contracts/payments.yaml "$WORK/$route/contracts/"
      [ "$route" = limits_on ] && cat > "$WORK/$route/policies/plans.yaml" <<'YAML'
plans:
  bench:
    rate: { requests: 1000000, per: 1s, burst: 10000000 }
    quotas:
      - { requests: 1000000000, per: day }
      - { requests: 1000000000, per: lifetime }
    concurrency: 10000
default_plan: bench
YAML
      cat > "$WORK/$route/sandgate.yaml" <<YAML
listeners:
  - addr: 127.0.0.1:$port
admin:
  listen: 127.0.0.1:$admin
store: { kind: file, path: data/$route.redb }
auth:
  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }
apis:
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    mode: facade
YAML
      args=(serve --config "$WORK/$route")
      ;;
    *) echo "unknown route: $route (public, key, jwt, upstream, limits_off, limits_on)" >&2; exit 2 ;;
  esac
  out="$OUTDIR/$route.out"
  rm -f "$out" "$out".* "$out"-*
  (cd "$WORK" && SANDGATE_ADMIN_TOKEN=bench-admin-token SANDGATE_LOG=warn exec valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
    --callgrind-out-file="$OLDPWD/$out" "$BIN" "${args[@]}" >"$WORK/$route.log" 2>"$WORK/$route.vg") &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port$path" && break; sleep 0.2; done
  local key=""
  case $route in
    key)
      for _ in $(seq 100); do grep -q '^  API key:' "$WORK/$route.log" && break; sleep 0.1; done
      key=$(awk '/^  API key:/ {print $3}' "$WORK/$route.log")
      ;;
    jwt)
      for _ in $(seq 100); do grep -q '^  client_secret:' "$WORK/$route.log" && break; sleep 0.1; done
      key=$(curl -sf -u "$(awk '/^  client_id:/ {print $2}' "$WORK/$route.log"):$(awk '/^  client_secret:/ {print $2}' "$WORK/$route.log")" \
        -d grant_type=client_credentials "http://127.0.0.1:$port/oauth/token" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
      ;;
    limits_*)
      key=$(curl -sf -H "Authorization: Bearer bench-admin-token" -H 'Content-Type: application/json' \
        -d '{"prospect_company":"Bench","prospect_email":"bench@example.com"}' \
        "http://127.0.0.1:$admin/internal/sandboxes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["credentials"]["api_key"])')
      ;;
  esac
  python3 - "$port" "$path" "$key" "$N" "$WARM" "$pid" <<'PY'
import http.client, subprocess, sys
port, path, key, n, warm, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
headers = {"Authorization": "Bearer " + key} if key else {}
conn = http.client.HTTPConnection("127.0.0.1", int(port))
def one():
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{path}: status {r.status}")
for _ in range(warm):
    one()
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
for _ in range(n):
    one()
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
PY
  callgrind_control -d "$pid" >/dev/null 2>&1
  # One file per thread (out.1-01, out.1-02, ...), each with its total.
  local total=0 worker=0 t f
  for f in "$out".1-*; do
    t=$(awk '/^totals:/ {print $2}' "$f")
    total=$((total + t))
    [ "$t" -gt "$worker" ] && worker=$t
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf '| %s | %s | %s | %s |\n' "$route" "$N" "$((worker / N))" "$((total / N))"
  [ -n "${KEEP:-}" ] || rm -f "$out" "$out".* "$out"-*
}

echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $COMMIT; valgrind $(valgrind --version | sed 's/valgrind-//');"
echo "one keep-alive client, $WARM warm-up requests, then N counted."
echo
echo "| route | requests | worker thread, per request | all threads, per request |"
echo "|---|---:|---:|---:|"
for r in "${ROUTES[@]}"; do measure "$r"; done
