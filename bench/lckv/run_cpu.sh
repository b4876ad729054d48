#!/bin/sh
# CPU measurements of issue 12 (LCKV vs standard vs MiniCache), run from the repository root:
#   sh bench/lckv/run_cpu.sh BIN WINDOWS LIMIT
# BIN: the slimkv binary; WINDOWS: ppl windows (the protocol: 200); LIMIT: eval rows per task.
# Writes bench/lckv/cpu/{ppl,eval}-*.json(l) and log.txt.
set -e
BIN=${1:-build/slimkv}; W=${2:-200}; LIM=${3:-10}
O=bench/lckv/cpu
export OMP_WAIT_POLICY=passive
VAL=../shared/data/corpus.val.txt.xz TASKS=../shared/data/tasks.val.jsonl
MC_W2="--policy minicache --mc-groups 0:1:2,3:4:5,6:7:8:9"
MC_W4="--policy minicache --mc-groups 0:1,2:3,4:5,6:7,8:9"
run() { echo "$ $*" >> $O/log.txt; /usr/bin/time -f "%e s wall" "$@" 2>> $O/log.txt; }
for m in std w2 w4; do
  run $BIN ppl -m models/lckv-$m -f $VAL --windows $W --chunk 2048 -t 2 -q --out $O/ppl-$m.json
done
run $BIN ppl -m models/lckv-std -f $VAL --windows $W -t 2 -q $MC_W2 --out $O/ppl-mc-w2bytes.json
run $BIN ppl -m models/lckv-std -f $VAL --windows $W -t 2 -q $MC_W4 --out $O/ppl-mc-w4bytes.json
for m in std w2 w4; do
  run $BIN eval -m models/lckv-$m --tasks $TASKS --limit $LIM -t 2 --out $O/eval-$m.jsonl > $O/eval-$m.txt
done
run $BIN eval -m models/lckv-std --tasks $TASKS --limit $LIM -t 2 $MC_W2 --out $O/eval-mc-w2bytes.jsonl > $O/eval-mc-w2bytes.txt
run $BIN eval -m models/lckv-std --tasks $TASKS --limit $LIM -t 2 $MC_W4 --out $O/eval-mc-w4bytes.jsonl > $O/eval-mc-w4bytes.txt
echo done >> $O/log.txt
