#!/bin/bash
# Lead's H200 call, session 5: the GPU tests (all cuda areas), then the KCache headline bench
# (the gather kernel; the full cache's arm with 8/16/32/64/128 waves of attention splits).
set -u
D=.dev-final; R=$PWD; T0=$(date +%s)
mkdir -p $D/p /tmp/sh/models /tmp/sh/data
tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$R/$D/p/lib OMP_WAIT_POLICY=passive
B=$R/$D/p/bin
tar xJf $D/kvtl.tar.xz -C /tmp/sh/models && ln -sfn $R/models/kvt-s /tmp/sh/models/kvt-s
cp $D/corpus.val.txt.xz /tmp/sh/data/ && xz -dc $D/tasks.val.jsonl.xz > /tmp/sh/data/tasks.val.jsonl
{ cat $D/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; free -g; } > $OUT/machine.txt 2>&1
( $B/slimkv mkmodel --shape llama3-8b -o /tmp/l8 > $OUT/mk.log 2>&1 ) &
t0=$(date +%s)
SKV_SHARED=/tmp/sh SKV_CLI=$B/slimkv timeout 130 stdbuf -oL $B/skv_tests cuda > $OUT/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 )) s" >> $OUT/tests.log
wait
t1=$(date +%s)
timeout 290 stdbuf -oL $B/slimkv bench -m /tmp/l8 --backend cuda --policy kcache --kc-n 64 --depths 32768 --tg 12 -r 2 -o $OUT/kcache-cuda-llama3-8b.json > $OUT/bench.log 2>&1
echo "bench rc $? $(( $(date +%s) - t1 )) s; whole command $(( $(date +%s) - T0 )) s" >> $OUT/bench.log
grep -E "^(ok|FAIL|skip)|passed|rc |    " $OUT/tests.log | cut -c1-220
tail -40 $OUT/bench.log
