#!/bin/bash
# issue 16b device run: KIVI GPU tests, then decode bench bf16 / int8 / int4 at the Llama-3-8B shape
set -u
D=.dev-16b
R=$PWD
mkdir -p $D/p $D/sh/models
tar xJf $D/pack.tar.xz -C $D/p && tar xJf $D/kvtl.tar.xz -C $D/sh/models
ln -sfn $R/models/kvt-s $D/sh/models/kvt-s
[ -d $R/data ] && ln -sfn $R/data $D/sh/data
export LD_LIBRARY_PATH=$R/$D/p/lib OMP_WAIT_POLICY=passive
B=$R/$D/p/bin
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; git -C $R log --oneline -1 2>/dev/null; } > $OUT/env.txt 2>&1
t0=$(date +%s)
SKV_SHARED=$R/$D/sh SKV_CLI=$B/slimkv timeout 150 $B/skv_tests cuda_kivi > $OUT/tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
timeout 60 $B/slimkv mkmodel --shape llama3-8b -o /tmp/l8 >> $OUT/env.txt 2>&1
echo "mkmodel $(( $(date +%s) - t0 )) s" >> $OUT/env.txt
for f in bf16 int8 int4; do
  echo "== slimkv bench -m /tmp/l8 --backend cuda --kv-format $f --pps 0 --depths 4096,16384,32768 --tg 32 --reps 2 --batches 0 --max-batch 256" >> $OUT/bench.log
  timeout 100 $B/slimkv bench -m /tmp/l8 --backend cuda --kv-format $f --pps 0 --depths 4096,16384,32768 --tg 32 \
      --reps 2 --batches 0 --max-batch 256 -o $OUT/bench-$f.json >> $OUT/bench.log 2>&1
  echo "rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/bench.log
done
for w in 4 8; do
  echo "== SKV_CUDA_FA_WARPS=$w slimkv bench -m /tmp/l8 --backend cuda --pps 4096,16384 --depths 0 --batches 0 --reps 2" >> $OUT/bench.log
  SKV_CUDA_FA_WARPS=$w timeout 60 $B/slimkv bench -m /tmp/l8 --backend cuda --pps 4096,16384 --depths 0 --batches 0 \
      --reps 2 -o /tmp/pp-$w.json >> $OUT/bench.log 2>&1
  echo "rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/bench.log
done
echo "== python3 scripts/torch_bench.py /tmp/l8 --pps 4096,16384 --depths '' --batches '' --reps 2" >> $OUT/bench.log
timeout 60 python3 scripts/torch_bench.py /tmp/l8 --pps 4096,16384 --depths "" --batches "" --reps 2 --out /tmp/torch-pp.json >> $OUT/bench.log 2>&1
echo "rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/bench.log
cat /tmp/pp-4.json /tmp/pp-8.json /tmp/torch-pp.json > $OUT/prefill.json 2>/dev/null
