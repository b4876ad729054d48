#!/usr/bin/env bash
# kvformat_bench.sh — decode speed of each KV cache format (f32, bf16, f16, int8, int4) at one
# depth, main's build ("before") against this checkout's ("after"), alternated in one command.
#
#   scripts/kvformat_bench.sh [MODEL_DIR] [OUT_DIR]
#   env: REPS (5) invocations per (build, threads), ROUNDS (3) timed rounds of N_GEN steps per
#        invocation and format, DEPTH (1984), N_GEN (64), THREADS ("2 1"), BASE (main),
#        RUN_PREFIX ("") a command prefix for the timed runs only, e.g. "chrt -f 10" (root): the
#        runs then preempt the other jobs of a shared machine, as if it were quiet
#
# main's library is built from `git archive $BASE` in a temporary directory; one driver,
# scripts/kvformat_bench.c (slimkv.h only), is linked against each library. Per rep, per thread
# count, the two builds run one after the other (the order flips every rep), each prefilling
# DEPTH tokens into one context per format and then timing the formats round by round (each in
# turn). The load average is recorded before each run (the machine is shared). Results:
# OUT_DIR/raw.txt (every sample), OUT_DIR/summary.json and summary.md (medians, paired ratios,
# bytes per step, and the decode logits of both builds compared: 2 threads, first round).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/models/kvt-l}
OUT=${2:-bench/kvformat}
REPS=${REPS:-5} ROUNDS=${ROUNDS:-3} DEPTH=${DEPTH:-1984} N_GEN=${N_GEN:-64} THREADS=${THREADS:-"2 1"} BASE=${BASE:-main}
export RUN_PREFIX=${RUN_PREFIX:-}
FORMATS="0 1 4 2 3" # f32 bf16 f16 int8 int4 (skv_kv_format numbers)
export OMP_WAIT_POLICY=passive

TMP=$(mktemp -d /tmp/kvformat.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT" "$TMP/main"
git archive "$BASE" | tar -x -C "$TMP/main"
make -s -C "$TMP/main" -j2 build/libslimkv.a >/dev/null
make -s -j2 build/libslimkv.a >/dev/null
CFL="-std=c11 -D_GNU_SOURCE -O2 -march=native -fopenmp -Iinclude"
LIBS="-L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lcjson -lpcre2-8 -lutf8proc -llzma -lzstd -lm"
cc $CFL -o "$TMP/before" scripts/kvformat_bench.c "$TMP/main/build/libslimkv.a" $LIBS
cc $CFL -o "$TMP/after" scripts/kvformat_bench.c build/libslimkv.a $LIBS

BASE_COMMIT=$(git rev-parse --short=12 "$BASE")
HEAD_COMMIT=$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src include scripts || echo -dirty)
RAW="$OUT/raw.txt"
{
    echo "# scripts/kvformat_bench.sh $MODEL $OUT  REPS=$REPS ROUNDS=$ROUNDS DEPTH=$DEPTH N_GEN=$N_GEN THREADS='$THREADS' RUN_PREFIX='$RUN_PREFIX'"
    echo "# before: $BASE $BASE_COMMIT  after: $HEAD_COMMIT  machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
    echo "# columns: rep threads build loadavg1 format median_tps round_tps..."
} >"$RAW"

# decode logits of both builds (2 threads, first round) for the comparison
KVF_DUMP="$TMP/logits-before" "$TMP/before" "$MODEL" 2 "$DEPTH" "$N_GEN" 1 $FORMATS >/dev/null
KVF_DUMP="$TMP/logits-after" "$TMP/after" "$MODEL" 2 "$DEPTH" "$N_GEN" 1 $FORMATS >/dev/null

for rep in $(seq 1 "$REPS"); do
    for t in $THREADS; do
        order="before after"
        if [ $((rep % 2)) -eq 0 ]; then order="after before"; fi
        for b in $order; do
            load=$(cut -d' ' -f1 /proc/loadavg)
            $RUN_PREFIX "$TMP/$b" "$MODEL" "$t" "$DEPTH" "$N_GEN" "$ROUNDS" $FORMATS | while read -r line; do
                echo "$rep $t $b $load $line" >>"$RAW"
            done
            echo "rep $rep threads $t $b done (load $load)" >&2
        done
    done
done

python3 - "$RAW" "$OUT" "$TMP" "$MODEL" "$DEPTH" "$N_GEN" "$BASE_COMMIT" "$HEAD_COMMIT" <<'EOF'
import json, os, statistics, sys
import numpy as np
raw, out, tmp, model, depth, n_gen, base_c, head_c = sys.argv[1:9]
depth, n_gen = int(depth), int(n_gen)
names = {"0": "f32", "1": "bf16", "4": "f16", "2": "int8", "3": "int4"}
samples, loads, runs = {}, {}, {}
for line in open(raw):
    if line.startswith("#"): continue
    f = line.split()
    rep, t, b, load, fmt = f[:5]
    loads.setdefault(t, []).append(float(load))
    if f[5] == "refused:": continue
    samples.setdefault((t, b, names[fmt]), []).extend(float(x) for x in f[6:])
    runs.setdefault((t, b, rep), {})[names[fmt]] = [float(x) for x in f[6:]]
def paired(t, b, fmt):
    # median over every round of every run of (this format's tok/s / f32's tok/s in the same round)
    r = [x / y for (tt, bb, _), d in runs.items() if tt == t and bb == b and fmt in d and "f32" in d
         for x, y in zip(d[fmt], d["f32"])]
    return statistics.median(r) if r else None
cfg = json.load(open(os.path.join(model, "config.json")))
L, G, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
D, F, V, H = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_attention_heads"]
wbytes = 2 * L * (D * H * hd * 2 + 2 * D * G * hd + 3 * D * F) + 2 * V * D  # bf16, tied head read once
B = 32
per_tok = {  # K + V bytes per token per (layer, KV head), full blocks
    "f32": 2 * hd * 4, "bf16": 2 * hd * 2, "f16": 2 * hd * 2,
    "int8": (2 * hd * 4 + B * hd) / B + (2 * (hd // 32) * 4 * B + B * hd) / B,
    "int4": (2 * hd * 4 + B * hd // 2) / B + (2 * (hd // 32) * 4 * B + B * hd // 2) / B,
}
avg_len = depth + n_gen / 2
res = {"command": f"scripts/kvformat_bench.sh {model} {out}", "run_prefix": os.environ.get("RUN_PREFIX", ""), "before": base_c, "after": head_c,
       "depth": depth, "n_gen": n_gen, "decode_weight_bytes": wbytes, "results": {}, "loadavg": {}}
md = [f"# Decode tokens/s by KV format, {os.path.basename(model.rstrip('/'))}, depth {depth}, {n_gen} steps per round",
      "", f"before = {base_c} (main), after = {head_c}; tok/s: medians over every round of every run; "
      "×f32 (paired): the median over rounds of the format's tok/s over f32's in the same round of the same "
      "process (formats interleave round by round, so load drift cancels)." +
      (f" Timed runs under `{os.environ['RUN_PREFIX']}`." if os.environ.get("RUN_PREFIX") else ""), ""]
for t in sorted({k[0] for k in samples}, reverse=True):
    ld = loads[t]
    res["loadavg"][t] = {"min": min(ld), "median": statistics.median(ld), "max": max(ld)}
    md += [f"## {t} thread(s) (1-min load average during the runs: median {statistics.median(ld):.2f}, range {min(ld):.2f}-{max(ld):.2f})", "",
           "| format | KV MB/step | weights+KV MB/step | byte-bound ratio vs f32 | before tok/s | after tok/s | after/before | before ×f32 (paired) | after ×f32 (paired) | after ×f32(before) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    med = {k: statistics.median(v) for k, v in samples.items()}
    f32b, f32a = med.get((t, "before", "f32")), med.get((t, "after", "f32"))
    for fmt in ["f32", "bf16", "f16", "int8", "int4"]:
        kv = per_tok[fmt] * avg_len * L * G
        bound_ratio = (wbytes + per_tok["f32"] * avg_len * L * G) / (wbytes + kv)
        b, a = med.get((t, "before", fmt)), med.get((t, "after", fmt))
        r = {"kv_bytes_per_step": kv, "byte_bound_ratio_vs_f32": bound_ratio,
             "before_tps": b, "after_tps": a, "n_samples": len(samples.get((t, "after", fmt), [])),
             "after_vs_before": a / b if a and b else None,
             "before_vs_f32_before": b / f32b if b else None,
             "after_vs_f32_after": a / f32a if a else None,
             "before_vs_f32_paired": paired(t, "before", fmt),
             "after_vs_f32_paired": paired(t, "after", fmt),
             "after_vs_f32_before": a / f32b if a else None}
        res["results"][f"t{t}-{fmt}"] = r
        fx = lambda x, p=2: "—" if x is None else f"{x:.{p}f}"
        md.append(f"| {fmt} | {kv / 1e6:.2f} | {(wbytes + kv) / 1e6:.1f} | {bound_ratio:.2f} | {fx(b, 1)} | {fx(a, 1)} | {fx(r['after_vs_before'])} | "
                  f"{fx(r['before_vs_f32_paired'])} | {fx(r['after_vs_f32_paired'])} | {fx(r['after_vs_f32_before'])} |")
    md.append("")
# decode logits: after vs before, and each format vs the f32 cache
lg = {}
for fmt, nm in names.items():
    vals = {}
    for b in ("before", "after"):
        p = f"{tmp}/logits-{b}.{fmt}"
        if os.path.exists(p) and os.path.getsize(p): vals[b] = np.fromfile(p, dtype=np.float32).reshape(-1, V)
    ref = np.fromfile(f"{tmp}/logits-before.0", dtype=np.float32).reshape(-1, V)
    e = {"after_vs_f32_before_max_abs": float(np.abs(vals["after"] - ref).max())}
    if "before" in vals:
        e["bit_identical_to_before"] = bool(np.array_equal(vals["after"].view(np.uint32), vals["before"].view(np.uint32)))
        e["after_vs_before_max_abs"] = float(np.abs(vals["after"] - vals["before"]).max())
        e["argmax_agreement_with_before"] = float((vals["after"].argmax(1) == vals["before"].argmax(1)).mean())
    lg[nm] = e
res["decode_logits"] = lg
md += ["## Decode logits (2 threads, first round: " + f"{n_gen} steps after a {depth}-token prefill)", "",
       "| format | bit-identical to before | max |after − before| | argmax agreement | max |after − f32 cache| |", "|---|---|---|---|---|"]
for nm, e in lg.items():
    md.append(f"| {nm} | {e.get('bit_identical_to_before', '— (new)')} | {e.get('after_vs_before_max_abs', float('nan')):.3g} | "
              f"{e.get('argmax_agreement_with_before', float('nan')):.3f} | {e['after_vs_f32_before_max_abs']:.3g} |")
json.dump(res, open(os.path.join(out, "summary.json"), "w"), indent=1)
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
