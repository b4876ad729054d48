#!/bin/bash
# The GPU call that trains the cache-augmentation coprocessors (train/README.md, "Cache
# augmentation"). Run from the repository root of the device machine with the carry folder D
# holding kvtl.tar.xz, train30.txt.xz (the training slice), corpus.val.txt.xz and train/.
# Usage: train/augment_gpu.sh D "16:140 8:110"   (N_L:seconds of training, back to back)
D=${1:-.dev-aug}; RUNS=${2:-"16:140 8:110"}
export PYTHONUNBUFFERED=1
mkdir -p /tmp/m /tmp/r && tar xJf $D/kvtl.tar.xz -C /tmp/m
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for spec in $RUNS; do
  nl=${spec%%:*}; sec=${spec##*:}
  timeout $((sec + 80)) python3 $D/train/augment.py --base /tmp/m/kvt-l --corpus $D/train30.txt.xz \
    --val $D/corpus.val.txt.xz --token-cache /tmp/tok.npy --nl $nl --max-seconds $sec --log-every 10 \
    --eval-windows 200 --eval-every 64 --out /tmp/r/runs/aug-n$nl --export /tmp/r/models/aug-kvt-l-n$nl \
    --no-embed 2>&1 | grep -v -i warn
  nvidia-smi --query-gpu=memory.used --format=csv,noheader
done
cd /tmp/r && tar cf - . | xz -T16 -2 | split -b 15M - $OUT/pack.tar.xz.
ls -la $OUT
