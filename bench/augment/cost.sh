#!/bin/bash
# Cost of one augmentation (coprocessor pass over the cache + the base consuming the latents) vs
# decoding N_L tokens, on the CPU, kvt-l. Prompts: the first B bytes of the val corpus.
# Run from the repository root: bench/augment/cost.sh > bench/augment/cost-cpu-t1.txt
S=${SKV_SHARED:-../shared}; BIN=${SKV_BIN:-./build/slimkv}; T=${THREADS:-1}
for bytes in 1200 4000; do
  xz -dc $S/data/corpus.val.txt.xz | head -c $bytes | tr -d '\036' > /tmp/aug_prompt_$bytes.txt
  for aug in aug-kvt-l-n16 aug-kvt-l-n8; do
    for rep in 1 2 3; do
      echo "== prompt $bytes bytes, $aug, rep $rep"
      OMP_WAIT_POLICY=passive $BIN run -m $S/models/kvt-l -f /tmp/aug_prompt_$bytes.txt -n 17 --temp 0 --ignore-eos \
        --augment models/$aug -t $T --json 2>&1 >/dev/null | grep -E "augmentation|prompt"
    done
  done
done
