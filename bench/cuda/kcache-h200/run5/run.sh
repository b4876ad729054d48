#!/bin/bash
# issue 11 device run (round 3): GPU tests cuda/kcache, then the KCache bench at the Llama-3-8B shape
set -u
D=.dev-11
T0=$(date +%s)
mkdir -p $D/p && tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$PWD/$D/p/lib
B=$PWD/$D/p/bin
mkdir -p /tmp/sh/models /tmp/sh/data
tar xJf .dev/kvtl.tar.xz -C /tmp/sh/models
cp $D/corpus.val.txt.xz /tmp/sh/data/ && xz -dc $D/tasks.val.jsonl.xz > /tmp/sh/data/tasks.val.jsonl
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; free -g; nproc; df -h /tmp | tail -1; } > $OUT/machine.txt 2>&1
( $B/slimkv mkmodel --shape llama3-8b -o /tmp/l8 > $OUT/mk.log 2>&1 ) &
MK=$!
t0=$(date +%s)
SKV_SHARED=/tmp/sh SKV_CLI=$B/slimkv OMP_WAIT_POLICY=passive timeout 50 stdbuf -oL $B/skv_tests cuda/kcache > $OUT/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - t0 )) s" >> $OUT/tests.log
wait $MK
t1=$(date +%s)
timeout 130 stdbuf -oL $B/slimkv bench -m /tmp/l8 --backend cuda --policy kcache --kc-n 64 --depths 32768 --tg 12 -r 2 -o $OUT/kcache-cuda-llama3-8b.json > $OUT/bench.log 2>&1
echo "bench rc $? $(( $(date +%s) - t1 )) s; whole command $(( $(date +%s) - T0 )) s" >> $OUT/bench.log
grep -E "^(ok|FAIL|skip)|passed|rc |    " $OUT/tests.log | cut -c1-250
cat $OUT/bench.log
