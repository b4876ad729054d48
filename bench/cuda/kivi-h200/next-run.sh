#!/bin/bash
# Not run yet (no device time left in session 4): the next GPU call for issue 16's KIVI part. Carry
# .dev-16b (pack.tar.xz from scripts/devpack.sh of a `make CUDA=1` build, kvtl.tar.xz) and run from
# the repository root. It runs the KIVI GPU tests (the new rows test locates the int8 deviation;
# both kernel variants against the double reference), then decode at the Llama-3-8B shape with
# the measured kernel and with SKV_CUDA_KIVI_UNITS=1, alternated.
set -u
D=.dev-16b
R=$PWD
mkdir -p $D/p $D/sh/models
tar xJf $D/pack.tar.xz -C $D/p && tar xJf $D/kvtl.tar.xz -C $D/sh/models
ln -sfn $R/models/kvt-s $D/sh/models/kvt-s
export LD_LIBRARY_PATH=$R/$D/p/lib OMP_WAIT_POLICY=passive
B=$R/$D/p/bin
SKV_SHARED=$R/$D/sh SKV_CLI=$B/slimkv timeout 200 $B/skv_tests cuda_kivi > $OUT/tests.log 2>&1
timeout 60 $B/slimkv mkmodel --shape llama3-8b -o /tmp/l8 > $OUT/env.txt 2>&1
for f in int8 int4; do
  for u in 0 1; do
    echo "== SKV_CUDA_KIVI_UNITS=$u slimkv bench --kv-format $f" >> $OUT/bench.log
    SKV_CUDA_KIVI_UNITS=$u timeout 100 $B/slimkv bench -m /tmp/l8 --backend cuda --kv-format $f --pps 0 \
        --depths 4096,16384,32768 --tg 32 --reps 2 --batches 0 -o $OUT/bench-$f-u$u.json >> $OUT/bench.log 2>&1
  done
done
