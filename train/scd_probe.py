#!/usr/bin/env python3
"""scd_probe.py — how well can the consumer's K/V rows be predicted from the producer's states?
Ridge maps fitted on the prompts of a `slimkv scd-dump --consecutive` file (each prompt one
block of consecutive positions), scored on held-out prompts (every 5th prompt), as
||pred - B|| / ||B - mean B|| on both splits, for several sets of producer features:

  k       the producer's same-layer rows of the same part (K de-RoPE'd, or V) at t (SCD's reuse input)
  h       the producer's same-layer normalised attention input at t (SCD's patch input)
  h+prev  h at t and at t-1, t-2 (contextual encoder: neighbouring positions' producer states)
  all     h of every layer at t
  all+prev  h of every layer at t and t-1
and, as a control on the consumer's side, b0+prev: the consumer's own layer-0 input (its token
embedding, normalised) at t, t-1, t-2 (how local the consumer's rows are).

  python3 train/scd_probe.py DUMP [--layers 5,6,7,8,9] [--parts k,v] [--feats k,h,h+prev,...]
"""
import argparse
import sys

import numpy as np

sys.path.insert(0, __import__('os').path.dirname(__file__))
from scd_calibrate import read_st  # noqa: E402


def shift(X, blk, s):
    """X (n, d) rows in blocks of blk consecutive positions -> rows at t - s (zeros before a block's start)."""
    n, d = X.shape
    Y = np.zeros_like(X)
    Xb, Yb = X.reshape(-1, blk, d), Y.reshape(-1, blk, d)
    Yb[:, s:, :] = Xb[:, :blk - s, :]
    return Y


def ridge_eval(F, B, tr, va, lam_rel=1e-3):
    F1 = np.concatenate([F, np.ones((F.shape[0], 1))], 1)
    G = F1[tr].T @ F1[tr]
    reg = lam_rel * np.trace(G) / G.shape[0] * np.eye(G.shape[0])
    reg[-1, -1] = 0
    W = np.linalg.solve(G + reg, F1[tr].T @ B[tr])
    mu = B[tr].mean(0)

    def err(rows):
        return float(np.linalg.norm(F1[rows] @ W - B[rows]) / np.linalg.norm(B[rows] - mu))
    return err(tr), err(va)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dump')
    ap.add_argument('--layers', default='5,6,7,8,9')
    ap.add_argument('--parts', default='k,v')
    ap.add_argument('--feats', default='k,h,h+prev,all,all+prev,b0+prev')
    ap.add_argument('--prev', type=int, default=2, help='neighbouring positions for +prev (default 2)')
    a = ap.parse_args()
    T, meta = read_st(a.dump)
    if meta.get('consecutive') != '1':
        raise SystemExit(f'{a.dump}: not a --consecutive dump')
    blk = int(meta['rows_per_prompt'])
    n = T['a.k.0'].shape[0]
    L = max(int(k.split('.')[-1]) for k in T) + 1
    p = np.arange(n) // blk
    va = np.nonzero(p % 5 == 0)[0]
    keep = (np.arange(n) % blk) >= a.prev  # rows whose neighbours are inside the block
    tr = np.nonzero((p % 5 != 0) & keep)[0]
    va = va[keep[va]]
    print(f'{a.dump}: {n} rows, {n // blk} prompts of {blk}; train {len(tr)} rows, held-out {len(va)} rows')
    f64 = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    Hall = None
    print('| layer | part | ' + ' | '.join(f'{f} train / held-out' for f in a.feats.split(',')) + ' |')
    print('|---|---|' + '---|' * len(a.feats.split(',')))
    for l in [int(x) for x in a.layers.split(',')]:
        for part in a.parts.split(','):
            B = f64(T[f'b.{part}.{l}'])
            cells = []
            for feat in a.feats.split(','):
                if feat == 'k':
                    F = f64(T[f'a.{part}.{l}'])
                elif feat == 'h':
                    F = f64(T[f'a.h.{l}'])
                elif feat == 'h+prev':
                    H = f64(T[f'a.h.{l}'])
                    F = np.concatenate([H] + [shift(H, blk, s) for s in range(1, a.prev + 1)], 1)
                elif feat in ('all', 'all+prev'):
                    if Hall is None:
                        Hall = np.concatenate([f64(T[f'a.h.{i}']) for i in range(L)], 1)
                    F = Hall if feat == 'all' else np.concatenate([Hall, shift(Hall, blk, 1)], 1)
                elif feat == 'b0+prev':
                    H = f64(T['b.h.0'])
                    F = np.concatenate([H] + [shift(H, blk, s) for s in range(1, a.prev + 1)], 1)
                else:
                    raise SystemExit(f'unknown feature set {feat}')
                e_tr, e_va = ridge_eval(F, B, tr, va)
                cells.append(f'{e_tr:.3f} / {e_va:.3f}')
            print(f'| {l} | {part} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
    main()
