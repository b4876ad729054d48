#!/bin/sh
# CPU measurements of issue 12, part 2 (run from the repository root after run_cpu.sh's ppl
# runs): task scores on the val tasks (the first LIMIT rows of each task, the same rows for every
# model and policy) and the CPU speed of the kvt-l-shaped models, standard vs LCKV.
#   sh bench/lckv/run_cpu2.sh BIN LIMIT
set -e
BIN=${1:-build/slimkv}; LIM=${2:-3}
O=bench/lckv/cpu
export OMP_WAIT_POLICY=passive
TASKS=../shared/data/tasks.val.jsonl
MC_W2="--policy minicache --mc-groups 0:1:2,3:4:5,6:7:8:9"
MC_W4="--policy minicache --mc-groups 0:1,2:3,4:5,6:7,8:9"
run() { echo "$ $*" >> $O/log.txt; /usr/bin/time -f "%e s wall" "$@" 2>> $O/log.txt; }
for m in std w2 w4; do
  run $BIN eval -m models/lckv-$m --tasks $TASKS --limit $LIM -t 2 -q --out $O/eval-$m.jsonl > $O/eval-$m.txt
done
run $BIN eval -m models/lckv-std --tasks $TASKS --limit $LIM -t 2 -q $MC_W2 --out $O/eval-mc-w2bytes.jsonl > $O/eval-mc-w2bytes.txt
run $BIN eval -m models/lckv-std --tasks $TASKS --limit $LIM -t 2 -q $MC_W4 --out $O/eval-mc-w4bytes.jsonl > $O/eval-mc-w4bytes.txt
for m in std w2; do
  run $BIN bench -m models/lckv-$m -t 2 -r 2 --pp 512 --tg 64 --depths 0,1984 -o $O/bench-cpu-$m.json > $O/bench-cpu-$m.txt
done
echo done2 >> $O/log.txt
