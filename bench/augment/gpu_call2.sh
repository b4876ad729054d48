#!/bin/bash
# GPU call 2 of 2, right after call 1 on the warm machine (its files in /tmp/k13): the coprocessors
# (scripts/aug_delta.py deltas against kvt-l, unpacked byte-identical), the CUDA test of the trained
# coprocessor, the cost of one augmentation vs decoding (one process at a time), GPU memory with
# and without the coprocessor, then in parallel: `ppl --augment-every 64` over WS x NS windows in
# NS shares per coprocessor and `eval --augment` on passkey and linecomp.
#   bash .dev-13b/gpu_call2.sh [WS=50] [NS=4]      (.dev-13b carried: n16.delta, n8.delta, aug_delta.py)
D=$PWD/.dev-13b; K=/tmp/k13; R=$K/r2; WS=${1:-50}; NS=${2:-4}
[ -x $K/p/bin/slimkv ] || { echo "call 1's files are gone (a fresh machine)"; exit 3; }
rm -rf $R; mkdir -p $R
export LD_LIBRARY_PATH=$K/p/lib OMP_WAIT_POLICY=passive
B=$K/p/bin
for n in 16 8; do
  python3 $D/aug_delta.py unpack $D/n$n.delta $K/models/kvt-l models/aug-kvt-l-n$n/model.safetensors || exit 1
done
SKV_SHARED=$K SKV_CLI=$B/slimkv $B/skv_tests cuda/augment > $R/tests2.txt 2>&1
cat $R/tests2.txt
for bytes in 1200 4000; do xz -dc $K/data/corpus.val.txt.xz | head -c $bytes | tr -d '\036' > $K/prompt$bytes.txt; done
for bytes in 1200 4000; do for n in 16 8; do for rep in 1 2 3; do
  echo "== prompt $bytes bytes, aug-kvt-l-n$n, rep $rep"
  $B/slimkv run -m $K/models/kvt-l -f $K/prompt$bytes.txt -n 65 --temp 0 --ignore-eos --augment models/aug-kvt-l-n$n \
    --backend cuda -t 1 --json 2>&1 >/dev/null | grep -E "augmentation|prompt|rror"
done; done; done > $R/cost-cuda.txt
cat $R/cost-cuda.txt
mem() { # GPU memory used (MiB, every 20 ms) while one run decodes 400 tokens after the 4000-byte prompt
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > $R/mem-$1.txt & local p=$!
  sleep 1; shift; "$@" --backend cuda -t 1 -m $K/models/kvt-l -f $K/prompt4000.txt -n 400 --temp 0 --ignore-eos \
    > /dev/null 2>> $R/mem.err; sleep 0.5; kill $p; }
mem none $B/slimkv run
mem n16 $B/slimkv run --augment models/aug-kvt-l-n16
for f in none n16; do echo "$f: idle $(head -1 $R/mem-$f.txt) MiB, peak $(sort -n $R/mem-$f.txt | tail -1) MiB"; done | tee $R/mem.txt
for n in 16 8; do for s in $(seq 0 $((NS - 1))); do
  timeout 200 $B/slimkv ppl -m $K/models/kvt-l -f $K/data/corpus.val.txt.xz -w $WS --skip-windows $((s * WS)) -q -t 1 \
    --backend cuda --augment models/aug-kvt-l-n$n --augment-every 64 --augment-dump $R/dump-n$n-s$s.f32 \
    -o $R/ppl-n$n-s$s.json > /dev/null 2> $R/ppl-n$n-s$s.err &
done; done
for task in passkey linecomp; do for n in 16 8; do
  timeout 200 $B/slimkv eval -m $K/models/kvt-l --tasks $K/data/tasks.val.jsonl --task $task --backend cuda --no-kl -t 1 \
    -q --augment models/aug-kvt-l-n$n -o $R/eval-$task-n$n-cuda.jsonl > $R/eval-$task-n$n-cuda.json 2> $R/eval-$task-n$n.err &
done; done
wait
tar cJf $OUT/r2.tar.xz -C $K r2
cat $R/eval-*.json; tail -n 2 $R/*.err; ls -la $R
