# Shared by the scripts in this directory (source it; it defines functions only).

# free_port: prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stop_pids PID...: SIGTERM each, wait up to 5 s for it to exit, then SIGKILL.
stop_pids() {
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}

# find_leader PORT...: waits up to 10 s for one of the nodes whose client ports are
# given (node i at the i-th port) to report itself leader; prints i, or nothing.
find_leader() {
    local ports=("$@") leader="" i
    for _ in $(seq 100); do
        for i in "${!ports[@]}"; do
            if redis-cli -p "${ports[$i]}" info replication 2>/dev/null | grep -q '^raft_role:leader'; then
                leader=$((i + 1))
            fi
        done
        [ -n "$leader" ] && break
        sleep 0.1
    done
    echo "$leader"
}
