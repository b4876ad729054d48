#!/bin/sh
# call 1 of 2 (carried in .dev-i12 with the pack, data, lckv-std and the first part of lckv-w2):
# unpack into /tmp/i12, start lckv-std's GPU jobs and the MiniCache CPU blocks detached (setsid)
# and return; call 2 brings the rest and collects.
D=$PWD/.dev-i12 T=/tmp/i12
mkdir -p $T/p $T/out $T/models $T/sh
tar xJf $D/pack.tar.xz -C $T/p
cp $D/corpus.val.txt.xz $D/run_blocks.sh $D/bshuf.py $D/jobs.sh $D/mc.sh $D/w2a.part $T/
xz -dc $D/tasks.val.jsonl.xz > $T/tasks.val.jsonl
for m in std w2 w4; do cp -r models/lckv-$m $T/models/; rm -f $T/models/lckv-$m/model.safetensors; done
xz -dc $D/std.sh.xz > $T/std.sh && python3 $T/bshuf.py join $T/std.sh $T/models/lckv-std/model.safetensors && rm $T/std.sh
sha256sum $T/models/lckv-std/model.safetensors > $T/out/sha-std.txt
export LD_LIBRARY_PATH=$T/p/lib
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $T/out/gpu.txt
nproc >> $T/out/gpu.txt; lscpu | grep "Model name" >> $T/out/gpu.txt
setsid nohup sh $T/jobs.sh std > $T/out/jobs-std.log 2>&1 < /dev/null &
echo $! > $T/jobs-std.pid
setsid nohup sh $T/mc.sh > $T/out/mc.log 2>&1 < /dev/null &
echo $! > $T/mc.pid
sleep 3
cat $T/out/gpu.txt $T/out/sha-std.txt; ps -eo pid,pgid,etime,args | grep -c "slimkv"
