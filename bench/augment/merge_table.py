"""The per-position table from `slimkv ppl --augment-every K --augment-dump F` run in shares
(--skip-windows): concatenate the dumps in window order and compute train/augment.py's table
(relative perplexity change at k = 1, 2, 4, 8, 16, 32, 95 % bootstrap interval over windows).
With --ref, also the per-point agreement with PyTorch on the windows reference.json stores.
python3 bench/augment/merge_table.py --points R --ahead 32 [--ref reference.json] DUMP..."""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "train"))
import augment as A  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--points", type=int, default=31)
p.add_argument("--ahead", type=int, default=32)
p.add_argument("--ref", default="")
p.add_argument("dumps", nargs="+")
a = p.parse_args()
e = np.concatenate([np.fromfile(d, dtype=np.float32).reshape(-1, a.points, a.ahead, 2) for d in a.dumps]).astype(np.float64)
out = {"dumps": [os.path.basename(d) for d in a.dumps], "table": A.table(e[..., 0], e[..., 1])}
if a.ref:
    ref = json.load(open(a.ref))["nll"]
    W = ref["windows"]
    pa, pb = np.array(ref["aug"], dtype=np.float64), np.array(ref["base"], dtype=np.float64)
    out["vs_pytorch"] = {"windows": W, "max_abs_nll_diff_aug": float(np.abs(e[:W, ..., 0] - pa).max()),
                         "max_abs_nll_diff_base": float(np.abs(e[:W, ..., 1] - pb).max()),
                         "mean_abs_nll_diff_aug": float(np.abs(e[:W, ..., 0] - pa).mean()),
                         "mean_abs_nll_diff_base": float(np.abs(e[:W, ..., 1] - pb).mean())}
print(json.dumps(out, indent=1))
