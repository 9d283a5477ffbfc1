#!/usr/bin/env bash
# Load benchmark of the limit stage: the authenticated facade route
# (GET /payments/v1/customers/{id} with a sandbox API key) in four set-ups,
# same client settings, interleaved rounds:
#
#   off        one node, embedded store (file), no policies: no limit stage work
#   on         one node, embedded store, a plan with a rate, two quotas and a
#              concurrency cap, all set far above the offered load
#   cluster    two replicas sharing one redis-server, the same plan: every
#              request's rate and quota decisions are Lua scripts in Redis
#   cluster_off the two replicas without policies (the Redis store's cost
#              for identity alone: tenants are cached, so almost none)
#
# Each set-up gets the same total CPU: one node runs `workers: 2`, each
# replica `workers: 1`. The client is two wrk processes (one thread each,
# half the connections each): on one node both hit it, in the cluster each
# hits one replica. Prints a markdown table and the ratios for BENCHMARKS.md.
#
# Usage: benches/limits_load.sh   (env: DURATION=2s CONNECTIONS=50 ROUNDS=60 WARMUP=2s;
#        SETUPS="off on" to run only some set-ups; BIN=path to measure a
#        binary built elsewhere instead of building the working tree;
#        PLAN_YAML="..." for the plan body of `bench`, to cost one part
#        of the limit stage alone, e.g. PLAN_YAML="concurrency: 10000";
#        NODE_WORKERS=2 for the one-node set-ups' `workers`;
#        RESTART=1 to start every set-up's gateways afresh in every round;
#        BIN_B=path to a second binary: adds the set-up cluster_b, the
#        cluster on BIN_B (its own Redis database), and the per-round ratio
#        of cluster_b to cluster, to compare two builds in the same rounds;
#        TENANTS=N to spread the requests over N tenants, each wrk request
#        taking the next tenant's key in turn: with one tenant the cluster
#        decides a tenant's concurrent requests in one script call, with
#        many each request is mostly its own call)
#
# Many short rounds, because the machine is noisy: on the 2-core VMs of
# BENCHMARKS.md a fixed piece of pure CPU work takes up to 45 % longer from
# one half-second to the next, so one 2 s round of a set-up differs from
# the next by ±20 % whatever the gateway does. That noise is the host's:
# it is the same with every round on fresh processes (RESTART=1), with the
# gateway and the client pinned to a core each, and with one worker. What
# it leaves to measure is the mean of many paired rounds ("on" against
# "off" in the same round, every other round in the other order): the
# script prints that mean with its 95 % interval (Student's t) and, from
# 30 rounds, says whether the < 5 % target is met, not met, or not shown
# either way by this run; the same for the ratio of the cluster to one
# node in the same round (target >= 0.7x).
# Installs wrk and redis-server with apt when missing. Every process it
# starts is stopped on exit (by PID, never by name).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-2s}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-60}
WARMUP=${WARMUP:-2s}
RESTART=${RESTART:-0}
TENANTS=${TENANTS:-1}
NODE_WORKERS=${NODE_WORKERS:-2}
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "${BIN:-}" ]; then
  COMMIT="binary $BIN"
else
  cargo build --release --quiet
  BIN=target/release/sandgate
  git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"
fi

if [ -n "${BIN_B:-}" ]; then
  [ -x "$BIN_B" ] || { echo "BIN_B=$BIN_B is not an executable" >&2; exit 1; }
  COMMIT="$COMMIT; cluster_b: binary $BIN_B"
fi

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

PLAN_YAML=${PLAN_YAML:-'rate: { requests: 1000000, per: 1s, burst: 10000000 }
    quotas:
      - { requests: 1000000000, per: day }
      - { requests: 1000000000, per: lifetime }
    concurrency: 10000'}
POLICY="plans:
  bench:
    $PLAN_YAML
default_plan: bench
"

# sandbox NAME WORKERS STORE POLICY(yes|no): writes $WORK/NAME, prints "public admin" ports.
sandbox() {
  local name=$1 workers=$2 store=$3 policy=$4 dir="$WORK/$1"
  local pub adm; pub=$(free_port); adm=$(free_port)
  mkdir -p "$dir/contracts" "$dir/policies"
  cp contracts/payments.yaml "$dir/contracts/"
  [ "$policy" = yes ] && printf '%s' "$POLICY" > "$dir/policies/plans.yaml"
  cat > "$dir/sandgate.yaml" <<YAML
listeners:
  - addr: 127.0.0.1:$pub
admin:
  listen: 127.0.0.1:$adm
workers: $workers
store: $store
auth:
  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }
apis:
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    mode: facade
YAML
  # This runs in a subshell (`< <(sandbox …)`), so the PID goes to a file
  # that cleanup reads: PIDS+= here would not reach the script.
  SANDGATE_LOG=warn "${SANDBOX_BIN:-$BIN}" serve --config "$dir" >/dev/null 2>"$dir/err" & echo $! > "$dir/pid"
  echo "$pub $adm"
}

wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }
provision() { # admin port -> API key
  curl -sf -H "Authorization: Bearer $SANDGATE_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"prospect_company":"Bench","prospect_email":"bench@example.com"}' \
    "http://127.0.0.1:$1/internal/sandboxes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["credentials"]["api_key"])'
}
PATH_CUS=/payments/v1/customers/cus_NffrFeUfNV2Hib

REDIS_STORE="{ kind: redis, url: \"redis://127.0.0.1:$P_REDIS/0\", timeout: 200ms, on_error: fail_closed }"
REDIS_STORE_B="{ kind: redis, url: \"redis://127.0.0.1:$P_REDIS/2\", timeout: 200ms, on_error: fail_closed }"
REDIS_STORE_OFF="{ kind: redis, url: \"redis://127.0.0.1:$P_REDIS/1\", timeout: 200ms, on_error: fail_closed }"
# The gateway processes of a set-up.
declare -A PROCS=([off]="off" [on]="on" [cluster]="c1 c2" [cluster_off]="d1 d2" [cluster_b]="e1 e2")
declare -A URL1 URL2 KEY

# stop_setup T: stops T's gateways (they drain first) and drops their data.
stop_setup() {
  local name pid
  for name in ${PROCS[$1]}; do
    [ -f "$WORK/$name/pid" ] || continue
    pid=$(cat "$WORK/$name/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -rf "${WORK:?}/$name"
  done
}
# start_setup T: starts T's gateways on fresh data, provisions a tenant,
# checks every URL answers 200 (and that limits are on for "on"), warms up.
start_setup() {
  local t=$1 p1 a1 p2 a2 u code
  stop_setup "$t"
  case $t in
    off) read -r p1 a1 < <(sandbox off "$NODE_WORKERS" "{ kind: file, path: data/off.redb }" no); p2=$p1; a2=$a1 ;;
    on) read -r p1 a1 < <(sandbox on "$NODE_WORKERS" "{ kind: file, path: data/on.redb }" yes); p2=$p1; a2=$a1 ;;
    cluster)
      read -r p1 a1 < <(sandbox c1 1 "$REDIS_STORE" yes)
      read -r p2 a2 < <(sandbox c2 1 "$REDIS_STORE" yes) ;;
    cluster_b)
      read -r p1 a1 < <(SANDBOX_BIN=$BIN_B sandbox e1 1 "$REDIS_STORE_B" yes)
      read -r p2 a2 < <(SANDBOX_BIN=$BIN_B sandbox e2 1 "$REDIS_STORE_B" yes) ;;
    cluster_off)
      read -r p1 a1 < <(sandbox d1 1 "$REDIS_STORE_OFF" no)
      read -r p2 a2 < <(sandbox d2 1 "$REDIS_STORE_OFF" no) ;;
  esac
  wait_up "http://127.0.0.1:$a1/healthz"; wait_up "http://127.0.0.1:$a2/healthz"
  KEY[$t]=$(provision "$a1")
  if [ "$TENANTS" -gt 1 ]; then
    # A wrk script that takes the next tenant's key for every request.
    { echo "local keys = {"
      echo "  \"${KEY[$t]}\","
      for _ in $(seq 2 "$TENANTS"); do echo "  \"$(provision "$a1")\","; done
      echo "}"
      echo "local i = math.random(#keys)"
      echo "request = function()"
      echo "  i = i % #keys + 1"
      echo "  return wrk.format(nil, nil, { [\"Authorization\"] = \"Bearer \" .. keys[i] })"
      echo "end"
    } > "$WORK/keys_$t.lua"
  fi
  URL1[$t]="http://127.0.0.1:$p1$PATH_CUS"; URL2[$t]="http://127.0.0.1:$p2$PATH_CUS"
  for u in "${URL1[$t]}" "${URL2[$t]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${KEY[$t]}" "$u")
    [ "$code" = 200 ] || { echo "$t: $u answered $code" >&2; exit 1; }
  done
  if [ "$t" = on ]; then
    case "$PLAN_YAML" in *rate:*)
      curl -s -D - -o /dev/null -H "Authorization: Bearer ${KEY[on]}" "${URL1[on]}" | grep -qi '^ratelimit-policy:' \
        || { echo "limits are not on for 'on'" >&2; exit 1; } ;;
    esac
  fi
  local AUTH; auth "$t"
  wrk -t1 -c10 -d"$WARMUP" "${AUTH[@]}" "${URL1[$t]}" >/dev/null
  wrk -t1 -c10 -d"$WARMUP" "${AUTH[@]}" "${URL2[$t]}" >/dev/null
}
# auth T: sets AUTH to wrk's arguments for set-up T's credentials.
auth() {
  if [ "$TENANTS" -gt 1 ]; then AUTH=(-s "$WORK/keys_$1.lua"); else AUTH=(-H "Authorization: Bearer ${KEY[$1]}"); fi
}

# One wrk process: "rps p50_ms p99_ms errors requests client_cpu_s" (the
# last: wrk's own user + system time: the client shares the cores, so
# what it spends per answer is throughput the gateway does not get).
one() {
  local out; out=$(mktemp -p "$WORK")
  local TIMEFORMAT='%U %S'
  local AUTH; auth "$2"
  { time wrk -t1 -c"$((CONNECTIONS / 2))" -d"$DURATION" --latency "${AUTH[@]}" "$1" > "$out"; } 2> "$out.time"
  awk -v client="$(tail -1 "$out.time" | awk '{ print $1 + $2 }')" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    / requests in / { n=$1 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Non-2xx or 3xx responses/ { err+=$NF }
    /Socket errors/ { gsub(/,/, ""); err+=$4+$6+$8+$10 }
    END { printf "%.0f %.3f %.3f %d %d %s\n", rps, p50, p99, err, n, client }' "$out"
  rm -f "$out" "$out.time"
}
# CPU time (user + system, clock ticks) the set-up's gateways have used.
cpu_ticks() {
  local total=0 name
  for name in ${PROCS[$1]}; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$(cat "$WORK/$name/pid")/stat")))
  done
  echo "$total"
}
# Two at once; sums the rates, takes the larger p50/p99, sums errors, and
# adds the gateways' CPU time per request (µs, user + system).
run() {
  local before after
  before=$(cpu_ticks "$1")
  one "${URL1[$1]}" "$1" > "$WORK/a" & local a=$!
  one "${URL2[$1]}" "$1" > "$WORK/b" & local b=$!
  wait $a $b
  after=$(cpu_ticks "$1")
  paste -d' ' "$WORK/a" "$WORK/b" | awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    '{ printf "%d %.3f %.3f %d %.2f %.2f\n", $1+$7, ($2>$8?$2:$8), ($3>$9?$3:$9), $4+$10, ticks * 1e6 / hz / ($5+$11), ($6+$12) * 1e6 / ($5+$11) }'
}
read -r -a TARGETS <<< "${SETUPS:-off on cluster cluster_off}"
if [ "$RESTART" = 0 ]; then for t in "${TARGETS[@]}"; do start_setup "$t"; done; fi
declare -A SUM_RPS SUM_P50 SUM_P99 SUM_CPU SUM_CLIENT ERRORS ROUND_RPS
COSTS=()
RATIOS=()
B_RATIOS=()
for t in "${TARGETS[@]}"; do SUM_RPS[$t]=0; SUM_P50[$t]=0; SUM_P99[$t]=0; SUM_CPU[$t]=0; SUM_CLIENT[$t]=0; ERRORS[$t]=0; done
for r in $(seq "$ROUNDS"); do
  # Every other round runs the set-ups in reverse order, so neither is
  # always the one that runs first (after the other's connections close).
  ORDER=("${TARGETS[@]}")
  if [ $((r % 2)) -eq 0 ]; then
    ORDER=(); for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do ORDER+=("${TARGETS[i]}"); done
  fi
  for t in "${ORDER[@]}"; do
    [ "$RESTART" = 0 ] || start_setup "$t"
    read -r rps p50 p99 err cpu client < <(run "$t")
    echo "round $r $t: $rps req/s p50 ${p50}ms p99 ${p99}ms errors $err, CPU µs/request: gateway ${cpu}, client ${client}" >&2
    SUM_CPU[$t]=$(python3 -c "print(${SUM_CPU[$t]}+$cpu)")
    SUM_CLIENT[$t]=$(python3 -c "print(${SUM_CLIENT[$t]}+$client)")
    ERRORS[$t]=$((ERRORS[$t] + err))
    SUM_RPS[$t]=$(python3 -c "print(${SUM_RPS[$t]}+$rps)")
    SUM_P50[$t]=$(python3 -c "print(${SUM_P50[$t]}+$p50)")
    SUM_P99[$t]=$(python3 -c "print(${SUM_P99[$t]}+$p99)")
    ROUND_RPS[$t]=$rps
    [ "$RESTART" = 0 ] || stop_setup "$t"
  done
  if [ -n "${ROUND_RPS[off]:-}" ] && [ -n "${ROUND_RPS[on]:-}" ]; then
    cost=$(python3 -c "print(f'{100 * (1 - ${ROUND_RPS[on]} / ${ROUND_RPS[off]}):.1f}')")
    COSTS+=("$cost")
    echo "round $r: limits cost $cost%" >&2
  fi
  if [ -n "${ROUND_RPS[cluster]:-}" ] && [ -n "${ROUND_RPS[on]:-}" ]; then
    ratio=$(python3 -c "print(f'{${ROUND_RPS[cluster]} / ${ROUND_RPS[on]}:.3f}')")
    RATIOS+=("$ratio")
    echo "round $r: Redis-backed / in-process $ratio" >&2
  fi
  if [ -n "${ROUND_RPS[cluster_b]:-}" ] && [ -n "${ROUND_RPS[cluster]:-}" ]; then
    ratio=$(python3 -c "print(f'{${ROUND_RPS[cluster_b]} / ${ROUND_RPS[cluster]}:.3f}')")
    B_RATIOS+=("$ratio")
    echo "round $r: cluster_b / cluster $ratio" >&2
  fi
done
avg() { python3 -c "print(f'{$1/$ROUNDS:.3f}')"; }
avg_int() { python3 -c "print(f'{$1/$ROUNDS:,.0f}')"; }

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
MEM=$(free -g | awk '/Mem:/{print $2" GiB"}')
echo
echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); commit $COMMIT; machine: $(nproc) cores ($CPU), $MEM;"
echo "load average at start: $LOAD_AT_START; client: 2 × wrk -t1 -c$((CONNECTIONS / 2)) -d$DURATION (HTTP/1.1 keep-alive), $TENANTS tenant(s),"
if [ "$RESTART" = 0 ]; then FRESH="the same gateway processes in every round"; else FRESH="fresh gateway processes (new data) for every set-up in every round"; fi
echo "$ROUNDS interleaved rounds (every other one in reverse order), $FRESH, each after a $WARMUP warm-up; means shown; servers, Redis and client share the $(nproc) cores."
echo
declare -A LABEL=([off]="one node, file store, limits off" [on]="one node, file store, limits on" [cluster]="two replicas + Redis, limits on" [cluster_off]="two replicas + Redis, limits off" [cluster_b]="two replicas + Redis, limits on, BIN_B")
echo "| set-up | req/s | p50 ms | p99 ms | errors | gateway CPU µs/request | client CPU µs/request |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
  echo "| ${LABEL[$t]} | $(avg_int ${SUM_RPS[$t]}) | $(avg ${SUM_P50[$t]}) | $(avg ${SUM_P99[$t]}) | ${ERRORS[$t]} | $(avg ${SUM_CPU[$t]}) | $(avg ${SUM_CLIENT[$t]}) |"
done
echo
RATIOS_ARG=$(IFS=,; echo "${RATIOS[*]}")
B_RATIOS_ARG=$(IFS=,; echo "${B_RATIOS[*]}")
python3 - "${SUM_RPS[off]:-0}" "${SUM_RPS[on]:-0}" "${SUM_RPS[cluster]:-0}" "${SUM_RPS[cluster_off]:-0}" "${SUM_CPU[off]:-0}" "${SUM_CPU[on]:-0}" "${SUM_CLIENT[off]:-0}" "${SUM_CLIENT[on]:-0}" "$RATIOS_ARG" "$B_RATIOS_ARG" "${COSTS[@]}" <<'PY'
import statistics, sys
off, on, cl, cloff, cpu_off, cpu_on, client_off, client_on = map(float, sys.argv[1:9])
ratios = [float(r) for r in sys.argv[9].split(",") if r]
b_ratios = [float(r) for r in sys.argv[10].split(",") if r]
costs = sorted(float(c) for c in sys.argv[11:])

def interval(xs):
    """Mean and 95 % two-sided interval, Student's t for len(xs) - 1
    degrees of freedom (the table's value at or below them: never
    narrower): a handful of rounds must not read as a verdict."""
    mean = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5
    df = len(xs) - 1
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36,
           8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09,
           25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00, 120: 1.98}
    t = t95[max(k for k in t95 if k <= df)]
    return mean, mean - t * se, mean + t * se

if off and on:
    print(f"cost of in-process limits: {100 * (1 - on / off):.1f}% of throughput (target < 5%)")
    if len(costs) > 1:
        mean, low, high = interval(costs)
        print(f"per-round costs (on against off in the same round): mean {mean:.1f}%, "
              f"95% interval {low:.1f}% to {high:.1f}% ({len(costs)} rounds), "
              f"median {statistics.median(costs):.1f}%, range {costs[0]:.1f}% to {costs[-1]:.1f}%")
        # Rounds differ by ±20 % on these machines: under 30, even a
        # narrow-looking interval is luck (two rounds can agree by chance).
        verdict = ("not decided: a verdict needs at least 30 rounds" if len(costs) < 30 else
                   "met" if high < 5 else "not met" if low >= 5 else
                   "not shown either way: more rounds narrow the interval")
        print(f"target < 5%: {verdict}")
    print(f"gateway CPU per request, limits on / off: {cpu_on / cpu_off:.3f}x; "
          f"client (wrk) CPU per request: {client_on / client_off:.3f}x")
if on and cl:
    print(f"Redis-backed limits / in-process limits: {cl / on:.2f}x (target >= 0.70)")
    if len(ratios) > 1:
        mean, low, high = interval(ratios)
        print(f"per-round ratios (the cluster against one node in the same round): mean {mean:.3f}x, "
              f"95% interval {low:.3f}x to {high:.3f}x ({len(ratios)} rounds), "
              f"range {min(ratios):.3f}x to {max(ratios):.3f}x")
        verdict = ("not decided: a verdict needs at least 30 rounds" if len(ratios) < 30 else
                   "met" if low >= 0.70 else "not met" if high < 0.70 else
                   "not shown either way: more rounds narrow the interval")
        print(f"target >= 0.70x: {verdict}")
if len(b_ratios) > 1:
    mean, low, high = interval(b_ratios)
    print(f"BIN_B against BIN, the cluster in the same round: mean {mean:.3f}x, "
          f"95% interval {low:.3f}x to {high:.3f}x ({len(b_ratios)} rounds)")
if cl and cloff:
    print(f"two replicas + Redis, limits on / off: {cl / cloff:.2f}x")
PY
