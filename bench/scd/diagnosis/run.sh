#!/usr/bin/env bash
# run.sh — issue 14's quality diagnosis (bench/scd/diagnosis/README.md): per-layer ablations on
# the dictqa val rows with the committed maps, then the quality of full-rank task-format maps (first 39 dictqa rows, the rows of bench/scd/quality-50).
#   bench/scd/diagnosis/run.sh MAPS_FULL     (from the repository root; ~20 min on 1 core)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
SH=${SKV_SHARED:-../shared}
OUT=bench/scd/diagnosis
FULL=${1:?usage: run.sh MAPS_FULL}
C=$(python3 -c "
L=10;c=['oooooooooo','hhhhhhhhhh','wwwwwwwwww','rrrrrrrrrr','pppppppppp','rrrrrrrrrr+16','oooooooooo+16']
for l in range(L): c.append(''.join('r' if i==l else 'o' for i in range(L)))
for l in range(L): c.append(''.join('o' if i==l else 'r' for i in range(L)))
for j in range(1,L): c.append('r'*j+'o'*(L-j))
c += ['oooooooooK','oooooooooV','ooooooooop','ooooooooow','ooooooooom','ppppppoooo','pppppppppo']
print(','.join(c))")
build/slimkv scd-ablate -m "$SH/models/kvt-l" --consumer "$SH/models/kvt-l-qa" --maps models/scd/kvt-l-to-kvt-l-qa.safetensors \
  --tasks "$SH/data/tasks.val.jsonl" --task-names dictqa --limit 50 --mix 0.25 -t 1 --configs "$C" \
  --rows-out $OUT/ablate-rows.jsonl > $OUT/ablate.md 2> $OUT/ablate.log
build/slimkv scd-eval -m "$SH/models/kvt-l" --consumer "$SH/models/kvt-l-qa" --maps "$FULL" \
  --tasks "$SH/data/tasks.val.jsonl" --task-names dictqa --limit 39 --methods oracle,raw,reuse,scd --patch-k 10 -t 1 \
  -o $OUT/quality-full.json --rows-out $OUT/quality-full-rows.jsonl > $OUT/quality-full.md 2> $OUT/quality-full.log
