#!/bin/sh
# get-weights.sh — put the trained weights that live on the repository's `weights` branch
# (LCKV models of issue 12; coprocessors of issue 13) into the checkout, as ignored files.
# They are kept off main so that the checkout stays small (the GPU machine takes at most
# 64 MiB of working tree per call). Usage: scripts/get-weights.sh [PATH-PREFIX]
set -e
cd "$(dirname "$0")/.."
ref=weights
git rev-parse -q --verify "$ref^{commit}" >/dev/null 2>&1 || ref=origin/weights
if ! git rev-parse -q --verify "$ref^{commit}" >/dev/null 2>&1; then
    echo "get-weights.sh: no 'weights' branch in this repository (git fetch origin weights)" >&2
    exit 1
fi
git ls-tree -r --name-only "$ref" -- "${1:-.}" | while read -r f; do
    if [ -f "$f" ] && [ "$(git hash-object "$f")" = "$(git rev-parse "$ref:$f")" ]; then
        echo "ok       $f"
        continue
    fi
    mkdir -p "$(dirname "$f")"
    git cat-file blob "$ref:$f" > "$f.tmp" && mv "$f.tmp" "$f"
    echo "written  $f"
done
