#!/bin/bash
# Lead's last H200 call, session 5: the GPU tests (all cuda areas) of main after the KIVI test's bound.
set -u
D=.dev-final; R=$PWD; T0=$(date +%s)
mkdir -p $D/p /tmp/sh/models /tmp/sh/data
tar xJf $D/pack.tar.xz -C $D/p && export LD_LIBRARY_PATH=$R/$D/p/lib OMP_WAIT_POLICY=passive
B=$R/$D/p/bin
tar xJf $D/kvtl.tar.xz -C /tmp/sh/models && ln -sfn $R/models/kvt-s /tmp/sh/models/kvt-s
cp $D/corpus.val.txt.xz /tmp/sh/data/ && xz -dc $D/tasks.val.jsonl.xz > /tmp/sh/data/tasks.val.jsonl
{ cat $D/COMMIT; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > $OUT/machine.txt 2>&1
SKV_SHARED=/tmp/sh SKV_CLI=$B/slimkv timeout 130 stdbuf -oL $B/skv_tests cuda > $OUT/tests.log 2>&1
echo "tests rc $? $(( $(date +%s) - T0 )) s" >> $OUT/tests.log
grep -E "^(ok|FAIL|skip)|passed|rc " $OUT/tests.log | cut -c1-200
grep -E "int4 .*stored rows|int8 .*stored rows|direct|CLI" $OUT/tests.log | cut -c1-200
