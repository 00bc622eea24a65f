#!/usr/bin/env bash
# HTTP "Hello, world!" under the same wrk command: greenhub against hyper and may_minihttp.
#
#   bash benches/peers/http_peers.sh                  # c100 and c1000, 5 s each, 5 rounds
#   ROUNDS=1 DURATION=2s CONNS="100" bash benches/peers/http_peers.sh
#
# The servers, one process each, all answering every request with the same response
# (status 200, Content-Type: text/plain, Content-Length: 13, Connection: keep-alive, a
# Server header, body "Hello, world!"; may_minihttp adds a Date header it cannot drop):
#   greenhub, 1 hub               examples/http_hello.rs            (StreamServer)
#   hyper, tokio current_thread   examples/peer_http.rs hyper       (one thread, like one hub)
#   may_minihttp, 1 worker        examples/peer_http.rs may         (set_workers(1))
# The command: `wrk -t1 -cC -dDURATION --latency http://ADDR/` for C in CONNS (wrk is
# installed with apt-get when missing). Each server is pinned to CPU 0 and wrk to CPU 1
# with taskset (on one CPU, both share it). Every run starts its server afresh, warms it
# with one second of the same load, then measures; rounds interleave the servers, in an
# order that rotates every round. The table shows the median run by requests/s (all
# rounds in brackets) and that run's p99 latency; the BENCH lines the same medians. Every
# run's wrk output is in <target>/http_peers/NAME.cC.ROUND.wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-"100 1000"}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=$TARGET/http_peers
mkdir -p "$OUT"
rm -f "$OUT"/*.wrk "$OUT"/*.server
ulimit -n "$(ulimit -Hn)" # wrk and the servers hold C connections each

if ! command -v wrk >/dev/null; then
    echo "installing wrk with apt-get ..." >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >"$OUT/apt.log" 2>&1; then
        echo "http_peers: cannot install wrk (see $OUT/apt.log)" >&2
        exit 1
    fi
fi

cargo build --release --quiet --example http_hello --example peer_http
EXAMPLES=$TARGET/release/examples

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_PIN=(taskset -c 0)
    CLIENT_PIN=(taskset -c 1)
    PINNING="servers on CPU 0, wrk on CPU 1"
else
    SERVER_PIN=()
    CLIENT_PIN=()
    PINNING="unpinned (one CPU or no taskset)"
fi

NAMES=(greenhub hyper may)
declare -A TITLE=(
    [greenhub]="greenhub http_hello, 1 hub"
    [hyper]="hyper, tokio current_thread"
    [may]="may_minihttp, 1 worker"
)

# (exec: the background job's pid is then the server's own)
serve() {
    case $1 in
    greenhub) exec "${SERVER_PIN[@]}" "$EXAMPLES/http_hello" 127.0.0.1:0 ;;
    hyper) exec "${SERVER_PIN[@]}" "$EXAMPLES/peer_http" hyper 127.0.0.1:0 ;;
    may) exec "${SERVER_PIN[@]}" "$EXAMPLES/peer_http" may 127.0.0.1:0 ;;
    esac
}

SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap cleanup EXIT

# run NAME CONNS ROUND: one measured wrk run against a fresh NAME server -> .wrk file
run() {
    local name=$1 conns=$2 round=$3
    local out=$OUT/$name.c$conns.$round
    serve "$name" >"$out.server" 2>&1 &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$out.server" | head -1 || true)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "SERVER FAILED: $(head -c 300 "$out.server")" >"$out.wrk"
    else
        echo "== ${TITLE[$name]} on $addr, -c$conns, round $round" >&2
        "${CLIENT_PIN[@]}" wrk -t1 -c"$conns" -d1s "http://$addr/" >/dev/null 2>&1 || true
        "${CLIENT_PIN[@]}" wrk -t1 -c"$conns" -d"$DURATION" --latency "http://$addr/" \
            >"$out.wrk" 2>&1 || echo "WRK FAILED" >>"$out.wrk"
    fi
    cleanup
}

rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
# p99 in microseconds, from wrk's "99%  1.23ms" line
p99_us() {
    awk '$1 == "99%" {
        v = $2; u = v; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : (u == "m") ? 60000000 : 0
        printf "%.0f", v * f
    }' "$1"
}
# socket errors and non-2xx responses, as one count
errors() {
    awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { n += $5 }
         /FAILED/ { n += 1 }
         END { print n + 0 }' "$1"
}

for round in $(seq "$ROUNDS"); do
    for conns in $CONNS; do
        for i in "${!NAMES[@]}"; do
            name=${NAMES[$(((i + round - 1) % ${#NAMES[@]}))]}
            run "$name" "$conns" "$round"
        done
    done
done

# median NAME CONNS -> "RPS FILE" of the median run by requests/s, plus all rounds
declare -A MEDIAN=() ALL=() P99=() ERRS=()
for conns in $CONNS; do
    for name in "${NAMES[@]}"; do
        runs=()
        for f in "$OUT/$name.c$conns".*.wrk; do
            runs+=("$(rps "$f" | grep . || echo 0) $f")
        done
        sorted=$(printf '%s\n' "${runs[@]}" | sort -n)
        median=$(awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }' <<<"$sorted")
        MEDIAN[$name.$conns]=${median%% *}
        ALL[$name.$conns]=$(awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }' <<<"$sorted")
        P99[$name.$conns]=$(p99_us "${median#* }")
        ERRS[$name.$conns]=$(for f in "$OUT/$name.c$conns".*.wrk; do errors "$f"; done | awk '{ n += $1 } END { print n + 0 }')
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "—" }'; }
us() { awk -v u="${1:-0}" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%d us", u }'; }

echo
echo "HTTP hello, \`wrk -t1 -cC -d$DURATION\` (after 1 s of warm-up), fresh server per run;"
echo "median of $ROUNDS interleaved rounds by requests/s (all rounds in brackets);"
echo "$PINNING; $(nproc) cores, $(date +%F)."
echo
echo "| connections | greenhub http_hello, 1 hub | hyper, tokio current_thread | may_minihttp, 1 worker | greenhub / hyper | greenhub / may_minihttp |"
echo "|---:|---:|---:|---:|---:|---:|"
for conns in $CONNS; do
    cells=()
    for name in "${NAMES[@]}"; do
        k=$name.$conns
        cell="$(printf '%.0f' "${MEDIAN[$k]}") req/s (${ALL[$k]}), p99 $(us "${P99[$k]}")"
        [ "${ERRS[$k]}" != 0 ] && cell="$cell, ${ERRS[$k]} errors"
        cells+=("$cell")
    done
    echo "| $conns | ${cells[0]} | ${cells[1]} | ${cells[2]} | $(ratio "${MEDIAN[greenhub.$conns]}" "${MEDIAN[hyper.$conns]}") | $(ratio "${MEDIAN[greenhub.$conns]}" "${MEDIAN[may.$conns]}") |"
done
echo
for conns in $CONNS; do
    for name in "${NAMES[@]}"; do
        k=$name.$conns
        printf 'BENCH http_hello_c%s_%s %.0f req/s\n' "$conns" "$name" "${MEDIAN[$k]}"
        printf 'BENCH http_hello_c%s_%s_p99 %s us\n' "$conns" "$name" "${P99[$k]:-0}"
        printf 'BENCH http_hello_c%s_%s_errors %s count\n' "$conns" "$name" "${ERRS[$k]}"
    done
    for peer in hyper may; do
        printf 'BENCH http_hello_c%s_ratio_%s %s x\n' "$conns" "$peer" \
            "$(awk -v a="${MEDIAN[greenhub.$conns]}" -v b="${MEDIAN[$peer.$conns]}" \
                'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }')"
    done
done
