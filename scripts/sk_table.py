#!/usr/bin/env python3
"""SmallKV success table (--tasks=a,b to name the tasks instead): mean score over the tasks that score above zero with a full cache,
per policy and budget, from one or more sweep.csv files (first file wins on duplicates)."""
import csv, sys
from collections import defaultdict
args = sys.argv[1:]
only = None
if args and args[0].startswith("--tasks="):
    only = args.pop(0).split("=", 1)[1].split(",")
rows, seen = [], set()
for path in args:
    for r in csv.DictReader(open(path)):
        k = (r["policy"], r["budget"], r["task"])
        if k not in seen:
            seen.add(k); rows.append(r)
full = {r["task"]: float(r["score"]) for r in rows if r["policy"] == "full"}
tasks = sorted(t for t, s in full.items() if s > 0 and (only is None or t in only))
tab = defaultdict(dict)
kl = defaultdict(dict)
for r in rows:
    if r["task"] in tasks and r["policy"] != "full":
        tab[r["policy"]].setdefault(float(r["budget"]), []).append(float(r["score"]))
        kl[r["policy"]].setdefault(float(r["budget"]), []).append(float(r["kl"]))
budgets = sorted({b for p in tab for b in tab[p]})
print("tasks:", ", ".join(tasks), " full-cache mean %.3f" % (sum(full[t] for t in tasks) / len(tasks)))
print("| policy | " + " | ".join("%g" % b for b in budgets) + " |")
print("|---|" + "---|" * len(budgets))
for p in sorted(tab):
    cells = []
    for b in budgets:
        v = tab[p].get(b)
        cells.append("%.3f (KL %.2f)" % (sum(v) / len(v), sum(kl[p][b]) / len(kl[p][b])) if v and len(v) == len(tasks) else "-")
    print("| %s | %s |" % (p, " | ".join(cells)))
