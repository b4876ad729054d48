#!/bin/bash
# Task scores of kvt-l with and without cache augmentation (passkey, linecomp; all 100 val rows each).
# Run from the repository root: bench/augment/tasks.sh [THREADS]
T=${1:-2}; S=${SKV_SHARED:-../shared}; BIN=${SKV_BIN:-./build/slimkv}
for task in passkey linecomp; do
  for aug in none aug-kvt-l-n16 aug-kvt-l-n8; do
    flag=""; [ $aug != none ] && flag="--augment models/$aug"
    OMP_WAIT_POLICY=passive $BIN eval -m $S/models/kvt-l --tasks $S/data/tasks.val.jsonl --task $task \
      $flag --no-kl -t $T -q -o bench/augment/eval-$task-$aug.jsonl > bench/augment/eval-$task-$aug.json
  done
done
