#!/bin/sh
# gpu_bench.sh SHAPE OUTDIR — on the GPU machine: write a random-weight model of SHAPE
# (slimkv mkmodel), time slimkv's CUDA backend and PyTorch (transformers, sdpa) on it in the
# same command, then delete the model. Needs slimkv built with CUDA=1 as $SLIMKV.
set -e
shape=$1
out=$2
slimkv=${SLIMKV:-build-cuda/slimkv}
dir=/tmp/$shape
args="--pps 4096,16384 --depths 4096,16384,32768 --tg 64 --batches 1,8,32 --batch-depth 1024 --reps 3"
$slimkv mkmodel --shape "$shape" -o "$dir"
$slimkv bench -m "$dir" --backend cuda $args -o "$out/cuda-$shape.json"
PYTHONUNBUFFERED=1 python3 scripts/torch_bench.py "$dir" $args --compiled --out "$out/torch-$shape.json" 2>&1 |
    grep -v -i "warn\|deprecat\|Loading weights"
rm -rf "$dir"
