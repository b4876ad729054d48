#!/usr/bin/env python3
"""scd_quality_table.py — per-method table from `slimkv scd-eval --rows-out` files (JSONL, .xz
allowed): for each method and task the mean score with a 95 % bootstrap interval over rows, KL
and TV to the oracle, layer bytes per prompt token; only rows that every listed file and method
covers (same rows for every method). Several files: one column block per file (e.g. two maps).

  python3 scripts/scd_quality_table.py bench/scd/quality-50/rows.jsonl.xz [more.jsonl ...]
"""
import json
import lzma
import random
import sys
from collections import defaultdict


def load(path):
    op = lzma.open if path.endswith('.xz') else open
    with op(path, 'rt') as f:
        return [json.loads(l) for l in f if l.strip()]


def boot(xs, n=2000, seed=0):
    rng = random.Random(seed)
    m = [sum(rng.choice(xs) for _ in xs) / len(xs) for _ in range(n)]
    m.sort()
    return m[int(0.025 * n)], m[int(0.975 * n)]


def main():
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    data = [load(p) for p in files]
    # rows complete in every file: every method of that file present
    keep = None
    for rows in data:
        meths = {r['method'] for r in rows}
        per = defaultdict(set)
        for r in rows:
            per[(r['task'], r['index'])].add(r['method'])
        ok = {k for k, v in per.items() if v == meths}
        keep = ok if keep is None else keep & ok
    tasks = sorted({k[0] for k in keep})
    for path, rows in zip(files, data):
        print(f'\n### {path}\n')
        n_t = {t: sum(1 for k in keep if k[0] == t) for t in tasks}
        print('| method | B/token | ' + ' | '.join(f'{t} ({n_t[t]} rows): score [95 % CI] | KL | TV' for t in tasks) + ' |')
        print('|---|---|' + '---|---|---|' * len(tasks))
        meths = []
        for r in rows:
            if r['method'] not in meths:
                meths.append(r['method'])
        for m in meths:
            cells, lb, tok = [], 0, 0
            for t in tasks:
                rs = [r for r in rows if r['method'] == m and r['task'] == t and (t, r['index']) in keep]
                sc = [r['score'] for r in rs]
                lo, hi = boot(sc)
                cells.append(f'{sum(sc) / len(sc):.3f} [{lo:.2f}, {hi:.2f}] | {sum(r["kl"] for r in rs) / len(rs):.2f} | '
                             f'{sum(r["tv"] for r in rs) / len(rs):.2f}')
                lb += sum(r['layer_bytes'] for r in rs)
                tok += sum(r['tokens'] for r in rs)
            print(f'| {m} | {lb / tok:.0f} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
