#!/bin/bash
# Issue 16 (decode speed), branch issue16, commit in .dev-16/COMMIT: GPU tests; the bench
# with the separate kernels (SKV_CUDA_FUSE=0 = main's default path) and the fused ones (default);
# single-part variants; the per-stage profile of both. run: bash .dev-16/run.sh (carry .dev-16)
set -u
D=$PWD/.dev-16
mkdir -p $D/p && tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$D/p/lib
S=$D/p/bin/slimkv; T=$D/p/bin/skv_tests
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $OUT/env.txt 2>&1
cat $D/COMMIT >> $OUT/env.txt
mkdir -p /tmp/sh/models /tmp/sh/data && tar xJf $D/kvtl.tar.xz -C /tmp/sh/models && ln -sf $PWD/models/kvt-s /tmp/sh/models/kvt-s
( $S mkmodel --shape llama3-8b -o /tmp/l8 > /tmp/mk.log 2>&1 ) &
SECONDS=0
SKV_SHARED=/tmp/sh SKV_CLI=$S timeout 50 $T cuda > $OUT/tests.log 2>&1; echo "tests rc=$? ${SECONDS}s" >> $OUT/env.txt
wait; cat /tmp/mk.log >> $OUT/env.txt
B="$S bench -m /tmp/l8 --backend cuda --mmap --no-check"
SKV_CUDA_FUSE=0 timeout 40 $B --pps 0 --depths 4096,16384,32768 --tg 64 --batches 1,8 --batch-depth 1024 --reps 3 -o $OUT/before.json > $OUT/before.log 2>&1
echo "before rc=$? ${SECONDS}s" >> $OUT/env.txt
timeout 50 $B --pps 4096,16384 --depths 4096,16384,32768 --tg 64 --batches 1,8,32,64 --batch-depth 1024 --reps 3 -o $OUT/after.json > $OUT/after.log 2>&1
echo "after rc=$? ${SECONDS}s" >> $OUT/env.txt
( for v in "SKV_CUDA_FUSE=0" "SKV_CUDA_FUSE=15"; do echo "== $v"; env $v SKV_CUDA_PROF=16 timeout 25 $B --pps 0 --depths 4096,32768 --tg 16 --batches 0 --reps 1 -o /tmp/p.json 2>&1 | grep -v "^written"; done ) > $OUT/profile.log 2>&1
echo "profile ${SECONDS}s" >> $OUT/env.txt
( for v in "SKV_CUDA_FUSE=4" "SKV_CUDA_FUSE=11" "SKV_CUDA_FUSE=13" "SKV_CUDA_FUSE=15"; do echo "== $v"; env $v timeout 20 $B --pps 0 --depths 4096 --tg 64 --batches 0 --reps 3 -o /tmp/v.json 2>&1 | grep "tg64"; done
  for v in "SKV_CUDA_ATT_WAVES=2" "SKV_CUDA_ATT_WAVES=3"; do echo "== $v"; env $v timeout 25 $B --pps 0 --depths 32768 --tg 64 --batches 0 --reps 3 -o /tmp/v.json 2>&1 | grep "tg64"; done ) > $OUT/variants.log 2>&1
echo "variants ${SECONDS}s" >> $OUT/env.txt
cat $OUT/env.txt; grep -E "^(FAIL|ok|skip)|passed|rows|fused" $OUT/tests.log; cat $OUT/before.log $OUT/after.log $OUT/profile.log $OUT/variants.log
