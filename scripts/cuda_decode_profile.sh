#!/bin/bash
# cuda_decode_profile.sh SLIMKV MODEL OUTDIR — the decode measurements of issue 16 on the GPU
# machine, in one call: the per-stage profile (SKV_CUDA_PROF, eager launches timed with events)
# of the old decode path (one-warp GEMV, no early launches, separate norms) and of the new one,
# then graph-replayed decode at 4k and 32k under each switch (gpu_ctx.cuh) one at a time.
# Writes OUTDIR/profile.log and OUTDIR/variants.log.
set -u
S=${1:?slimkv}; M=${2:?model dir}; O=${3:?out dir}
old="SKV_CUDA_GEMV=0 SKV_CUDA_PDL=0 SKV_CUDA_FUSE_NORM=0"
prof() { # name, env
    echo "== profile: $1 ($2)" >>"$O/profile.log"
    env $2 SKV_CUDA_PROF=16 timeout 60 "$S" bench -m "$M" --backend cuda --pps 0 --depths 4096,32768 --tg 16 \
        --batches 0 --reps 1 -o /tmp/prof.json >>"$O/profile.log" 2>&1
}
var() { # name, env
    echo "== variant: $1 ($2)" >>"$O/variants.log"
    env $2 timeout 60 "$S" bench -m "$M" --backend cuda --pps 0 --depths 4096,32768 --tg 32 --batches 0 \
        --reps 2 -o /tmp/var.json >>"$O/variants.log" 2>&1
}
prof old "$old"
prof new "SKV_CUDA_PDL=1"
var "old path" "$old"
var "tensor-core GEMV + fused SwiGLU" "SKV_CUDA_PDL=0 SKV_CUDA_FUSE_NORM=0"
var "+ early launches (PDL)" "SKV_CUDA_FUSE_NORM=0"
var "+ fused RMSNorm (default)" "SKV_CUDA_PDL=1"
var "default, 8 waves of attention splits" "SKV_CUDA_ATT_WAVES=8"
var "default, 2 waves of attention splits" "SKV_CUDA_ATT_WAVES=2"
