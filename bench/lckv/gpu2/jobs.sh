#!/bin/sh
# jobs.sh M: on the GPU machine, from /tmp/i12 (models/lckv-M/, corpus, tasks there): the
# protocol's 200-window val perplexity of lckv-M on the CUDA backend (each 2048-token window one
# prefill, --chunk 2048, as the reference's single parallel pass) and the val tasks (all 100 rows
# of each task, one process per task, all at once on the one GPU).
m=$1 B=/tmp/i12/p/bin/slimkv
cd /tmp/i12 || exit 1
export OMP_WAIT_POLICY=passive
echo "start $(date +%s.%N)" > out/time-$m.txt
$B ppl -m models/lckv-$m -f corpus.val.txt.xz --windows 200 --chunk 2048 --backend cuda -t 1 -q \
   -o out/ppl-$m-cuda.json > out/ppl-$m-cuda.txt 2>&1 &
for t in dictqa macroqa passkey kvrecall linecomp; do
  $B eval -m models/lckv-$m --tasks tasks.val.jsonl --task $t --backend cuda -t 1 -q \
     --out out/eval-$m-$t.jsonl > out/eval-$m-$t.txt 2>&1 &
done
wait
echo "end $(date +%s.%N)" >> out/time-$m.txt
touch out/done-$m
