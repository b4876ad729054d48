#!/bin/bash
# issue 15 (CUDA half), run 2: tests, the 1.5B Q4_K_M decode bench (new GEMV; old GEMV at one depth), ncu of decode steps
R=$PWD; P=$R/.dev-15cu/p; B=$P/bin; export LD_LIBRARY_PATH=$P/lib OMP_WAIT_POLICY=passive
(cd $P && SKV_SHARED=$P/sh timeout 100 $B/skv_tests cuda_qw) > $OUT/tests.txt 2>&1
SKV_SHARED=$P/sh SKV_CLI=$B/slimkv timeout 60 $B/skv_tests "cuda/kvt-s logits" >> $OUT/tests.txt 2>&1
SKV_SHARED=$P/sh SKV_CLI=$B/slimkv timeout 60 $B/skv_tests "cuda/head_dim 128" >> $OUT/tests.txt 2>&1
python3 $P/scripts/mk_gguf_shape.py /tmp/q15.gguf > $OUT/bench.txt 2>&1
timeout 100 $B/slimkv bench -m /tmp/q15.gguf --backend cuda --no-check --pps 512,2048 -d 1024,4096 --tg 128 -r 3 \
  --batches 1,8,32 --batch-depth 512 -o $OUT/bench-qwen1.5b-q4km-cuda.json >> $OUT/bench.txt 2>&1
echo "--- SKV_QGEMV=1 (lane per chunk)" >> $OUT/bench.txt
SKV_QGEMV=1 timeout 60 $B/slimkv bench -m /tmp/q15.gguf --backend cuda --no-check --pps 0 -d 1024 --tg 128 -r 3 \
  --batches 8 --batch-depth 512 -o $OUT/bench-qwen1.5b-q4km-cuda-gemv1.json >> $OUT/bench.txt 2>&1
python3 $P/scripts/mk_gguf_shape.py --layers 3 /tmp/q3.gguf > $OUT/ncu.txt 2>&1
N=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1); echo "ncu: $N" >> $OUT/ncu.txt
[ -n "$N" ] && SKV_CUDA_GRAPHS=0 timeout 60 $N --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
  -c 200 $B/slimkv bench -m /tmp/q3.gguf --backend cuda --no-check --pps 0 -d 16 --tg 4 -r 1 --batches 0 -o /tmp/n.json > $OUT/ncu-decode-q3.csv 2>> $OUT/ncu.txt
echo "ncu rc $?" >> $OUT/ncu.txt
tail -n 8 $OUT/tests.txt; cat $OUT/bench.txt; tail -5 $OUT/ncu.txt; grep -c . $OUT/ncu-decode-q3.csv
