#!/usr/bin/env python3
"""The README table and plot data of issue 12's final results -> stdout (markdown) and
bench/lckv/ppl_vs_kv.dat (plot.gp):
  gpu2/out/ppl-{std,w2,w4}-cuda.json   the protocol's 200 val windows on the H200 (CUDA, bf16)
  gpu2/out/eval-{m}-{task}.txt         the val tasks, all rows, on the H200
  mc/pooled.json                       MiniCache on lckv-std (CPU), pooled by mc/pool.py
KV bytes per token in bf16 terms (the CPU cache of the MiniCache runs is f32: half its bytes)."""
import json, os

D = os.path.dirname(os.path.abspath(__file__))
G = os.path.join(D, "gpu2", "out")
HD, KVH, FULL = 64, 2, 10 * 2 * 64 * 2 * 2
TASKS = ["dictqa", "macroqa", "passkey", "kvrecall", "linecomp"]
rows = []  # name, label, bytes, ppl, se, kl, windows, scores, nrows, where, lo, hi, full, ratio

def scores(m):
    sc, n = {}, {}
    for t in TASKS:
        p = os.path.join(G, "eval-%s-%s.txt" % (m, t))
        if os.path.exists(p) and os.path.getsize(p):
            j = json.loads(open(p).read().strip().splitlines()[-1])
            sc[t], n[t] = j["scores"][t], j["rows"]
    return sc, n

for m, name, cl in [("std", "standard (lckv-std)", 10), ("w2", "LCKV w=2 (lckv-w2)", 3), ("w4", "LCKV w=4 (lckv-w4)", 5)]:
    p = os.path.join(G, "ppl-%s-cuda.json" % m)
    j = json.load(open(p)) if os.path.exists(p) else None
    sc, n = scores(m)
    rows.append((name, name.split(" (")[0], cl * KVH * HD * 2 * 2, j and j["ppl"], j and j["ppl_se"], None,
                 j and j["windows"], sc, n, "H200, CUDA", j and j["ppl"] - 1.96 * j["ppl_se"],
                 j and j["ppl"] + 1.96 * j["ppl_se"], None, None))
pp = os.path.join(D, "mc", "pooled.json")
if os.path.exists(pp):
    P = json.load(open(pp))
    for c, name in [("A", "MiniCache g5 at w=2 bytes"), ("B", "MiniCache g9 at w=2 bytes"), ("C", "MiniCache g3 at w=4 bytes")]:
        if c in P:
            r = P[c]
            rows.append((name + " (`" + r["mc_options"][0].replace("--policy minicache ", "") + "`)", name,
                         r["kv_share"] * FULL, r["ppl"], r["ppl_se"], r["kl_mean"], r["windows"], {}, {}, "CPU",
                         r["ppl_ci95_blocks"][0], r["ppl_ci95_blocks"][1], r["ppl_full"],
                         (r["ratio_to_full"],) + tuple(r["ratio_to_full_ci95_blocks"])))
print("| model / method | KV bytes per token (bf16) | of standard | windows | val ppl ± SE (95 % interval) | "
      "full cache, same windows | ratio to full (95 %) | KL to full | where |")
print("|---|---|---|---|---|---|---|---|---|")
for name, lab, b, p, se, kl, w, sc, n, where, lo, hi, full, ratio in rows:
    if not p: continue
    print("| %s | %.1f | %.2f %% | %d | %.4f ± %.4f (%.2f – %.2f) | %s | %s | %s | %s |" % (
        name, b, 100 * b / FULL, w, p, se, lo, hi, "%.4f" % full if full else "-",
        "%.3f (%.3f – %.3f)" % ratio if ratio else "-", "%.3f" % kl if kl is not None else "-", where))
print()
print("| model | " + " | ".join(TASKS) + " | rows per task |")
print("|---|" + "---|" * (len(TASKS) + 1))
for name, lab, b, p, se, kl, w, sc, n, where, lo, hi, full, ratio in rows:
    if sc:
        print("| %s | " % lab + " | ".join("%.3f" % sc[t] if t in sc else "-" for t in TASKS)
              + " | %s |" % "/".join(str(n[t]) for t in TASKS if t in n))
with open(os.path.join(D, "ppl_vs_kv.dat"), "w") as f:
    for name, lab, b, p, se, kl, w, sc, n, where, lo, hi, full, ratio in rows:
        if p:  # MiniCache: the interval of its ratio to the full cache on the same windows (paired)
            if ratio: lo, hi = p * ratio[1] / ratio[0], p * ratio[2] / ratio[0]
            f.write('%.1f %.4f %.4f %.4f "%s"\n' % (b, p, lo, hi, lab))
