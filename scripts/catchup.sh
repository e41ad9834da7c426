#!/usr/bin/env bash
# How long a follower that was down for a short while takes to catch up, with entries
# kept below the leader's snapshots (snapshot_catchup_entries, default 5000) and
# without (0: the leader must send its whole snapshot), one after the other in one run.
#
#   scripts/catchup.sh [--keys N] [--behind N] [--skiff PATH] [--dir DIR]
#
# For each setting: a 3-node cluster (snapshots every 1 MiB of log) is filled with
# --keys 100-byte values (default 200000) by redis-benchmark; one follower is stopped
# (SIGTERM); --behind writes (default 2000) go through the leader, and more until
# the leader has taken a snapshot past the stopped follower's log; the follower
# is started again and timed until its admin port answers (recovered from its own
# snapshot and WAL) and until it has applied everything the leader had committed when
# it started. Prints both times, how far behind it was, whether it was sent the
# snapshot and how many bytes the leader sent it meanwhile.
#
# Needs redis-benchmark, redis-cli and curl, and a release build of skiff
# (cargo build --release -p skiff-node). Every process it starts is stopped by pid on
# exit, also on Ctrl-C; the data directory (default: a new one under /var/tmp, which
# must support O_DIRECT) is removed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KEYS=200000
BEHIND=2000
SKIFF="$(cd "$(dirname "$0")/.." && pwd)/target/release/skiff"
ROOT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --keys) KEYS="$2"; shift 2 ;;
        --behind) BEHIND="$2"; shift 2 ;;
        --skiff) SKIFF="$2"; shift 2 ;;
        --dir) ROOT="$2"; shift 2 ;;
        *) echo "usage: $0 [--keys N] [--behind N] [--skiff PATH] [--dir DIR]" >&2; exit 2 ;;
    esac
done
for tool in redis-benchmark redis-cli curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 2; }
done
[ -x "$SKIFF" ] || { echo "$SKIFF not found: cargo build --release -p skiff-node" >&2; exit 2; }
[ -n "$ROOT" ] || ROOT="$(mktemp -d /var/tmp/skiff-catchup.XXXXXX)"
mkdir -p "$ROOT"

PIDS=()
stop_all() { stop_pids "${PIDS[@]}"; PIDS=(); }
cleanup() { stop_all; rm -rf "$ROOT"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# field ID NAME: a number from node ID's shard status.
field() {
    curl -s "127.0.0.1:${ADMIN[$1]}/status" |
        python3 -c "import json,sys; print(json.load(sys.stdin)['shards'][0]['$2'])"
}
now_ms() { date +%s%3N; }
# sent_to ID: bytes the leader has sent to node ID (its Prometheus counter).
sent_to() {
    curl -s "127.0.0.1:${ADMIN[$LEADER]}/metrics" |
        awk -v peer="peer=\"$1\"" '/^skiff_peer_sent_bytes_total/ && index($0, peer) {print $2; found=1} END {if (!found) print 0}'
}

declare -a CLIENT PEER ADMIN NODE_PID
start_node() { # start_node ID KEEP [--bootstrap]
    local i="$1" keep="$2"; shift 2
    "$SKIFF" serve --id "$i" --cluster "$CLUSTER" --cluster-name catchup \
        --client-addr "127.0.0.1:${CLIENT[$i]}" --admin-addr "127.0.0.1:${ADMIN[$i]}" \
        --data-dir "$ROOT/$keep/n$i" --snapshot-log-bytes 1048576 \
        --snapshot-catchup-entries "$keep" "$@" >>"$ROOT/$keep-n$i.log" 2>&1 &
    PIDS+=($!)
    NODE_PID[$i]=$!
}

echo "machine: $(nproc) CPUs, $(uname -r); $KEYS keys of 100 bytes, at least $BEHIND writes missed"
for keep in 5000 0; do
    for i in 1 2 3; do CLIENT[$i]=$(free_port); PEER[$i]=$(free_port); ADMIN[$i]=$(free_port); done
    CLUSTER="1=127.0.0.1:${PEER[1]},2=127.0.0.1:${PEER[2]},3=127.0.0.1:${PEER[3]}"
    for i in 1 2 3; do start_node "$i" "$keep" --bootstrap; done
    LEADER=$(find_leader "${CLIENT[1]}" "${CLIENT[2]}" "${CLIENT[3]}")
    [ -n "$LEADER" ] || { echo "no leader elected; logs in $ROOT" >&2; exit 1; }
    F=$((LEADER % 3 + 1))
    redis-benchmark -p "${CLIENT[$LEADER]}" -t set -d 100 -r "$KEYS" -n $((KEYS * 2)) -c 64 -q >/dev/null 2>&1
    sleep 0.5
    stopped_at=$(field "$F" last_index)
    kill -TERM "${NODE_PID[$F]}"
    wait "${NODE_PID[$F]}" 2>/dev/null || true
    redis-benchmark -p "${CLIENT[$LEADER]}" -t set -d 100 -r "$KEYS" -n "$BEHIND" -c 16 -q >/dev/null 2>&1
    sleep 0.5
    for _ in $(seq 200); do
        [ "$(field "$LEADER" last_snapshot_index)" -gt "$stopped_at" ] && break
        redis-benchmark -p "${CLIENT[$LEADER]}" -t set -d 100 -r "$KEYS" -n 500 -c 16 -q >/dev/null 2>&1
        sleep 0.3
    done
    target=$(field "$LEADER" commit)
    sent_before=$(sent_to "$F")
    t0=$(now_ms)
    start_node "$F" "$keep"
    up=""
    while :; do
        a=$(field "$F" applied 2>/dev/null || echo -1)
        [ -z "$up" ] && [ "$a" -ge 0 ] && up=$(($(now_ms) - t0))
        [ "$a" -ge "$target" ] && break
        [ $(($(now_ms) - t0)) -lt 60000 ] || { echo "node $F did not catch up in 60 s" >&2; exit 1; }
        sleep 0.02
    done
    t=$(($(now_ms) - t0))
    sent=$(($(sent_to "$F") - sent_before))
    how="from the leader's log"
    grep -q "installed the leader's snapshot" "$ROOT/$keep-n$F.log" && how="by snapshot"
    printf 'snapshot_catchup_entries=%-5s %6d entries behind: serving after %5d ms, caught up after %5d ms, %s (%s bytes sent to it)\n' \
        "$keep" $((target - stopped_at)) "$up" "$t" "$how" "$sent"
    stop_all
done
