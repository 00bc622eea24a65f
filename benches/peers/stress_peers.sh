#!/usr/bin/env bash
# The stress run against greenhub and its peers, with the same client.
#
#   bash benches/peers/stress_peers.sh            # N=19000 connections, 10 messages each
#   N=10000 MESSAGES=4 ROUNDS=1 bash benches/peers/stress_peers.sh
#
# Each server is one process, driven by `examples/stress --connect ADDR --server-pid PID`
# (the same client code as the stress run: all connections open at once behind a barrier,
# random-size messages verified byte for byte). The servers:
#   greenhub, 1 hub        examples/peer_echo.rs greenhub          (StreamServer)
#   greenhub, N hubs       examples/peer_echo.rs greenhub-hubs     (StreamServer::per_core)
#   tokio current_thread   examples/peer_echo.rs tokio             (one thread, like one hub)
#   may, 1 worker          examples/peer_echo.rs may               (a coroutine per connection,
#                                                                   set_workers(1), unpinned)
#   std thread/connection  examples/peer_echo.rs threads
#   gevent StreamServer    Python, in a throwaway venv under the target dir (pip install
#                          gevent; if pip fails, that row is skipped and says so)
# plus the greenhub run at 20,000 connections, split over processes as the file limit
# requires (examples/stress/ with its own servers).
#
# Why N=19,000 for the one-process rows: a process may hold `ulimit -Hn` files (20,000
# on these machines) and a server needs a few for itself (listener, epoll, stdio, and the
# Python interpreter's own), so one process cannot hold 20,000 connections; 19,000 leaves
# room for each runtime's own descriptors. The client side is split by the harness.
#
# Each server runs ROUNDS times (default 3, interleaved); the table shows the median run
# by msgs/s. Prints a table and `BENCH` lines; every run's figures are in the RESULT line
# of <target>/peers/<name>.<round>.out (its plot: .svg, its progress and errors: .err).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-19000}
MESSAGES=${MESSAGES:-10}
ROUNDS=${ROUNDS:-3}
TIMEOUT=${TIMEOUT:-180}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=$TARGET/peers
mkdir -p "$OUT"
rm -f "$OUT"/*.out "$OUT"/*.err "$OUT"/*.server "$OUT"/*.svg
ulimit -n "$(ulimit -Hn)" # as greenhub does for itself: soft = hard, for every peer

cargo build --release --quiet --example stress --example peer_echo
STRESS=$TARGET/release/examples/stress
PEER=$TARGET/release/examples/peer_echo
CORES=$(nproc)

# ---- gevent in a throwaway venv ----
VENV=$TARGET/peers/venv
GEVENT_SKIP=""
if ! "$VENV/bin/python" -c 'import gevent' 2>/dev/null; then
    rm -rf "$VENV"
    if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet gevent; } >"$OUT/pip.log" 2>&1; then
        GEVENT_SKIP="pip install gevent failed (see $OUT/pip.log)"
    fi
fi
cat >"$OUT/gevent_echo.py" <<'EOF'
# gevent's StreamServer echo: a greenlet per connection, recv(4096) / sendall.
import sys
from gevent.server import StreamServer

def echo(sock, _addr):
    while True:
        data = sock.recv(4096)
        if not data:
            break
        sock.sendall(data)

host, port = sys.argv[1].rsplit(":", 1)
server = StreamServer((host, int(port)), echo, backlog=1024)  # as the other servers
server.start()
print("listening on %s:%d" % server.address, flush=True)
server.serve_forever()
EOF

ROWS=()
NOTES=()
BENCH=()
declare -A MSGS_PER_S=()
PEER_PID=""
cleanup() { [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null || true; }
trap cleanup EXIT

GEVENT_VERSION=""
[ -z "$GEVENT_SKIP" ] && GEVENT_VERSION=$("$VENV/bin/python" -c 'import gevent; print(gevent.__version__)')

# The rows: NAME, TITLE, connections; `serve NAME` starts that server.
NAMES=(greenhub-1 greenhub-n tokio may threads gevent greenhub-split)
declare -A TITLE=(
    [greenhub-1]="greenhub, 1 hub"
    [greenhub-n]="greenhub, $CORES hubs"
    [tokio]="tokio current_thread"
    [may]="may, 1 worker"
    [threads]="std thread per connection"
    [threads-10k]="std thread per connection, at 10,000"
    [gevent]="gevent StreamServer $GEVENT_VERSION"
    [greenhub-split]="greenhub at 20,000, split over processes"
)
declare -A CONNS=([threads-10k]=10000 [greenhub-split]=20000)
declare -A FAILED=()

# (exec: the background job's pid is then the server's own, for --server-pid)
serve() {
    case $1 in
    greenhub-1) exec "$PEER" greenhub 127.0.0.1:0 ;;
    greenhub-n) exec "$PEER" "greenhub-hubs=$CORES" 127.0.0.1:0 ;;
    tokio) exec "$PEER" tokio 127.0.0.1:0 ;;
    may) exec "$PEER" may 127.0.0.1:0 ;;
    threads | threads-10k) exec "$PEER" threads 127.0.0.1:0 ;;
    gevent) exec "$VENV/bin/python" "$OUT/gevent_echo.py" 127.0.0.1:0 ;;
    esac
}

# run NAME ROUND: one run of the client against NAME's server -> $OUT/NAME.ROUND.out
run() {
    local name=$1 round=$2 conns=${CONNS[$1]:-$N}
    local out=$OUT/$name.$round
    if [ "$name" = greenhub-split ]; then
        # greenhub's own servers, as many processes as the file limit requires.
        echo "== ${TITLE[$name]}, round $round" >&2
        "$STRESS" --connections "$conns" --messages "$MESSAGES" --timeout "$TIMEOUT" \
            --plot "$out.svg" >"$out.out" 2>"$out.err" || true
        return
    fi
    # The file exists before the loop below reads it (the background job opens it later).
    : >"$out.server"
    serve "$name" >"$out.server" 2>&1 &
    PEER_PID=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$out.server" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "RESULT ok=0 held=0 errors=0 (the server did not start)" >"$out.out"
        echo "stress: FAILED: the server did not start: $(head -c 300 "$out.server")" >"$out.err"
    else
        echo "== ${TITLE[$name]} on $addr (pid $PEER_PID), $conns connections, round $round" >&2
        "$STRESS" --connect "$addr" --server-pid "$PEER_PID" --connections "$conns" \
            --messages "$MESSAGES" --timeout "$TIMEOUT" --plot "$out.svg" \
            >"$out.out" 2>"$out.err" || true
    fi
    cleanup
    PEER_PID=""
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2"; }

# row NAME: the run with the median msgs/s over the rounds, or the first failure.
row() {
    local name=$1 title=${TITLE[$1]}
    local f ok=() bad=""
    for f in "$OUT/$name".*.out; do
        if [ "$(field ok "$f")" = 1 ]; then ok+=("$(field msgs_per_s "$f") $f"); else bad=${bad:-$f}; fi
    done
    if [ -n "$bad" ]; then
        local why
        why=$(grep -h 'FAILED' "${bad%.out}.err" | tail -1 | sed 's/^stress: //' | cut -c1-260)
        ROWS+=("| $title | $(field held "$bad") at most, then failed | $(field errors "$bad") lost | | | | |")
        NOTES+=("$title: ${why:-see ${bad%.out}.err}")
        return
    fi
    local median
    median=$(printf '%s\n' "${ok[@]}" | sort -n | awk '{ a[NR] = $2 } END { print a[int((NR + 1) / 2)] }')
    local all
    all=$(printf '%s\n' "${ok[@]}" | sort -n | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $1 }')
    ROWS+=("$(printf '| %s | %s | %s | %s (%s) | %s | %s | %s |' "$title" \
        "$(field held "$median")" "$(field errors "$median")" "$(field msgs_per_s "$median")" "$all" \
        "$(awk -v us="$(field p99_us "$median")" 'BEGIN { printf "%.0f ms", us / 1000 }')" \
        "$(field rss_per_conn_kib "$median") KiB" \
        "$(awk -v s="$(field server_cpu_s "$median")" -v m="$(field msgs "$median")" \
            'BEGIN { if (m > 0) printf "%.1f us", s * 1e6 / m }')")")
    local key=stress_${name//-/_}
    MSGS_PER_S[$name]=$(field msgs_per_s "$median")
    BENCH+=("BENCH ${key}_msgs_per_s $(field msgs_per_s "$median") msgs/s")
    BENCH+=("BENCH ${key}_p99 $(awk -v us="$(field p99_us "$median")" 'BEGIN { printf "%.0f", us / 1000 }') ms")
    BENCH+=("BENCH ${key}_rss_per_conn $(field rss_per_conn_kib "$median") KiB")
    BENCH+=("BENCH ${key}_cpu_per_msg $(awk -v s="$(field server_cpu_s "$median")" -v m="$(field msgs "$median")" \
        'BEGIN { if (m > 0) printf "%.1f", s * 1e6 / m; else print "nan" }') us")
}

# Rounds interleave the servers, so that a noisy moment does not fall on one of them.
for round in $(seq "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        [ -n "${FAILED[$name]:-}" ] && continue
        if [ "$name" = gevent ] && [ -n "$GEVENT_SKIP" ]; then continue; fi
        run "$name" "$round"
        if [ "$(field ok "$OUT/$name.$round.out")" != 1 ]; then
            FAILED[$name]=1 # no more rounds of a server that failed
            if [ "$name" = threads ]; then
                # It cannot hold N: each thread maps a stack and a signal stack, each with
                # a guard page, and vm.max_map_count (65,530) runs out near 16,000
                # threads. Its figures at 10,000 instead:
                NAMES+=(threads-10k)
            fi
        fi
    done
done

for name in "${NAMES[@]}"; do
    if [ "$name" = gevent ] && [ -n "$GEVENT_SKIP" ]; then
        ROWS+=("| gevent StreamServer | skipped: $GEVENT_SKIP | | | | | |")
        continue
    fi
    row "$name"
done

echo
echo "The stress client against each server: $N connections held at once (greenhub's own"
echo "split run: 20,000), $MESSAGES messages of 1..=1024 bytes each, verified; median of"
echo "$ROUNDS rounds by msgs/s (all rounds in brackets); $(nproc) cores, $(date +%F)."
echo
echo "| server | connections held | errors | msgs/s | p99 round trip | server RSS per connection | server CPU per message |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    printf -- '- %s\n' "${NOTES[@]}"
fi
# greenhub (one hub) against the one-thread peers, msgs/s of the median runs.
for peer in tokio may; do
    g=${MSGS_PER_S[greenhub-1]:-}
    p=${MSGS_PER_S[$peer]:-}
    if [ -n "$g" ] && [ -n "$p" ]; then
        BENCH+=("BENCH stress_ratio_greenhub_1_$peer $(awk -v a="$g" -v b="$p" 'BEGIN { printf "%.2f", a / b }') x")
    fi
done
echo
printf '%s\n' "${BENCH[@]}"
