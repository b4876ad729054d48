#!/bin/sh
# MiniCache on lckv-std at LCKV's KV bytes, the protocol's 200 val windows in blocks (ppl --skip),
# so that runs on several machines (or an interrupted run) pool into one number (pool.py).
#   sh bench/lckv/mc/run_blocks.sh BIN OUTDIR THREADS FIRST LAST STEP [CONFIGS]
# Blocks of 5 windows starting at FIRST, FIRST+STEP, ... up to LAST (STEP < 0 walks down); each
# block runs every config (A B C by default) before the next block.
#   A: --mc-groups g5 --mc-bytes 0.3  (w = 2's bytes; smallest gN from the top that reaches 30 %)
#   B: --mc-groups g9 --mc-bytes 0.3  (w = 2's bytes; layer 0 kept whole, 1..9 one group)
#   C: --mc-groups g3 --mc-bytes 0.5  (w = 4's bytes; smallest gN from the top that reaches 50 %)
BIN=$1 O=$2 T=$3 FIRST=$4 LAST=$5 STEP=$6 CFGS=${7:-"A B C"}
VAL=${VAL:-../shared/data/corpus.val.txt.xz}
export OMP_WAIT_POLICY=passive
mkdir -p $O
s=$FIRST
while { [ $STEP -gt 0 ] && [ $s -le $LAST ]; } || { [ $STEP -lt 0 ] && [ $s -ge $LAST ]; }; do
  for c in $CFGS; do
    case $c in
      A) a="--mc-groups g5 --mc-bytes 0.3";;
      B) a="--mc-groups g9 --mc-bytes 0.3";;
      C) a="--mc-groups g3 --mc-bytes 0.5";;
    esac
    f=$O/$c-$(printf %03d $s).json
    [ -f $f ] && continue
    $BIN ppl -m models/lckv-std -f $VAL --skip $s --windows 5 -t $T -q --policy minicache $a --out $f.tmp > /dev/null \
      && mv $f.tmp $f
  done
  s=$((s + STEP))
done
