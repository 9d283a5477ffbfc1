#!/usr/bin/env bash
# Load benchmark of decision traces and usage analytics: the same sandbox
# twice, once with `traces.enabled: false` and `analytics.enabled: false`
# ("off"), once with both on at their defaults plus a JSON-lines event sink
# ("on"), both on the embedded file store with one provisioned tenant.
# Two requests, each with the tenant's API key:
#
#   read   GET /payments/v1/customers/{id}   (the contract's example)
#   write  POST /payments/v1/payment_intents (a test-card scenario rule)
#
# It prints req/s, p50, p99 and the on/off throughput ratio as a markdown
# table, then what the "on" gateway counted: traces written and dropped,
# analytics observations dropped (from its /metrics).
#
# Usage: benches/observability_load.sh   (env: DURATION=10s CONNECTIONS=50 ROUNDS=3 WARMUP=2s)
# Installs wrk with apt when missing. Every process it starts is stopped on
# exit (by PID, never by name).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
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

# sandbox NAME EXTRA_YAML: writes $WORK/NAME, starts it, prints "public admin" ports.
sandbox() {
  local name=$1 extra=$2 dir="$WORK/$1"
  local pub adm; pub=$(free_port); adm=$(free_port)
  mkdir -p "$dir/contracts" "$dir/fixtures"
  cp contracts/payments.yaml "$dir/contracts/"
  cp -r fixtures/payments "$dir/fixtures/"
  cat > "$dir/sandgate.yaml" <<YAML
listeners:
  - addr: 127.0.0.1:$pub
admin:
  listen: 127.0.0.1:$adm
store: { kind: file, path: data/sandgate.redb }
auth:
  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }
apis:
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    scenarios: fixtures/payments/scenarios.yaml
    mode: facade
$extra
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

read -r OFF_P OFF_A < <(sandbox off "traces: { enabled: false }
analytics: { enabled: false }")
read -r ON_P ON_A < <(sandbox on "analytics:
  sinks:
    file: { path: data/events.jsonl }")
for p in $OFF_A $ON_A; do wait_up "http://127.0.0.1:$p/healthz"; done
declare -A URL=([off]="http://127.0.0.1:$OFF_P" [on]="http://127.0.0.1:$ON_P")
declare -A KEY=([off]="$(provision "$OFF_A")" [on]="$(provision "$ON_A")")

cat > "$WORK/write.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("SANDGATE_KEY")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "amount=2000&currency=usd&payment_method=pm_card_visa&confirm=true"
LUA
READ=/payments/v1/customers/cus_NffrFeUfNV2Hib
WRITE=/payments/v1/payment_intents
for t in off on; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${KEY[$t]}" "${URL[$t]}$READ")
  [ "$code" = 200 ] || { echo "$t: read answered $code" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${KEY[$t]}" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    -d 'amount=2000&currency=usd&payment_method=pm_card_visa&confirm=true' "${URL[$t]}$WRITE")
  [ "$code" = 200 ] || { echo "$t: write answered $code" >&2; exit 1; }
done

# run SETUP KIND: "rps p50_ms p99_ms errors"
run() {
  local args=()
  if [ "$2" = write ]; then args=(-s "$WORK/write.lua" "${URL[$1]}$WRITE")
  else args=(-H "Authorization: Bearer ${KEY[$1]}" "${URL[$1]}$READ"); fi
  SANDGATE_KEY=${KEY[$1]} wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "${args[@]}" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Non-2xx or 3xx responses/ { err+=$NF }
    /Socket errors/ { gsub(/,/, ""); err+=$4+$6+$8+$10 }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }'
}
for t in off on; do
  WARM=$WARMUP
  SANDGATE_KEY=${KEY[$t]} wrk -t1 -c10 -d"$WARM" -H "Authorization: Bearer ${KEY[$t]}" "${URL[$t]}$READ" >/dev/null
  SANDGATE_KEY=${KEY[$t]} wrk -t1 -c10 -d"$WARM" -s "$WORK/write.lua" "${URL[$t]}$WRITE" >/dev/null
done

TARGETS=(off:read on:read off:write on:write)
declare -A SUM_RPS SUM_P50 SUM_P99 ERRORS
for t in "${TARGETS[@]}"; do SUM_RPS[$t]=0; SUM_P50[$t]=0; SUM_P99[$t]=0; ERRORS[$t]=0; done
for r in $(seq "$ROUNDS"); do
  # Interleaved rounds, so drift of the machine affects both set-ups alike.
  for t in "${TARGETS[@]}"; do
    read -r rps p50 p99 err < <(run "${t%%:*}" "${t##*:}")
    echo "round $r $t: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $err" >&2
    ERRORS[$t]=$((ERRORS[$t] + err))
    SUM_RPS[$t]=$(python3 -c "print(${SUM_RPS[$t]}+$rps)")
    SUM_P50[$t]=$(python3 -c "print(${SUM_P50[$t]}+$p50)")
    SUM_P99[$t]=$(python3 -c "print(${SUM_P99[$t]}+$p99)")
  done
done
sleep 2
METRICS=$(curl -s "http://127.0.0.1:$ON_A/metrics")
metric() { echo "$METRICS" | awk -v n="$1" 'index($0, n) == 1 { s += $NF } END { printf "%d", s }'; }

avg() { python3 -c "print(f'{$1/$ROUNDS:.3f}')"; }
avg_int() { python3 -c "print(f'{$1/$ROUNDS:,.0f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
MEM=$(free -g | awk '/Mem:/{print $2" GiB"}')
echo
echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $COMMIT; machine: $(nproc) cores ($CPU), $MEM;"
echo "load average at start: $LOAD_AT_START; client: wrk -t2 -c$CONNECTIONS -d$DURATION (HTTP/1.1 keep-alive), API key;"
echo "$ROUNDS interleaved rounds after a $WARMUP warm-up, means shown; server and client share the $(nproc) cores."
echo
echo "| request | traces + analytics | req/s | p50 ms | p99 ms | errors | on/off |"
echo "|---|---|---:|---:|---:|---:|---:|"
for k in read write; do
  for s in off on; do
    t="$s:$k"
    r=""; [ "$s" = on ] && r=$(ratio "${SUM_RPS[on:$k]}" "${SUM_RPS[off:$k]}")
    echo "| $k | $s | $(avg_int ${SUM_RPS[$t]}) | $(avg ${SUM_P50[$t]}) | $(avg ${SUM_P99[$t]}) | ${ERRORS[$t]} | $r |"
  done
done
echo
echo "\"on\" gateway after the run: traces written $(metric sandgate_traces_written_total), dropped $(metric sandgate_traces_dropped_total);"
echo "analytics observations dropped $(metric sandgate_analytics_observations_dropped_total), events $(metric sandgate_analytics_events_total)."
