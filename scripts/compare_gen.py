#!/usr/bin/env python3
"""Compare two `slimkv eval --out` files row by row (e.g. CPU vs CUDA backend): identical
generations, the length of the agreeing prefix, and per-task scores."""
import json, sys
from collections import defaultdict
a = {(r["task"], r["index"]): r for r in map(json.loads, open(sys.argv[1]))}
b = {(r["task"], r["index"]): r for r in map(json.loads, open(sys.argv[2]))}
keys = sorted(set(a) & set(b))
same, prefix, total, tasks = 0, 0, 0, defaultdict(lambda: [0, 0.0, 0.0])
for k in keys:
    ga, gb = a[k]["gen"], b[k]["gen"]
    same += ga == gb
    n = 0
    while n < min(len(ga), len(gb)) and ga[n] == gb[n]:
        n += 1
    prefix += n
    total += max(len(ga), len(gb))
    t = tasks[k[0]]
    t[0] += 1; t[1] += a[k]["score"]; t[2] += b[k]["score"]
print(f"{len(keys)} rows: {same} identical generations; agreeing prefixes cover {prefix}/{total} tokens")
for name, (n, sa, sb) in sorted(tasks.items()):
    print(f"  {name}: score {sa / n:.4f} vs {sb / n:.4f} ({n} rows)")
