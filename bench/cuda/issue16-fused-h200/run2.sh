#!/bin/bash
# Issue 16 run 2 (commit in .dev-16/COMMIT): the fused attention with the parallel merge —
# GPU tests of the fused kernels, then decode at 4k / 32k under the switches.
set -u
D=$PWD/.dev-16
mkdir -p $D/p && tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$D/p/lib
S=$D/p/bin/slimkv; T=$D/p/bin/skv_tests
( $S mkmodel --shape llama3-8b -o /tmp/l8 > /tmp/mk.log 2>&1 ) &
cat $D/COMMIT > $OUT/env.txt
mkdir -p /tmp/sh/models /tmp/sh/data && tar xJf $D/kvtl.tar.xz -C /tmp/sh/models && ln -sf $PWD/models/kvt-s /tmp/sh/models/kvt-s
SECONDS=0
for t in cuda/fused cuda/head_dim "cuda/attention stat"; do SKV_SHARED=/tmp/sh SKV_CLI=$S timeout 15 $T "$t"; done > $OUT/tests.log 2>&1
echo "tests ${SECONDS}s" >> $OUT/env.txt
wait; cat /tmp/mk.log >> $OUT/env.txt
B="$S bench -m /tmp/l8 --backend cuda"
( for v in "SKV_CUDA_FUSE=0" "SKV_CUDA_FUSE=15" "SKV_CUDA_FUSE=15 SKV_CUDA_ATT_MINLEN=256"; do echo "== $v"; env $v timeout 12 $B --pps 0 --depths 4096 --tg 64 --batches 0 --reps 3 -o /tmp/v.json 2>&1 | grep tg64; done
  for v in "SKV_CUDA_FUSE=15"; do echo "== $v"; env $v timeout 14 $B --pps 0 --depths 32768 --tg 64 --batches 0 --reps 2 -o /tmp/v.json 2>&1 | grep tg64; done ) > $OUT/variants.log 2>&1
echo "variants ${SECONDS}s" >> $OUT/env.txt
cat $OUT/env.txt; grep -E "^(FAIL|ok|skip)|passed|rows|head_dim|statistics" $OUT/tests.log; cat $OUT/variants.log
