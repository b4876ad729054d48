#!/bin/sh
# mc.sh: on the GPU machine's CPU (CPU backend), MiniCache blocks of 5 windows from the top
# (195 down) of the configs of ../mc/run_blocks.sh (A and C 4 threads each, B 2), niced below
# the GPU jobs, while those run; the local machine walks up from window 0 (pool.py pools them).
cd /tmp/i12 || exit 1
VAL=corpus.val.txt.xz nice -n 10 sh /tmp/i12/run_blocks.sh /tmp/i12/p/bin/slimkv out/mc 4 195 0 -5 A &
VAL=corpus.val.txt.xz nice -n 10 sh /tmp/i12/run_blocks.sh /tmp/i12/p/bin/slimkv out/mc 4 195 0 -5 C &
VAL=corpus.val.txt.xz nice -n 10 sh /tmp/i12/run_blocks.sh /tmp/i12/p/bin/slimkv out/mc 2 195 0 -5 B &
wait
