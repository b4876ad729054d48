#!/usr/bin/env python3
"""summarise.py ROWS.jsonl [N] — scd-ablate rows: mean score and KL per configuration over the
first N rows (default all) of each, in the order the configurations first appear."""
import collections
import json
import lzma
import sys

op = lzma.open if sys.argv[1].endswith(".xz") else open
rows = [json.loads(line) for line in op(sys.argv[1], "rt")]
n = int(sys.argv[2]) if len(sys.argv) > 2 else None
by = collections.OrderedDict()
for r in rows:
    by.setdefault(r['config'], []).append(r)
print('| config | rows | score | KL | TV |\n|---|---|---|---|---|')
for c, v in by.items():
    v = v[:n] if n else v
    k = len(v)
    print(f"| {c} | {k} | {sum(x['score'] for x in v) / k:.3f} | {sum(x['kl'] for x in v) / k:.3f} | "
          f"{sum(x['tv'] for x in v) / k:.3f} |")
