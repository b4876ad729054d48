#!/bin/sh
# serve_load_gpu.sh DEV DURATION — the H200 load run, in one device call (from the repository
# root on the GPU machine, DEV carried): unpack DEV/pack.tar.xz (scripts/devpack.sh), write a
# random-weight Llama-3-8B-shaped model with kvt-s's tokenizer (mkmodel --tokenizer DEV/kvt-s),
# run DEV/scripts/serve_load.py against `slimkv serve --backend cuda` (64 streaming clients,
# full cache: the batched CUDA context) for DURATION seconds, then the offline batched decode
# (slimkv bench --backend cuda, batches 1/16/64 at depth 512) in the same call. Results: $OUT.
set -e
dev=${1:?usage: serve_load_gpu.sh DEV DURATION}
dur=${2:-30}
mkdir -p "$dev/p" && tar xJf "$dev/pack.tar.xz" -C "$dev/p"
export LD_LIBRARY_PATH=$PWD/$dev/p/lib
cli=$PWD/$dev/p/bin/slimkv
t0=$(date +%s)
m=/tmp/m8b
[ -d /dev/shm ] && m=/dev/shm/m8b  # 16 GB: tmpfs is much faster to write than the disk
"$cli" mkmodel --shape llama3-8b -o $m --tokenizer "$dev/kvt-s" 2>&1 | tail -1
echo "mkmodel: $(($(date +%s) - t0)) s"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
SKV_COMMIT=$(cat "$dev/COMMIT" 2>/dev/null) python3 "$dev/scripts/serve_load.py" --backend cuda --cli "$cli" --model $m --corpus "$dev/corpus.val.txt.xz" \
    --clients 64 --parallel 64 --threads 8 --pool 16 --duration "$dur" --policies full \
    --server-args "--ctx 2048 --prefill-chunk 512" \
    --bench-args "--pps 512 -d 512 --batches 1,16,64 --batch-depth 512 --tg 32 -r 2" \
    --out "$OUT/load-h200.json" > "$OUT/load-h200.log" 2>&1 || echo "serve_load.py exit $?"
tail -40 "$OUT/load-h200.log"
echo "total: $(($(date +%s) - t0)) s"
