#!/bin/bash
# Steady-state cost of one augmentation vs decoding, GPU and CPU of the GPU machine, one process at
# a time. The coprocessor here is kvt-l's own weights with the trained soft embeddings and
# augment.json (models/aug-kvt-l-nN): the same shapes, hence the same work, as the trained one.
# ppl --augment-every 64 on 4 windows (124 augmentations, mean) and run's decode rate.
#   bash .dev-13c/gpu_cost.sh      (.dev-13c carried: pack.tar.xz, kvtl.tar.xz, corpus.val.txt.xz)
D=$PWD/.dev-13c; K=/tmp/k13c; R=$K/r3
rm -rf $K; mkdir -p $K/p $K/models $K/data $R
tar xJf $D/pack.tar.xz -C $K/p && tar xJf $D/kvtl.tar.xz -C $K/models && cp $D/corpus.val.txt.xz $K/data/ || exit 1
export LD_LIBRARY_PATH=$K/p/lib OMP_WAIT_POLICY=passive
B=$K/p/bin/slimkv
for n in 16 8; do
  mkdir -p $K/id$n && ln -s $K/models/kvt-l/* $K/id$n/ && cp models/aug-kvt-l-n$n/augment.json models/aug-kvt-l-n$n/soft.safetensors $K/id$n/
done
xz -dc $K/data/corpus.val.txt.xz | head -c 4000 | tr -d '\036' > $K/prompt4000.txt
for be in "cuda 1 4" "cpu 8 1"; do set -- $be
  for n in 16 8; do
    $B ppl -m $K/models/kvt-l -f $K/data/corpus.val.txt.xz -w $3 -q -t $2 --backend $1 --augment $K/id$n --augment-every 64 \
      -o $R/ppl-$1-n$n.json > /dev/null
    grep -o '"augment_ms_mean.*seconds": [0-9.]*' $R/ppl-$1-n$n.json | sed "s/^/$1 n$n: /"
  done
  for rep in 1 2; do
    $B run -m $K/models/kvt-l -f $K/prompt4000.txt -n 129 --temp 0 --ignore-eos --backend $1 -t $2 --json 2>&1 >/dev/null |
      grep -E "prompt" | sed "s/^/$1 decode rep $rep: /"
  done
done 2>&1 | tee $R/cost.txt
lscpu | grep "Model name" >> $R/cost.txt
tar cJf $OUT/r3.tar.xz -C $K r3
