#!/bin/sh
# include_graph.sh — the include graph of src/ between layers, and a check that no arrow goes
# from a lower layer to a higher one. Prints "from -> to (count)" lines; exits 1 on an upward
# arrow. Layers, low to high (docs/architecture.md):
#   0 base   1 io tokenizer sample ops   2 kv model   3 backend net   4 context   5 method   6 eval
cd "$(dirname "$0")/.." || exit 2
level() {
    case "$1" in
    base) echo 0 ;; io | tokenizer | sample | ops) echo 1 ;; kv | model) echo 2 ;; backend | net) echo 3 ;;
    context) echo 4 ;; method) echo 5 ;; eval) echo 6 ;; *) echo 9 ;;
    esac
}
bad=0
edges=$(grep -rHo '#include "[a-z_]*/[a-z_./]*"' src | sed 's#^src/\([a-z_]*\)/[^:]*:\#include "\([a-z_]*\)/.*#\1 \2#' |
    awk '$1 != $2' | sort | uniq -c)
echo "$edges" | while read -r n from to; do
    [ -z "$from" ] && continue
    lf=$(level "$from") lt=$(level "$to")
    mark=""
    [ "$lt" -gt "$lf" ] && mark="  <-- UPWARD"
    echo "$from($lf) -> $to($lt) ($n)$mark"
done
up=$(echo "$edges" | while read -r n from to; do
    [ -n "$from" ] && [ "$(level "$to")" -gt "$(level "$from")" ] && echo "$from -> $to"
done)
if [ -n "$up" ]; then
    echo "upward arrows found"
    exit 1
fi
echo "no upward arrows"
