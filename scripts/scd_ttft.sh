#!/usr/bin/env bash
# scd_ttft.sh — SCD's time to first token between two network namespaces joined by a veth pair
# whose producer side is rate-limited with tc tbf (needs root: ip netns, tc). Not part of
# `make test` or .ci/run.
#
#   scripts/scd_ttft.sh [-o bench/scd] [-r "10 30 100 300 1000"] [-l "512 1024 1984"]
#                       [-M "scd reuse raw kivi4 oracle"] [-T "tcp ucx"] [-k MAPS] [-d DELAY_MS] [--faults]
#                       [-S "1 0"]   (producer streaming while it prefills: 1 (default), 0 = --no-stream)
#
# For every transport, rate, prompt length and method: one request, producer (kvt-l) in netns
# skvp, consumer (kvt-l-qa) in netns skvc, prompt = the last LEN tokens of the first 16 kB of the
# val corpus (no task row is 1984 tokens long). Each producer line (JSON, with the consumer's answer inside) goes to
# OUT/ttft.jsonl; scripts/scd_ttft_table.py turns it into OUT/ttft.md.
# --faults instead runs the network faults (producer killed mid-stream, a corrupted byte, the
# link set down mid-stream, every packet dropped mid-stream by a blackhole route) and writes what
# producer and consumer said to OUT/faults.txt. (-d uses netem, which not every kernel has.)
# UCX is told to use TCP on the veth (UCX_TLS=tcp): on one host it would otherwise take shared
# memory and bypass the shaped link.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/scd RATES="10 30 100 300 1000" LENS="512 1024 1984" METHODS="scd reuse raw kivi4 oracle"
TRANSPORTS="tcp ucx" MAPS=models/scd/kvt-l-to-kvt-l-qa.safetensors DELAY=0 FAULTS=0 STREAMS=1
while [ $# -gt 0 ]; do
  case "$1" in
    -o) OUT=$2; shift 2 ;; -r) RATES=$2; shift 2 ;; -l) LENS=$2; shift 2 ;; -M) METHODS=$2; shift 2 ;;
    -T) TRANSPORTS=$2; shift 2 ;; -k) MAPS=$2; shift 2 ;; -d) DELAY=$2; shift 2 ;; --faults) FAULTS=1; shift ;;
    -S) STREAMS=$2; shift 2 ;;
    *) echo "scd_ttft.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "scd_ttft.sh: needs root (ip netns, tc)" >&2; exit 1; }
SKV=${SKV_CLI:-build/slimkv}
SH=${SKV_SHARED:-../shared}
[ -x "$SKV" ] || { echo "scd_ttft.sh: $SKV not built" >&2; exit 1; }
[ -f "$MAPS" ] || { echo "scd_ttft.sh: maps $MAPS missing (scripts/scd_calibrate.sh)" >&2; exit 1; }
mkdir -p "$OUT"
{ xz -dc "$SH/data/corpus.val.txt.xz" 2>/dev/null || true; } | head -c 16000 | tr -d '\036' > "$OUT/.prompt.txt"
P=skvp C=skvc PA=10.77.0.1 CA=10.77.0.2 PORT=17714
cleanup() { ip netns del $P 2>/dev/null || true; ip netns del $C 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add $P && ip netns add $C
ip link add vp netns $P type veth peer name vc netns $C
ip -n $P addr add $PA/24 dev vp && ip -n $C addr add $CA/24 dev vc
ip -n $P link set vp up && ip -n $C link set vc up && ip -n $P link set lo up && ip -n $C link set lo up
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

shape() { # rate in Mbit/s: tbf on the producer's egress (the codes' direction), 5 ms of burst
  local r=$1 burst=$(( $1 * 1000000 / 8 / 200 ))
  [ $burst -lt 15000 ] && burst=15000
  ip netns exec $P tc qdisc replace dev vp root handle 1: tbf rate ${r}mbit burst $burst latency 2s
  if [ "$DELAY" != 0 ]; then
    ip netns exec $P tc qdisc replace dev vp parent 1:1 handle 10: netem delay ${DELAY}ms
  fi
}

consumer() { # transport, requests, extra args -> runs in the background, waits for the port
  local t=$1 n=$2; shift 2
  rm -f "$OUT/.port"
  PORT=$((PORT + 1)) # a fresh port each time: the last one may linger in TIME_WAIT
  UCX_TLS=tcp UCX_NET_DEVICES=vc ip netns exec $C "$SKV" scd-consumer -m "$SH/models/kvt-l-qa" --maps "$MAPS" \
    --listen $CA:$PORT --transport "$t" --requests "$n" -n 1 -t 1 --port-file "$OUT/.port" "$@" \
    >> "$OUT/consumer.jsonl" 2>> "${CERR:-$OUT/consumer.err}" &
  CPID=$!
  for _ in $(seq 300); do [ -f "$OUT/.port" ] && return 0; sleep 0.1; done
  echo "scd_ttft.sh: the consumer did not start" >&2; exit 1
}

producer() { # transport method len extra...
  local t=$1 m=$2 len=$3; shift 3
  UCX_TLS=tcp UCX_NET_DEVICES=vp ip netns exec $P "$SKV" scd-producer -m "$SH/models/kvt-l" --maps "$MAPS" \
    --connect $CA:$PORT --transport "$t" --method "$m" -f "$OUT/.prompt.txt" --keep-last "$len" -t 1 "$@"
}

if [ "$FAULTS" = 1 ]; then
  F="$OUT/faults.txt"
  : > "$F"
  shape 30
  for t in $TRANSPORTS; do
    echo "== $t: producer killed mid-stream (die at frame 6)" >> "$F"
    consumer "$t" 1 --timeout 30 --accept-timeout 120
    producer "$t" raw 1024 --fault die:6 >/dev/null 2>>"$F" || true
    wait $CPID || echo "consumer exit $?" >> "$F"; tail -1 "$OUT/consumer.err" >> "$F"
    echo "== $t: one byte corrupted (frame 5)" >> "$F"
    consumer "$t" 1 --timeout 30 --accept-timeout 120
    producer "$t" scd 1024 --fault corrupt:5 >/dev/null 2>>"$F" || true
    wait $CPID || echo "consumer exit $?" >> "$F"; tail -1 "$OUT/consumer.err" >> "$F"
    for cut in down loss; do
      if [ $cut = down ]; then echo "== $t: link cut mid-stream (ip link set vp down after the 6th frame arrived)" >> "$F"
      else echo "== $t: every packet dropped mid-stream (blackhole route at the producer after the 6th frame arrived)" >> "$F"; fi
      : > "$OUT/cut.err"
      CERR="$OUT/cut.err" consumer "$t" 1 --timeout 30 --accept-timeout 120 --progress
      ( for _ in $(seq 2400); do
          [ "$(grep -c ': frame ' "$OUT/cut.err" || true)" -ge 6 ] && break; sleep 0.05
        done
        if [ $cut = down ]; then ip -n $P link set vp down
        else ip -n $P route add blackhole $CA/32; fi ) &
      CUT=$!
      producer "$t" raw 1984 --timeout 40 >/dev/null 2>>"$F" || true
      wait $CPID || echo "consumer exit $?" >> "$F"
      grep -c ': frame ' "$OUT/cut.err" | sed 's/^/frames received: /' >> "$F"; tail -1 "$OUT/cut.err" >> "$F"
      wait $CUT || true
      ip -n $P link set vp up; ip -n $P route del blackhole $CA/32 2>/dev/null || true; sleep 1; shape 30
    done
    ip netns exec $P tc qdisc del dev vp root 2>/dev/null || true; shape 30
  done
  cat "$F"
  exit 0
fi

n_req=0
for _ in $LENS; do for _ in $METHODS; do for _ in $STREAMS; do n_req=$((n_req + 1)); done; done; done
for t in $TRANSPORTS; do
  for r in $RATES; do
    shape "$r"
    consumer "$t" "$n_req" --timeout 120
    for len in $LENS; do
      for m in $METHODS; do for s in $STREAMS; do
        ns=""; [ "$s" = 0 ] && ns=--no-stream
        line=$(producer "$t" "$m" "$len" --timeout 120 $ns) || { echo "scd_ttft.sh: $t $r $len $m failed" >&2; continue; }
        echo "{\"rate_mbit\": $r, \"len\": $len, \"delay_ms\": $DELAY, \"producer\": $line}" >> "$OUT/ttft.jsonl"
        echo "$t ${r}Mbit/s len $len $m stream $s: $(echo "$line" | sed -n 's/.*"ttft":\([0-9.]*\).*/\1/p') s"
      done; done
    done
    wait $CPID || true
  done
done
python3 scripts/scd_ttft_table.py "$OUT/ttft.jsonl" > "$OUT/ttft.md"
cat "$OUT/ttft.md"
