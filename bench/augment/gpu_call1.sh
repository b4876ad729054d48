#!/bin/bash
# GPU call 1 of 2 (cache augmentation on CUDA; train/README.md and README "Cache augmentation"):
# unpack the CUDA build, kvt-l and the data into /tmp/k13 (kept on the warm machine for call 2),
# run the CUDA tests that the device copy touches and kvt-l's task scores on the GPU without
# latents. On the GPU machine, from the repository root, with .dev-13 carried (made by
# scripts/devpack.sh .dev-13, plus kvtl.tar.xz, corpus.val.txt.xz, tasks.val.jsonl.xz):
#   bash .dev-13/gpu_call1.sh
D=$PWD/.dev-13; K=/tmp/k13; R=$K/r1
rm -rf $K; mkdir -p $K/p $K/models $K/data $R
tar xJf $D/pack.tar.xz -C $K/p && tar xJf $D/kvtl.tar.xz -C $K/models && cp -r models/kvt-s $K/models/ &&
  cp $D/corpus.val.txt.xz $K/data/ && xz -dc $D/tasks.val.jsonl.xz > $K/data/tasks.val.jsonl || exit 1
export LD_LIBRARY_PATH=$K/p/lib OMP_WAIT_POLICY=passive
B=$K/p/bin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/device.txt
lscpu | grep "Model name" >> $R/device.txt
for task in passkey linecomp; do
  $B/slimkv eval -m $K/models/kvt-l --tasks $K/data/tasks.val.jsonl --task $task --backend cuda --no-kl -t 1 -q \
    -o $R/eval-$task-none-cuda.jsonl > $R/eval-$task-none-cuda.json 2> $R/eval-$task-none-cuda.err &
done
for f in cuda/augment cuda/batched cuda/export cuda/embedding; do
  SKV_SHARED=$K SKV_CLI=$B/slimkv $B/skv_tests $f
done > $R/tests1.txt 2>&1
wait
tar cJf $OUT/r1.tar.xz -C $K r1
cat $R/device.txt $R/tests1.txt $R/eval-*.json; tail -n 3 $R/*.err
