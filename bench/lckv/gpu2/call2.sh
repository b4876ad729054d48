#!/bin/sh
# call 2 of 2 (carried in .dev-i12b: the rest of lckv-w2 and lckv-w4): the w2 and w4 GPU jobs, the
# GPU tests of the trained models (all three present), lckv-std's jobs again if call 1's did not
# survive; then stop the MiniCache blocks (their finished blocks are kept) and return everything.
# Usage: sh call2.sh SECONDS (the most the jobs may take)
D=$PWD/.dev-i12b T=/tmp/i12 LIM=${1:-150}
t0=$(date +%s)
export LD_LIBRARY_PATH=$T/p/lib OMP_WAIT_POLICY=passive
cd $T || exit 1
cat w2a.part $D/w2b.part | xz -dc > w2.sh && python3 bshuf.py join w2.sh models/lckv-w2/model.safetensors && rm w2.sh
xz -dc $D/w4.sh.xz > w4.sh && python3 bshuf.py join w4.sh models/lckv-w4/model.safetensors && rm w4.sh
sha256sum models/lckv-*/model.safetensors > out/sha.txt
echo "std jobs: $(ls out/done-std 2>/dev/null) $(pgrep -g $(cat jobs-std.pid) | wc -l) processes; mc: $(ls out/mc | wc -l) blocks" | tee out/state2.txt
if [ ! -f out/done-std ] && ! kill -0 $(cat jobs-std.pid) 2>/dev/null; then
  setsid sh jobs.sh std > out/jobs-std2.log 2>&1 < /dev/null & echo $! > jobs-std.pid; fi
if ! kill -0 $(cat mc.pid) 2>/dev/null; then setsid nohup sh mc.sh > out/mc2.log 2>&1 < /dev/null & echo $! > mc.pid; fi
setsid sh jobs.sh w2 > out/jobs-w2.log 2>&1 < /dev/null & echo $! > jobs-w2.pid
setsid sh jobs.sh w4 > out/jobs-w4.log 2>&1 < /dev/null & echo $! > jobs-w4.pid
mkdir -p sh && ln -sf /tmp/i12 sh/data 2>/dev/null
SKV_SHARED=$T/sh SKV_CLI=$T/p/bin/slimkv timeout 90 p/bin/skv_tests lckv/cuda > out/tests-lckv-cuda.txt 2>&1
echo "tests rc $?" >> out/tests-lckv-cuda.txt
while [ $(( $(date +%s) - t0 )) -lt $LIM ] && ! { [ -f out/done-std ] && [ -f out/done-w2 ] && [ -f out/done-w4 ]; }; do sleep 1; done
echo "waited $(( $(date +%s) - t0 )) s; done: $(ls out/done-* | tr '\n' ' ')" | tee -a out/state2.txt
for p in mc jobs-std jobs-w2 jobs-w4; do kill -- -$(cat $p.pid) 2>/dev/null; done
sleep 1
tar czf $OUT/res.tgz out
tail -4 out/tests-lckv-cuda.txt; cat out/ppl-*-cuda.txt; ls out/mc | wc -l
