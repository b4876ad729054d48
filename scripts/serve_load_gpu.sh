#!/bin/sh
# serve_load_gpu.sh model|start|wait DEV [SECONDS] — the H200 load run of `slimkv serve` with a
# random-weight Llama-3-8B-shaped model, over two device calls (one call runs at most 600 s).
# From the repository root on the GPU machine, DEV carried (DEV/pack.tar.xz from
# scripts/devpack.sh, DEV/scripts/ = this directory, DEV/corpus.val.txt.xz, DEV/COMMIT):
# after `mkdir -p DEV/p && tar xJf DEV/pack.tar.xz -C DEV/p`:
#   model  write the model (kvt-s's tokenizer, models/kvt-s) into /dev/shm/m8b (tmpfs: much
#          faster to write than the disk); may run in the background
#   start  wait for the model; the offline batched decode (slimkv bench --backend cuda, batches
#          1/16/64 at depth 512) with the default kernels, then with --batch-invariant (and with
#          TORCH=1 PyTorch's compiled static-cache decode at the same batches, torch_bench.py), into
#          $OUT; then DEV/scripts/serve_load.py (64 streaming clients, mixed prompt lengths and
#          per-request KV policies, greedy; every stream checked against its solo run) against
#          `slimkv serve --backend cuda` (batch-invariant, the default) for SECONDS, started in
#          its own process session (setsid) so that it outlives the call
#   wait   (the next call, issued at once: the machine goes back 30 s after a call) wait for
#          the load run, at most SECONDS, and copy its results into $OUT. A carried folder that a
#          call does not carry again is removed there, so `start` leaves a copy of this script
#          in /tmp/skv_load and the wait call needs nothing carried:
#            sh /tmp/skv_load/serve_load_gpu.sh wait - SECONDS
#          (the running server and load keep their unlinked files).
# The runs in bench/serve/h200-10min/ (its wait step typed inline) and bench/serve/h200-s5/ (600 s;
# two wait calls) used these steps.
set -e
what=${1:?usage: serve_load_gpu.sh model|start|wait DEV [SECONDS]}
dev=${2:?usage: serve_load_gpu.sh model|start|wait DEV [SECONDS]}
dur=${3:-60}
m=/dev/shm/m8b
res=/tmp/skv_load
export LD_LIBRARY_PATH=$PWD/$dev/p/lib
cli=$PWD/$dev/p/bin/slimkv
case $what in
model)
    t0=$(date +%s)
    "$cli" mkmodel --shape llama3-8b -o $m --tokenizer models/kvt-s > /tmp/skv_mkmodel.log 2>&1
    echo "mkmodel: $(($(date +%s) - t0)) s" >> /tmp/skv_mkmodel.log
    touch $m.done
    ;;
start)
    while [ ! -e $m.done ]; do sleep 1; done
    cat /tmp/skv_mkmodel.log
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    for arm in default binv; do
        flag=; [ $arm = binv ] && flag=--batch-invariant
        "$cli" bench -m $m --backend cuda --pps 512 -d 512 --batches 1,16,64 --batch-depth 512 --tg 32 -r 2 $flag \
            -o "$OUT/offline-$arm.json" 2>&1 | grep -v '^ *$' | tail -6
    done
    if [ -n "${TORCH:-}" ]; then # PyTorch's best batched decode on the same model (StaticCache + torch.compile)
        timeout 300 python3 "$dev/scripts/torch_bench.py" $m --pps "" --depths "" --batches 1,16,64 --batch-depth 512 \
            --tg 32 --reps 2 --compiled --out "$OUT/torch-offline.json" 2>&1 | tail -8 || echo "torch_bench failed"
    fi
    mkdir -p $res
    cp "$0" $res/
    SKV_COMMIT=$(cat "$dev/COMMIT" 2>/dev/null) setsid nohup python3 "$dev/scripts/serve_load.py" --backend cuda \
        --cli "$cli" --model $m --corpus "$dev/corpus.val.txt.xz" --clients 64 --parallel 64 --threads 8 --pool 16 \
        --duration "$dur" --policies mixed --server-args "--ctx 2048 --prefill-chunk 512" --bench-args none \
        --out $res/load-h200-10min.json > $res/load.log 2>&1 < /dev/null &
    echo "load run started: $dur s of load after the solo references"
    ;;
wait)
    t0=$(date +%s)
    # (the bracket keeps pgrep from matching a shell whose command line names the script)
    while pgrep -f "scripts/serve_loa[d].py" > /dev/null && [ $(($(date +%s) - t0)) -lt "$dur" ]; do sleep 2; done
    cp $res/*.json $res/*.log "$OUT/" 2>/dev/null || echo "the load has not written its results yet: wait again"
    tail -60 $res/load.log
    ;;
esac
