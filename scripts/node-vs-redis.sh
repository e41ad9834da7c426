#!/usr/bin/env bash
# A 3-node Skiff cluster against a Redis server with appendonly yes / appendfsync always,
# both driven by redis-benchmark, one after the other in one run on this machine.
#
#   scripts/node-vs-redis.sh [-n REQUESTS] [--skiff PATH] [--dir DIR] [-- EXTRA SERVE FLAGS]
#
# Prints, for each system: SET throughput and p50/p99 with 64 clients
# (redis-benchmark -t set -c 64 -d 100 -r 100000 -n N), single-client p50/p99 (-c 1),
# pipelined throughput (-c 64 -P 16), and for Skiff the CPU time of the three node
# processes per write and the leader's share (utime + stime from /proc, over the
# 64-client run). Ends with skiff_vs_redis_aof_ratio=X (64-client throughput, Skiff
# over Redis).
#
# Needs redis-server and redis-benchmark (Debian: apt-get install redis-server
# redis-tools) and a release build of skiff (cargo build --release -p skiff-node).
# Every process it starts is stopped by pid on exit, also on Ctrl-C; the data
# directory (default: a new one under /var/tmp, which must support O_DIRECT) is removed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N=500000
SKIFF="$(cd "$(dirname "$0")/.." && pwd)/target/release/skiff"
ROOT=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N="$2"; shift 2 ;;
        --skiff) SKIFF="$2"; shift 2 ;;
        --dir) ROOT="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "usage: $0 [-n REQUESTS] [--skiff PATH] [--dir DIR] [-- EXTRA SERVE FLAGS]" >&2; exit 2 ;;
    esac
done
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install redis-server redis-tools" >&2; exit 2; }
done
[ -x "$SKIFF" ] || { echo "$SKIFF not found: cargo build --release -p skiff-node" >&2; exit 2; }
[ -n "$ROOT" ] || ROOT="$(mktemp -d /var/tmp/skiff-vs-redis.XXXXXX)"
mkdir -p "$ROOT"

PIDS=()
cleanup() { stop_pids "${PIDS[@]}"; rm -rf "$ROOT"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# bench PORT ARGS...: prints "rps p50_ms p99_ms" from redis-benchmark's summary.
bench() {
    local port="$1"; shift
    redis-benchmark -h 127.0.0.1 -p "$port" -t set -d 100 -r 100000 "$@" 2>&1 | tr '\r' '\n' |
        awk '/throughput summary/ {rps=$3} /^ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$/ {p50=$3; p99=$5}
             END {printf "%s %s %s\n", rps, p50, p99}'
}

cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

echo "machine: $(nproc) CPUs, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workload: redis-benchmark -t set -c 64 -d 100 -r 100000 -n $N (and -c 1, -P 16)"

# --- Skiff: three nodes on loopback --------------------------------------------------
declare -a CLIENT PEER ADMIN
for i in 1 2 3; do CLIENT[$i]=$(free_port); PEER[$i]=$(free_port); ADMIN[$i]=$(free_port); done
CLUSTER="1=127.0.0.1:${PEER[1]},2=127.0.0.1:${PEER[2]},3=127.0.0.1:${PEER[3]}"
SKIFF_PIDS=()
for i in 1 2 3; do
    "$SKIFF" serve --id "$i" --cluster "$CLUSTER" --cluster-name vs-redis \
        --client-addr "127.0.0.1:${CLIENT[$i]}" --admin-addr "127.0.0.1:${ADMIN[$i]}" \
        --data-dir "$ROOT/skiff-$i" --bootstrap "${EXTRA[@]}" >"$ROOT/skiff-$i.log" 2>&1 &
    PIDS+=($!); SKIFF_PIDS+=($!)
done
LEADER=$(find_leader "${CLIENT[1]}" "${CLIENT[2]}" "${CLIENT[3]}")
[ -n "$LEADER" ] || { echo "no Skiff leader elected; logs in $ROOT" >&2; tail -5 "$ROOT"/skiff-*.log >&2; exit 1; }
LPORT=${CLIENT[$LEADER]}
# Warm up over the whole key space, so the measured run writes into a full map.
bench "$LPORT" -c 64 -n 200000 >/dev/null
before=$(cpu_ticks "${SKIFF_PIDS[@]}")
lead_before=$(cpu_ticks "${SKIFF_PIDS[$((LEADER - 1))]}")
read -r s_rps s_p50 s_p99 < <(bench "$LPORT" -c 64 -n "$N")
after=$(cpu_ticks "${SKIFF_PIDS[@]}")
lead_after=$(cpu_ticks "${SKIFF_PIDS[$((LEADER - 1))]}")
hz=$(getconf CLK_TCK)
s_cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$N" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
s_cpu_lead=$(awk -v t=$((lead_after - lead_before)) -v hz="$hz" -v n="$N" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
read -r _ s1_p50 s1_p99 < <(bench "$LPORT" -c 1 -n 20000)
read -r sp_rps _ _ < <(bench "$LPORT" -c 64 -P 16 -n "$N")
for p in "${SKIFF_PIDS[@]}"; do kill -TERM "$p"; done
for p in "${SKIFF_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done

# --- Redis: one server, every write fsynced before it is answered ---------------------
RPORT=$(free_port)
mkdir -p "$ROOT/redis"
redis-server --port "$RPORT" --bind 127.0.0.1 --appendonly yes --appendfsync always --save '' \
    --dir "$ROOT/redis" >"$ROOT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
bench "$RPORT" -c 64 -n 200000 >/dev/null
read -r r_rps r_p50 r_p99 < <(bench "$RPORT" -c 64 -n "$N")
read -r _ r1_p50 r1_p99 < <(bench "$RPORT" -c 1 -n 20000)
read -r rp_rps _ _ < <(bench "$RPORT" -c 64 -P 16 -n "$N")

printf '\n%-34s %14s %14s\n' "" "skiff (3 nodes)" "redis (AOF)"
printf '%-34s %14s %14s\n' "SET/s, 64 clients" "$s_rps" "$r_rps"
printf '%-34s %14s %14s\n' "p50 / p99 ms, 64 clients" "$s_p50 / $s_p99" "$r_p50 / $r_p99"
printf '%-34s %14s %14s\n' "p50 / p99 ms, 1 client" "$s1_p50 / $s1_p99" "$r1_p50 / $r1_p99"
printf '%-34s %14s %14s\n' "SET/s, 64 clients, pipeline 16" "$sp_rps" "$rp_rps"
printf '%-34s %14s %14s\n' "cluster CPU us per write" "$s_cpu" "-"
printf '%-34s %14s %14s\n' "  of which the leader's" "$s_cpu_lead" "-"
awk -v s="$s_rps" -v r="$r_rps" 'BEGIN {printf "skiff_vs_redis_aof_ratio=%.3f\n", s / r}'
awk -v s="$sp_rps" -v r="$rp_rps" 'BEGIN {printf "skiff_vs_redis_aof_pipelined_ratio=%.3f\n", s / r}'
