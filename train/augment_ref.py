"""Reference latents and logits of a cache-augmentation coprocessor for the engine's tests, computed
by train/augment.py in float32 from the bf16 weights (CPU).

python3 train/augment_ref.py models/aug-kvt-l-n16 [--base ../shared/models/kvt-l] [--out DIR/reference.json]
          [--nll runs/aug-n16-long/eval_nll.npz --nll-windows 8]

Per prompt of kvt-l's golden.json (the prompt at positions 0 .. T-1, augmented once at its end):
  ids               the prompt's ids (from golden.json)
  latents           z (n_latent x hidden): the coprocessor's final hidden states after its norm
  logits_top_ids / logits_top   the 16 largest logits at the last latent (they predict token T)
  lse               log-sum-exp of those logits
  greedy16          16 greedy tokens after the latents (the first from the last latent's logits)
  base_greedy16     the same without augmentation
With --nll: the per-point nll of the first windows of the table's protocol (points every 64 tokens,
32 tokens after each), augmented and not, copied from the GPU run's eval_nll.npz (float32) into
reference.json for `slimkv ppl --augment-every 64` to be compared against.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import augment as A  # noqa: E402
from model import _rms  # noqa: E402


def r6(t):
    return [float(f"{float(x):.6g}") for x in t]


@torch.no_grad()
def run_base(base, emb):
    """Logits of every row of a plain causal pass of the base over input embeddings (1, n, D)."""
    h = emb
    n = h.shape[1]
    cos, sin = A.rope_at(base.cfg, torch.arange(n), h.device, h.dtype)
    for blk in base.layers:
        h, _ = A._layer(blk, h, cos, sin, None, None, True)
    return base.logits(h)[0]


@torch.no_grad()
def greedy(base, emb, n):
    out = []
    for _ in range(n):
        nxt = int(run_base(base, emb)[-1].argmax())
        out.append(nxt)
        emb = torch.cat([emb, base.embed_tokens(torch.tensor([[nxt]]))], 1)
    return out


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("aug")
    p.add_argument("--base", default="../shared/models/kvt-l")
    p.add_argument("--golden", default="")
    p.add_argument("--out", default="")
    p.add_argument("--nll", default="")
    p.add_argument("--nll-windows", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = A.load_base(a.base)
    cop, aug = A.load_coprocessor(a.aug, base)
    golden = json.load(open(a.golden or os.path.join(a.base, "golden.json")))
    ref = {"model": os.path.basename(os.path.normpath(a.aug)), "base": aug["base_model"], "n_latent": aug["n_latent"],
           "dtype": "float32 from the bf16 weights", "prompts": []}
    for gp in golden["prompts"]:
        ids = torch.tensor([gp["ids"]])
        T = ids.shape[1]
        _, past = A.prefix(base, ids)
        z = A.latents(cop, past, [T], T)[0, 0]                     # (NL, D)
        emb = torch.cat([base.embed_tokens(ids), z[None]], 1)
        lg = run_base(base, emb)[-1]
        top = torch.topk(lg, 16)
        ref["prompts"].append({
            "text": gp["text"], "ids": gp["ids"], "latents": [r6(r) for r in z],
            "logits_top_ids": top.indices.tolist(), "logits_top": r6(top.values),
            "lse": float(torch.logsumexp(lg, 0)),
            "greedy16": greedy(base, emb, 16), "base_greedy16": greedy(base, base.embed_tokens(ids), 16)})
        print(f"prompt of {T} tokens: |z| max {z.abs().max():.3f}, greedy {ref['prompts'][-1]['greedy16'][:8]}")
    if a.nll:
        d = np.load(a.nll)
        w = a.nll_windows
        ref["nll"] = {"every": 64, "n_ahead": 32, "windows": w, "points": d["points"].tolist(),
                      "aug": [[r6(x) for x in win] for win in d["aug"][:w]],
                      "base": [[r6(x) for x in win] for win in d["base"][:w]]}
    out = a.out or os.path.join(a.aug, "reference.json")
    with open(out, "w") as f:
        json.dump(ref, f)
    print("wrote", out)


if __name__ == "__main__":
    main()
