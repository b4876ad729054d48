#!/bin/sh
# call 3 (carried in .dev-i12c: the pack, lckv-std, the val corpus): MiniCache blocks on the GPU
# machine's 16 CPU cores, 16 single-thread processes, each taking every 16th entry of a list
# (config B's blocks 45..190 first, then A's and C's from the top down, which the local run walks
# up to), until LIM seconds have passed (a block is cut at the limit and then dropped).
# Usage: sh call3.sh LIM
D=$PWD/.dev-i12c T=/tmp/i12c LIM=${1:-60}
t0=$(date +%s)
mkdir -p $T/p $T/models $T/out
tar xJf $D/pack.tar.xz -C $T/p
cp -r models/lckv-std $T/models/ && rm -f $T/models/lckv-std/model.safetensors
xz -dc $D/std.sh.xz > $T/std.sh && python3 $D/bshuf.py join $T/std.sh $T/models/lckv-std/model.safetensors
sha256sum $T/models/lckv-std/model.safetensors
export LD_LIBRARY_PATH=$T/p/lib OMP_WAIT_POLICY=passive
cd $T
L=""
for s in $(seq 45 5 190); do L="$L B:$s"; done
for s in $(seq 190 -5 75); do L="$L A:$s C:$s"; done
worker() {
  i=0
  for e in $L; do
    i=$((i + 1))
    [ $(( (i - 1) % 16 )) -eq $1 ] || continue
    left=$(( LIM - ($(date +%s) - t0) ))
    [ $left -gt 5 ] || break
    c=${e%:*} s=${e#*:}
    case $c in A) a="--mc-groups g5 --mc-bytes 0.3";; B) a="--mc-groups g9 --mc-bytes 0.3";; C) a="--mc-groups g3 --mc-bytes 0.5";; esac
    timeout $left p/bin/slimkv ppl -m models/lckv-std -f $D/corpus.val.txt.xz --skip $s --windows 5 -t 1 -q \
      --policy minicache $a --out out/$c-$(printf %03d $s).json > /dev/null 2>&1
  done
}
for w in $(seq 0 15); do worker $w & done
wait
tar czf $OUT/mc3.tgz out; ls out | tr '\n' ' '; echo; echo "$(( $(date +%s) - t0 )) s"
