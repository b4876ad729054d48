"""Validation perplexity by the protocol of docs/evaluation.md section 3.

Documents of the val corpus, token 0 before each, concatenated and cut into non-overlapping windows
of 2048 tokens; every next-token prediction inside the first 200 windows is scored (2047 a window).

Modes (identical for a standard model):
  iterative   each window is one prefill: the LCKV group iterated m + b = 9 times (--iters)
  sequential  token-by-token decoding with a K/V cache (exact LCKV semantics), all windows batched

Usage: python3 train/eval_ppl.py models/lckv-w2 [--mode iterative|sequential|both] [--windows 200]
Weights are the exported bf16 ones, computed in float32 (TF32 off).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
from model import Decoder, load_hf  # noqa: E402


@torch.no_grad()
def evaluate(model, windows, device, mode="iterative", batch=8, n_iter=None):
    x_all = torch.as_tensor(windows, dtype=torch.long)
    n, T = x_all.shape
    nll, count = 0.0, 0
    if mode == "iterative":
        for s in range(0, n, batch):
            x = x_all[s:s + batch].to(device)
            lg = model.forward_iterative(x, n_iter=n_iter).float()
            lp = F.log_softmax(lg[:, :-1], dim=-1)
            nll -= lp.gather(-1, x[:, 1:, None]).sum().item()
            count += x[:, 1:].numel()
    elif mode == "sequential":
        x = x_all.to(device)
        dtype = model.embed_tokens.weight.dtype
        dec = Decoder(model, n, device, dtype, T)
        tot = torch.zeros((), dtype=torch.float64, device=device)
        for t in range(T - 1):
            lg = dec.step(x[:, t]).float()
            tot -= F.log_softmax(lg, dim=-1).gather(-1, x[:, t + 1:t + 2]).double().sum()
        nll, count = tot.item(), n * (T - 1)
    else:
        raise ValueError(mode)
    return {"mode": mode, "ppl": math.exp(nll / count), "nll": nll / count, "windows": n,
            "window_tokens": T, "tokens_scored": count,
            **({"iterations": n_iter or model.cfg.forward_passes + model.cfg.backward_passes}
               if mode == "iterative" and model.group else {})}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--val", default="../shared/data/corpus.val.txt.xz")
    p.add_argument("--tokenizer", default="", help="default: MODEL/tokenizer.json")
    p.add_argument("--windows", type=int, default=200)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--mode", default="both", choices=["iterative", "sequential", "both"])
    p.add_argument("--iters", type=int, default=0, help="group iterations of the iterative mode (0: m+b)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="", help="write the results as JSON here")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = a.tokenizer or os.path.join(a.model_dir, "tokenizer.json")
    wins = D.val_windows(a.val, tok, a.windows, a.ctx)
    model = load_hf(a.model_dir, a.device, torch.float32)
    res = []
    for mode in (["iterative", "sequential"] if a.mode == "both" else [a.mode]):
        if mode == "sequential" and model.group is None and a.mode == "both":
            continue  # identical to iterative for a standard model
        t0 = time.time()
        r = evaluate(model, wins, a.device, mode, n_iter=a.iters or None)
        r["seconds"] = round(time.time() - t0, 2)
        r["model"] = a.model_dir
        r["device"] = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
        print(json.dumps(r), flush=True)
        res.append(r)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
