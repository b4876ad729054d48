#!/bin/sh
# mc.sh: on the GPU machine's CPU (CPU backend), MiniCache blocks of 5 windows from the top
# (195 down) of the three configs of ../mc/run_blocks.sh, one process per config, 3 threads
# each, while the GPU jobs run; the local machine walks up from window 0 (pool.py pools them).
cd /tmp/i12 || exit 1
for c in A B C; do
  VAL=corpus.val.txt.xz sh /tmp/i12/run_blocks.sh /tmp/i12/p/bin/slimkv out/mc 3 195 0 -5 $c &
done
wait
