#!/bin/sh
# smallkv_diag.sh — why SmallKV loses or wins on kvt-l: the first 40 passkey rows at budget 0.1
# under variants that change one thing at a time (score, matching, draft, split). Writes
# bench/smallkv-diag/results.jsonl: one line per variant with its label, command and result.
set -e
cli=${SLIMKV:-build/slimkv}
sh=../shared
out=bench/smallkv-diag
mkdir -p $out
: > $out/results.jsonl
base="eval -m $sh/models/kvt-l --tasks $sh/data/tasks.val.jsonl --task passkey --limit 40 --budget 0.1 -q -t 2"
run() {
    label=$1
    shift
    res=$($cli $base "$@")
    printf '{"label": "%s", "command": "%s %s %s", "result": %s}\n' "$label" "$cli" "$base" "$*" "$res" >> $out/results.jsonl
    echo "$label: $res"
}
run "full cache" --policy full
run "snapkv" --policy snapkv
run "smallkv (paper: acc score, prefix-128 matching)" --policy smallkv --draft $sh/models/kvt-s
run "smallkv acc, kvt-l guides itself (perfect global view)" --policy smallkv --draft $sh/models/kvt-l
run "smallkv window score, prefix-128 matching" --policy smallkv --draft $sh/models/kvt-s --sk-score window
run "smallkv window score, kvt-l guides itself" --policy smallkv --draft $sh/models/kvt-l --sk-score window
run "smallkv window score, prefix-512 matching" --policy smallkv --draft $sh/models/kvt-s --sk-score window --match-len 512
run "smallkv window score, window matching" --policy smallkv --draft $sh/models/kvt-s --sk-score window --sk-match window
run "smallkv window/window, split 2:1:0 (no marginal)" --policy smallkv --draft $sh/models/kvt-s --sk-score window --sk-match window --sk-split 2:1:0
run "smallkv window/window, split 4:1:0" --policy smallkv --draft $sh/models/kvt-s --sk-score window --sk-match window --sk-split 4:1:0
run "smallkv window/window, paper sum" --policy smallkv --draft $sh/models/kvt-s --sk-score window --sk-match window --sk-paper
