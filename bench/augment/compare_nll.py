"""Engine vs PyTorch on the per-position protocol: `slimkv ppl --augment-every 64 --augment-dump F`
(float32, window x point x k x [aug, base]) against the per-point NLLs in the coprocessor's
reference.json (from the GPU run's eval_nll.npz, float32 on the H200). Prints a JSON summary.
python3 bench/augment/compare_nll.py DUMP models/aug-kvt-l-n16/reference.json"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "train"))
import augment as A  # noqa: E402

dump, refp = sys.argv[1], sys.argv[2]
ref = json.load(open(refp))["nll"]
W = ref["windows"]
pa, pb = np.array(ref["aug"], dtype=np.float64), np.array(ref["base"], dtype=np.float64)
e = np.fromfile(dump, dtype=np.float32).reshape(-1, pa.shape[1], pa.shape[2], 2)[:W].astype(np.float64)
out = {"windows": W, "points": int(W * pa.shape[1]), "max_abs_nll_diff_aug": float(np.abs(e[..., 0] - pa).max()),
       "max_abs_nll_diff_base": float(np.abs(e[..., 1] - pb).max()),
       "engine_table": A.table(e[..., 0], e[..., 1]), "pytorch_table": A.table(pa, pb)}
print(json.dumps(out, indent=1))
