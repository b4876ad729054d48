#!/bin/bash
# one GPU call for issue 12 (LCKV): tests, the 8B-shaped throughput, GPU ppl of lckv-w2
D=.dev-lckv
mkdir -p $D/p && tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$PWD/$D/p/lib
B=$D/p/bin
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
xz -dc $D/w2.st.xz > models/lckv-w2/model.safetensors
(time $B/slimkv mkmodel --shape llama3-8b -o /tmp/std) > $OUT/mk.txt 2>&1 &
P1=$!
(time $B/slimkv mkmodel --shape llama3-8b --layer-types w2 -o /tmp/w2) >> $OUT/mk.txt 2>&1 &
P2=$!
mkdir -p /tmp/sh/models && ln -s $PWD/models/kvt-s /tmp/sh/models/kvt-s
SKV_SHARED=/tmp/sh SKV_CLI=$B/slimkv timeout 60 $B/skv_tests cuda > $OUT/tests.txt 2>&1
wait $P1 $P2
for m in w2 std; do
  timeout 70 $B/slimkv bench -m /tmp/$m --backend cuda --e2e 2048+2048 --steps 16 --no-check -o $OUT/e2e-$m.json > $OUT/e2e-$m.txt 2>&1
done
timeout 40 $B/slimkv ppl -m models/lckv-w2 -f $D/corpus.val.txt.xz --chunk 2048 --backend cuda -q -o $OUT/ppl-w2-cuda.json > $OUT/ppl.txt 2>&1
tail -3 $OUT/tests.txt; cat $OUT/mk.txt $OUT/e2e-*.txt $OUT/ppl.txt
