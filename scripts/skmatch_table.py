#!/usr/bin/env python3
"""skmatch_table.py ROWS.jsonl — the means over rows of `slimkv skmatch --out` as a markdown table
(for a run stopped before its summary line)."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{len(rows)} rows: " + ", ".join(f"{r['task']} ({r['tokens']} tokens)" for r in rows) + "\n")
print("| K (fraction of keys) | in-sample matched | in-sample random | in-sample chance | held-out matched | held-out random "
      "| held-out best | held-out chance |")
print("|---|---|---|---|---|---|---|---|")
for i, k in enumerate(rows[0]["k"]):
    def m(part, key):
        return sum(r["k"][i][part][key] for r in rows) / len(rows)
    print(f"| {k['frac']:g} | {m('in_sample', 'matched'):.3f} | {m('in_sample', 'random'):.3f} | {m('in_sample', 'chance'):.3f} "
          f"| {m('held_out', 'matched'):.3f} | {m('held_out', 'random'):.3f} | {m('held_out', 'best'):.3f} "
          f"| {m('held_out', 'chance'):.3f} |")
