#!/bin/bash
# Lead's H200 call, session 5: KCache vs the full cache at batch 1, depths 4k/16k/32k (current pipeline).
set -u
D=.dev-k6; R=$PWD; T0=$(date +%s)
mkdir -p $D/p && tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$R/$D/p/lib
B=$R/$D/p/bin
{ cat $D/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > $OUT/machine.txt 2>&1
$B/slimkv mkmodel --shape llama3-8b -o /tmp/l8 > $OUT/mk.log 2>&1
timeout 150 stdbuf -oL $B/slimkv bench -m /tmp/l8 --backend cuda --policy kcache --kc-n 64 --depths 4096,16384,32768 --batch-depth 4096 --max-batch 1 --tg 12 -r 2 -o $OUT/kcache-cuda-llama3-8b.json > $OUT/bench.log 2>&1
echo "bench rc $?; whole command $(( $(date +%s) - T0 )) s" >> $OUT/bench.log
tail -30 $OUT/bench.log
