#!/bin/bash
# The per-position table from the engine (`ppl --augment-every 64`) on the first 4 val windows, and
# its per-point agreement with PyTorch (the GPU run's NLLs stored in each reference.json).
# Run from the repository root: bench/augment/table.sh
S=${SKV_SHARED:-../shared}; BIN=${SKV_BIN:-./build/slimkv}; T=${THREADS:-1}
for n in 16 8; do
  OMP_WAIT_POLICY=passive $BIN ppl -m $S/models/kvt-l -f $S/data/corpus.val.txt.xz -w 4 -t $T -q \
    --augment models/aug-kvt-l-n$n --augment-every 64 --augment-dump /tmp/aug-n$n.f32 \
    -o bench/augment/ppl-every64-kvt-l-n$n-w4.json > /dev/null
  python3 bench/augment/compare_nll.py /tmp/aug-n$n.f32 models/aug-kvt-l-n$n/reference.json \
    > bench/augment/engine-vs-pytorch-n$n-w4.json
done
