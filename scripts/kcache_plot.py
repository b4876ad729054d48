#!/usr/bin/env python3
"""kcache_plot.py SWEEP_DIR — plots of a kcache sweep (slimkv sweep --policies snapkv,kcache,kcache-exact):
score and KL to the full cache against N (V rows read per KV head and step), one panel per task,
with the full cache and every snapkv budget as horizontal references. Writes
SWEEP_DIR/kcache-score.png and SWEEP_DIR/kcache-kl.png (gnuplot), and prints a markdown table."""
import csv, subprocess, sys, collections

d = sys.argv[1]
rows = list(csv.DictReader(open(f"{d}/sweep.csv")))
tasks = list(dict.fromkeys(r["task"] for r in rows))
model = rows[0]["model"]
S = collections.defaultdict(dict)  # (policy family, x) -> task -> (score, kl)
for r in rows:
    pol = r["policy"]
    if pol.startswith("kcache"):
        fam, n = pol.rsplit("-n", 1)
        S[(fam, int(n))][r["task"]] = (float(r["score"]), float(r["kl"]))
    else:
        S[(pol, float(r["budget"]))][r["task"]] = (float(r["score"]), float(r["kl"]))
fams = ["kcache", "kcache-exact"]
Ns = sorted({k[1] for k in S if k[0] in fams})
refs = [k for k in S if k[0] not in fams]

def plot(idx, what, out, ylabel, logy):
    g = [f"set terminal pngcairo size 1400,800 font 'sans,10'", f"set output '{out}'",
         f"set multiplot layout 2,3 title '{model}: KCache {what} against N (V rows read per KV head and step)'"]
    for t in tasks:
        g += [f"set title '{t}'", "set logscale x 2", "set xtics (16,32,64,128,256)", "set grid",
              f"set xlabel 'N'", f"set ylabel '{ylabel}'", "set key bottom right font ',8'",
              "set logscale y" if logy else "unset logscale y"]
        parts, data = [], []
        for f in fams:
            pts = [(n, S[(f, n)][t][idx]) for n in Ns if t in S[(f, n)]]
            pts = [(n, v) for n, v in pts if v > 0 or not logy]
            if not pts: continue
            parts.append(f"'-' using 1:2 with linespoints lw 2 title '{f}'")
            data.append("\n".join(f"{n} {v}" for n, v in pts) + "\ne")
        if not parts:  # nothing positive to draw on a log scale
            g.append("unset logscale y")
            parts.append("0 notitle")
        for k in refs:
            v = S[k][t][idx]
            if logy and v <= 0: continue
            name = "full" if k[0] == "full" else f"{k[0]} {k[1]:g}"
            parts.append(f"{v} with lines dt {2 if k[0] == 'full' else 3} lw 2 title '{name}'")
        g.append("plot " + ", ".join(parts))
        g += data
    g.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(g) + "\n", text=True, check=True)

plot(0, "task score", f"{d}/kcache-score.png", "score", False)
plot(1, "KL to the full cache", f"{d}/kcache-kl.png", "mean KL", True)
# table: score (KL) per config and task, plus the mean over tasks scoring > 0 with the full cache
live = [t for t in tasks if S[("full", 1.0)][t][0] > 0]
print("| config | " + " | ".join(tasks) + f" | mean of {', '.join(live)} |")
print("|---" * (len(tasks) + 2) + "|")
keys = [("full", 1.0)] + sorted(k for k in refs if k[0] != "full") + [(f, n) for f in fams for n in Ns]
for k in keys:
    name = "full" if k[0] == "full" else (f"{k[0]} {k[1]:g}" if k[0] not in fams else f"{k[0]} N={k[1]}")
    cells = [f"{S[k][t][0]:.3f} ({S[k][t][1]:.3f})" for t in tasks]
    m = sum(S[k][t][0] for t in live) / len(live)
    print(f"| {name} | " + " | ".join(cells) + f" | {m:.3f} |")
