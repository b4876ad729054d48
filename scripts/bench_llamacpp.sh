#!/usr/bin/env bash
# slimkv vs llama.cpp on the same GGUF files, side by side: pp512 and tg128 (depth 0) at 1 and 2
# threads, the two engines alternated run by run (the machine is shared: the load average is
# recorded before and after every run), the bandwidth bound beside each tg (slimkv bench's copy
# and read bounds: bandwidth / bytes one decode step reads).
#
#   scripts/bench_llamacpp.sh [--build] [-r REPS] [-o DIR] [MODEL.gguf ...]
#
# --build: llama.cpp from source, today's PyPI sdist of llama-cpp-python (which vendors
# llama.cpp; pip download --no-deps --no-binary :all:), CPU only, into $LLAMA_DIR
# (default /tmp/skv-llamacpp). LLAMA_BENCH overrides the llama-bench binary.
# Default models: models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf and
# models/smollm2-135m-instruct-q4_1.gguf (scripts/get-models.sh). Default output: a new
# results/llamacpp-<time>/ (runs/*.json from both engines, summary.md, summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=2 OUT="" BUILD=0 MODELS=()
while [ $# -gt 0 ]; do
    case $1 in
    --build) BUILD=1 ;;
    -r) REPS=$2; shift ;;
    -o) OUT=$2; shift ;;
    *) MODELS+=("$1") ;;
    esac
    shift
done
[ ${#MODELS[@]} -gt 0 ] || MODELS=(models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf models/smollm2-135m-instruct-q4_1.gguf)
LLAMA_DIR=${LLAMA_DIR:-/tmp/skv-llamacpp}
if [ "$BUILD" = 1 ]; then
    mkdir -p "$LLAMA_DIR" && cd "$LLAMA_DIR"
    pip download --no-deps --no-binary :all: -q -d . llama-cpp-python
    tar xzf llama_cpp_python-*.tar.gz
    src=$(ls -d llama_cpp_python-*/vendor/llama.cpp | head -1)
    # the host's AVX-512 / VNNI kernels, without AMX: its tiles crash llama-bench in this VM
    # (SIGSEGV in ggml_backend_amx_mul_mat), so -march=native (which turns AMX on) is not used
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON \
        -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >/dev/null
    cmake --build "$src/build" -j2 --target llama-bench
    cd - >/dev/null
fi
LLAMA_BENCH=${LLAMA_BENCH:-$(ls "$LLAMA_DIR"/llama_cpp_python-*/vendor/llama.cpp/build/bin/llama-bench 2>/dev/null | head -1 || true)}
[ -x "$LLAMA_BENCH" ] || { echo "bench_llamacpp: no llama-bench (run with --build, or set LLAMA_BENCH)" >&2; exit 1; }
[ -x build/slimkv ] || make -j2 build/slimkv
OUT=${OUT:-results/llamacpp-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/runs"
export OMP_WAIT_POLICY=passive
LLAMA_COMMIT=$(cd "$(dirname "$LLAMA_BENCH")/../.." && git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
echo "llama.cpp $LLAMA_COMMIT ($LLAMA_BENCH); slimkv $(git rev-parse --short=12 HEAD); $(nproc) cores; reps $REPS" | tee "$OUT/about.txt"
load() { cut -d' ' -f1 /proc/loadavg; }
for m in "${MODELS[@]}"; do
    [ -f "$m" ] || { echo "bench_llamacpp: $m absent (scripts/get-models.sh)" >&2; exit 1; }
    b=$(basename "$m" .gguf)
    for t in 1 2; do
        for r in $(seq 1 "$REPS"); do
            l0=$(load)
            "$LLAMA_BENCH" -m "$m" -p 512 -n 128 -t "$t" -r 1 -o json > "$OUT/runs/llamacpp-$b-t$t-r$r.json" 2>/dev/null
            l1=$(load)
            build/slimkv bench -m "$m" -t "$t" -r 1 --pp 512 --tg 128 --depths 0 -o "$OUT/runs/slimkv-$b-t$t-r$r.json" >/dev/null
            l2=$(load)
            echo "$b t$t rep $r: load $l0 (llama.cpp) $l1 (slimkv) $l2" | tee -a "$OUT/load.txt"
        done
    done
done
python3 - "$OUT" <<'EOF'
import glob, json, os, re, statistics as S, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
    eng, model, t, r = re.match(r"(llamacpp|slimkv)-(.+)-t(\d)-r(\d+)\.json", os.path.basename(f)).groups()
    j = json.load(open(f))
    key = (model, int(t))
    d = rows.setdefault(key, {})
    if eng == "llamacpp":
        for e in j:
            test = "pp512" if e["n_prompt"] > 0 else "tg128"
            d.setdefault(("llamacpp", test), []).append(e["avg_ts"])
    else:
        for e in j["results"]:
            test = "pp512" if e["test"].startswith("pp") else "tg128"
            d.setdefault(("slimkv", test), []).append(e["tps_mean"])
            if test == "tg128":
                d["bound"] = (e["read_bound_tps"], e["copy_bound_tps"])
lines = ["| model | threads | test | llama.cpp tok/s | slimkv tok/s | slimkv / llama.cpp | read / copy bound tok/s |", "|---|---|---|---|---|---|---|"]
summ = []
for (model, t), d in sorted(rows.items()):
    for test in ("pp512", "tg128"):
        a, b = d.get(("llamacpp", test), []), d.get(("slimkv", test), [])
        if not a or not b:
            continue
        ma, mb = S.mean(a), S.mean(b)
        bound = "%.1f / %.1f" % d["bound"] if test == "tg128" and "bound" in d else ""
        lines.append("| %s | %d | %s | %.1f (%s) | %.1f (%s) | %.2fx | %s |" % (model, t, test, ma, ", ".join("%.1f" % x for x in a),
                     mb, ", ".join("%.1f" % x for x in b), mb / ma, bound))
        summ.append({"model": model, "threads": t, "test": test, "llamacpp": a, "slimkv": b, "ratio": mb / ma})
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
json.dump(summ, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("\n".join(lines))
EOF
echo "written to $OUT"
