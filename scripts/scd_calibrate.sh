#!/usr/bin/env bash
# scd_calibrate.sh — regenerate the SCD maps kvt-l -> kvt-l-qa (too large to commit, ~25 MB):
# calibration data from 200 training prompts (scd-dump), the fit (train/scd_calibrate.py:
# ranks by 99 % of the consumer's energy for K and V, patch codes of rank 128, MLP aligner),
# the patch-layer ranking on 24 held-out training prompts (scd-rank), merged into the file.
#   scripts/scd_calibrate.sh [OUT_DIR]     (default models/scd; about 30 min on 1 core)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/scd}
SH=${SKV_SHARED:-../shared}
SKV=${SKV_CLI:-build/slimkv}
WORK=${TMPDIR:-/tmp}/scd-calib.$$
mkdir -p "$OUT" "$WORK"
trap 'rm -rf "$WORK"' EXIT
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MAPS="$OUT/kvt-l-to-kvt-l-qa.safetensors"
"$SKV" scd-dump -m "$SH/models/kvt-l" --consumer "$SH/models/kvt-l-qa" -f "$SH/data/corpus.train.txt.xz" \
    -n 200 --rows 64 -t 1 -o "$WORK/calib.st"
python3 train/scd_calibrate.py --check-engine "$WORK/calib.st" --model "$SH/models/kvt-l"
python3 train/scd_calibrate.py --dump "$WORK/calib.st" --out "$MAPS" --rank-h 128 --steps 1000
"$SKV" scd-rank -m "$SH/models/kvt-l" --consumer "$SH/models/kvt-l-qa" --maps "$MAPS" \
    -f "$SH/data/corpus.train.txt.xz" -t 1 -o "$OUT/rank.json"
python3 train/scd_calibrate.py --set-rank "$MAPS" --rank-json "$OUT/rank.json"
sha256sum "$MAPS"
