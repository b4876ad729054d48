#!/usr/bin/env python3
"""Table and plot data of issue 12's CPU results (bench/lckv/cpu/*.json, *.txt) -> stdout
(markdown) and bench/lckv/ppl_vs_kv.dat (for plot.gp). KV bytes per token in bf16 terms (the
CPU runs store f32, twice that): LCKV from its cache layers, MiniCache from the bytes the run
accounted at the end of each window."""
import json, os

D = os.path.join(os.path.dirname(__file__), "cpu")
LIMIT = 3  # eval rows per task compared
HD, KVH = 64, 2
rows = []  # (name, kv_bytes_per_token_bf16, ppl, se, kl)
for name, f, cl in [("standard (lckv-std)", "ppl-std.json", 10), ("LCKV w=2 (lckv-w2)", "ppl-w2.json", 3),
                    ("LCKV w=4 (lckv-w4)", "ppl-w4.json", 5)]:
    j = json.load(open(os.path.join(D, f)))
    rows.append((name, cl * KVH * HD * 2 * 2, j["ppl"], j["ppl_se"], None, j["windows"]))
for name, f in [("MiniCache on lckv-std, groups 0:1:2,3:4:5,6:7:8:9", "ppl-mc-w2bytes.json"),
                ("MiniCache on lckv-std, pairs 0:1,...,8:9", "ppl-mc-w4bytes.json")]:
    p = os.path.join(D, f)
    if not os.path.exists(p):
        continue
    j = json.load(open(p))
    rows.append((name, j["kv_bytes_mean"] / j["window_tokens"] / 2, j["ppl"], j["ppl_se"], j["kl_mean"], j["windows"]))
print("| model / method | KV bytes per token (bf16) | of standard | val ppl (%d windows) | KL to full |" % rows[0][5])
print("|---|---|---|---|---|")
for n, b, p, se, kl, w in rows:
    print("| %s | %.0f | %.1f %% | %.3f ± %.3f | %s |" % (n, b, 100 * b / rows[0][1], p, se, "%.3f" % kl if kl is not None else "-"))
with open(os.path.join(os.path.dirname(__file__), "ppl_vs_kv.dat"), "w") as f:
    for n, b, p, se, kl, w in rows:
        f.write('%.1f %.4f %.4f "%s"\n' % (b, p, se, n.split(" (")[0].split(",")[0]))
# task scores
tasks = ["dictqa", "macroqa", "passkey", "kvrecall", "linecomp"]
ev = [("standard", "eval-std.jsonl"), ("LCKV w=2", "eval-w2.jsonl"), ("LCKV w=4", "eval-w4.jsonl"),
      ("MiniCache @ w=2 bytes", "eval-mc-w2bytes.jsonl"), ("MiniCache @ w=4 bytes", "eval-mc-w4bytes.jsonl")]
out = []
for n, f in ev:
    p = os.path.join(D, f)
    if not os.path.exists(p):
        continue
    s, c = {}, {}
    for line in open(p):
        r = json.loads(line)
        if r["index"] >= LIMIT:  # the same rows for every model (eval-std.jsonl holds 8 per task)
            continue
        t = r.get("task")
        s[t] = s.get(t, 0) + float(r.get("score", 0))
        c[t] = c.get(t, 0) + 1
    out.append((n, {t: s[t] / c[t] for t in s}, c))
if out:
    print()
    print("| model / method | " + " | ".join(tasks) + " | rows per task |")
    print("|---|" + "---|" * (len(tasks) + 1))
    for n, m, c in out:
        print("| %s | " % n + " | ".join("%.3f" % m[t] if t in m else "-" for t in tasks) + " | %d |" % max(c.values()))
