#!/usr/bin/env bash
# Load benchmark of per-tenant state: create-then-read of a stateful
# resource (POST /payments/v1/customers, then GET of the id it answered,
# alternating on every connection) with a sandbox API key, on one node with
# the embedded file store and on one node with the Redis store. Each set-up
# starts empty; the objects created stay. Non-2xx answers count as errors
# (a GET that does not find what was just created would be one).
#
# Usage: benches/state_load.sh   (env: DURATION=10s CONNECTIONS=50 ROUNDS=3 WARMUP=2s)
# Installs wrk and redis-server with apt when missing. Every process it
# starts is stopped on exit (by PID, never by name).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet
BIN=target/release/sandgate
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/*/pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  # Not children of this shell: wait for them by polling (they drain first).
  for f in "$WORK"/*/pid; do
    [ -f "$f" ] || continue
    for _ in $(seq 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
export SANDGATE_ADMIN_TOKEN=bench-admin-token
P_REDIS=$(free_port)
redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)

# sandbox NAME STORE: writes $WORK/NAME, starts it, prints "public admin" ports.
sandbox() {
  local name=$1 store=$2 dir="$WORK/$1"
  local pub adm; pub=$(free_port); adm=$(free_port)
  mkdir -p "$dir/contracts"
  cp contracts/payments.yaml "$dir/contracts/"
  cat > "$dir/sandgate.yaml" <<YAML
listeners:
  - addr: 127.0.0.1:$pub
admin:
  listen: 127.0.0.1:$adm
store: $store
auth:
  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }
apis:
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    mode: facade
    state: {}
YAML
  # This runs in a subshell (`< <(sandbox …)`), so the PID goes to a file
  # that cleanup reads: PIDS+= here would not reach the script.
  SANDGATE_LOG=warn "$BIN" serve --config "$dir" >/dev/null 2>"$dir/err" & echo $! > "$dir/pid"
  echo "$pub $adm"
}
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }
provision() { # admin port -> API key
  curl -sf -H "Authorization: Bearer $SANDGATE_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"prospect_company":"Bench","prospect_email":"bench@example.com"}' \
    "http://127.0.0.1:$1/internal/sandboxes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["credentials"]["api_key"])'
}

read -r F_P F_A < <(sandbox file "{ kind: file, path: data/state.redb }")
read -r R_P R_A < <(sandbox redis "{ kind: redis, url: \"redis://127.0.0.1:$P_REDIS/0\", timeout: 200ms, on_error: fail_closed }")
for p in $F_A $R_A; do wait_up "http://127.0.0.1:$p/healthz"; done
declare -A URL=([file]="http://127.0.0.1:$F_P" [redis]="http://127.0.0.1:$R_P")
declare -A ADMIN=([file]="http://127.0.0.1:$F_A" [redis]="http://127.0.0.1:$R_A")
declare -A KEY=([file]="$(provision "$F_A")" [redis]="$(provision "$R_A")")

# Create, then read what was created: every GET must find its object.
cat > "$WORK/create_read.lua" <<'LUA'
local key = os.getenv("SANDGATE_KEY")
local pending = {}
request = function()
  local id = table.remove(pending)
  if id then
    return wrk.format("GET", "/payments/v1/customers/" .. id, { ["Authorization"] = "Bearer " .. key })
  end
  return wrk.format("POST", "/payments/v1/customers",
    { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" },
    '{"email":"bench@example.com","name":"Bench","metadata":{"run":"load"}}')
end
response = function(status, headers, body)
  if status ~= 200 then return end
  local id = body:match('"id":"(cus_[^"]+)"')
  if id and #pending < 1000 then table.insert(pending, id) end
end
LUA
for t in file redis; do
  id=$(curl -sf -H "Authorization: Bearer ${KEY[$t]}" -H 'Content-Type: application/json' \
    -d '{"email":"a@example.com"}' "${URL[$t]}/payments/v1/customers" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${KEY[$t]}" "${URL[$t]}/payments/v1/customers/$id")
  [ "$code" = 200 ] || { echo "$t: created $id but reading it answered $code" >&2; exit 1; }
done

run() {
  SANDGATE_KEY=${KEY[$1]} wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/create_read.lua" "${URL[$1]}" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Non-2xx or 3xx responses/ { err+=$NF }
    /Socket errors/ { gsub(/,/, ""); err+=$4+$6+$8+$10 }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }'
}
for t in file redis; do SANDGATE_KEY=${KEY[$t]} wrk -t1 -c10 -d"$WARMUP" -s "$WORK/create_read.lua" "${URL[$t]}" >/dev/null; done

TARGETS=(file redis)
declare -A SUM_RPS SUM_P50 SUM_P99 ERRORS
for t in "${TARGETS[@]}"; do SUM_RPS[$t]=0; SUM_P50[$t]=0; SUM_P99[$t]=0; ERRORS[$t]=0; done
for r in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    read -r rps p50 p99 err < <(run "$t")
    echo "round $r $t: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $err" >&2
    ERRORS[$t]=$((ERRORS[$t] + err))
    SUM_RPS[$t]=$(python3 -c "print(${SUM_RPS[$t]}+$rps)")
    SUM_P50[$t]=$(python3 -c "print(${SUM_P50[$t]}+$p50)")
    SUM_P99[$t]=$(python3 -c "print(${SUM_P99[$t]}+$p99)")
  done
done
avg() { python3 -c "print(f'{$1/$ROUNDS:.3f}')"; }
avg_int() { python3 -c "print(f'{$1/$ROUNDS:,.0f}')"; }
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
MEM=$(free -g | awk '/Mem:/{print $2" GiB"}')
echo
echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $COMMIT; machine: $(nproc) cores ($CPU), $MEM;"
echo "load average at start: $LOAD_AT_START; client: wrk -t2 -c$CONNECTIONS -d$DURATION (HTTP/1.1 keep-alive),"
echo "alternating POST /payments/v1/customers and GET of an id it created;"
echo "$ROUNDS interleaved rounds after a $WARMUP warm-up, means shown; server, Redis and client share the $(nproc) cores."
echo
declare -A LABEL=([file]="one node, file store (redb)" [redis]="one node, Redis store")
echo "| set-up | req/s (creates + reads) | p50 ms | p99 ms | errors |"
echo "|---|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
  echo "| ${LABEL[$t]} | $(avg_int ${SUM_RPS[$t]}) | $(avg ${SUM_P50[$t]}) | $(avg ${SUM_P99[$t]}) | ${ERRORS[$t]} |"
done
