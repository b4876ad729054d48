#!/usr/bin/env python3
"""sweep_cut.py — the results of a sweep stopped early (rows.jsonl is flushed row by row), cut
to the same rows for every task and policy, as the sweep itself would have written them.

    scripts/sweep_cut.py DIR [--model NAME]

Reads DIR/rows.jsonl (or rows.jsonl.xz): keeps, per task, the row indices 0..N-1 where N is the
smallest count of rows every task finished with every configuration; writes DIR/sweep.csv (the
columns `slimkv sweep` writes: model, policy, budget, task, score, kv_bytes, kl, rows, kv_frac),
DIR/<task>.png (score against budget, gnuplot, as the sweep plots) and DIR/kl.png (mean KL to the
full cache against budget over all tasks), and prints a markdown table of scores and KL.
"""
import argparse
import collections
import json
import lzma
import os
import subprocess
import sys


def load_rows(d):
    p = os.path.join(d, "rows.jsonl")
    if os.path.exists(p):
        f = open(p)
    elif os.path.exists(p + ".xz"):
        f = lzma.open(p + ".xz", "rt")
    else:
        sys.exit(f"sweep_cut: {p}(.xz): not found")
    lines = [l for l in f.read().split("\n") if l.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # only the last line may be cut by the stop
            if i + 1 < len(lines):
                sys.exit(f"sweep_cut: {p}: line {i + 1} is not JSON")
    return rows


def gp_plot(path, title, ylabel, yrange, series, refs):
    """series: {label: [(budget, y)]}; refs: {label: y} (horizontal lines)"""
    cmds = [f"set terminal pngcairo size 900,560 font 'sans,11' noenhanced", f"set output '{path}'", f"set title '{title}'",
            "set xlabel 'budget (fraction of prompt tokens kept per KV head)'", f"set ylabel '{ylabel}'",
            "set key outside right", "set grid", "set logscale x 2", "set xrange [0.04:0.5]",
            "set xtics (0.05, 0.1, 0.2, 0.4)"]
    if yrange:
        cmds.append(f"set yrange [{yrange}]")
    plots = [f"'-' using 1:2 with linespoints lw 2 title '{k}'" for k in series]
    plots += [f"{v:.6f} with lines dt {2 if k == 'full' else 3} lw 2 title '{k} ({v:.3f})'" for k, v in refs.items()]
    data = []
    for pts in series.values():
        data += [f"{b} {y:.6f}" for b, y in sorted(pts)] + ["e"]
    script = "\n".join(cmds + ["plot " + ", ".join(plots)] + data) + "\n"
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--model", default="model")
    a = ap.parse_args()
    rows = load_rows(a.dir)
    cfgs = sorted({(r["policy"], r["budget"]) for r in rows}, key=lambda c: (c[0] != "full", c[0], c[1]))
    by = collections.defaultdict(dict)  # (task, index) -> {cfg: row}
    for r in rows:
        by[(r["task"], r["index"])][(r["policy"], r["budget"])] = r
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    n = min(sum(1 for (t, i), v in by.items() if t == task and len(v) == len(cfgs)) for task in tasks)
    for task in tasks:  # the complete rows must be 0..n-1 (the sweep runs rows in file order)
        for i in range(n):
            if len(by.get((task, i), {})) != len(cfgs):
                sys.exit(f"sweep_cut: {task} row {i} incomplete while {n} rows per task are complete")
    agg = {}
    for task in tasks:
        for c in cfgs:
            rs = [by[(task, i)][c] for i in range(n)]
            agg[(task, c)] = (sum(r["score"] for r in rs) / n, sum(r["kv_bytes"] for r in rs) / n,
                              sum(r["kl"] for r in rs) / n)
    with open(os.path.join(a.dir, "sweep.csv"), "w") as f:
        f.write("model,policy,budget,task,score,kv_bytes,kl,rows,kv_frac\n")
        for task in tasks:
            full_kv = agg[(task, ("full", 1))][1]
            for c in cfgs:
                s, kv, kl = agg[(task, c)]
                f.write(f"{a.model},{c[0]},{c[1]:g},{task},{s:.6f},{kv:.0f},{kl:.6g},{n},{kv / full_kv:.4f}\n")
    budgeted = [c for c in cfgs if c[0] not in ("full",) and not c[0].startswith("quant")]
    pols = list(dict.fromkeys(c[0] for c in budgeted))
    for task in tasks:
        series = {p: [(c[1], agg[(task, c)][0]) for c in budgeted if c[0] == p] for p in pols}
        refs = {c[0]: agg[(task, c)][0] for c in cfgs if c not in budgeted}
        gp_plot(os.path.join(a.dir, f"{task}.png"), f"{a.model}: {task}, score against KV budget ({n} rows)", "score",
                "0:1.05", series, refs)
    kl = {c: sum(agg[(t, c)][2] for t in tasks) / len(tasks) for c in cfgs}
    gp_plot(os.path.join(a.dir, "kl.png"), f"{a.model}: KL to the full cache, mean over tasks ({n} rows per task)",
            "KL (nats per generated token)", None, {p: [(c[1], kl[c]) for c in budgeted if c[0] == p] for p in pols},
            {c[0]: kl[c] for c in cfgs if c not in budgeted and c[0] != "full"})
    print(f"{n} rows per task ({', '.join(tasks)}), {len(cfgs)} configurations\n")
    print("| policy | budget | " + " | ".join(tasks) + " | mean KL |")
    print("|---|---|" + "---|" * (len(tasks) + 1))
    for c in cfgs:
        print(f"| {c[0]} | {c[1]:g} | " + " | ".join(f"{agg[(t, c)][0]:.3f}" for t in tasks) + f" | {kl[c]:.4f} |")


if __name__ == "__main__":
    main()
