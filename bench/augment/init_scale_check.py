"""Cache augmentation at initialisation (no training), kvt-l + a coprocessor copied from it, on the
first 3 val windows (points every 64): the per-position table with the coprocessor final norm
weight as in the paper (1.0) and scaled to kvt-l embedding RMS (augment.py --latent-scale embed).
CPU: PYTHONPATH=train python3 bench/augment/init_scale_check.py"""
import torch
import augment as A
from data import val_windows

torch.set_num_threads(2)
S = '../shared'
base = A.load_base(S + '/models/kvt-l')
for p in base.parameters(): p.requires_grad_(False)
vw = torch.from_numpy(val_windows(S + '/data/corpus.val.txt.xz', S + '/models/kvt-l/tokenizer.json', windows=3, ctx=2048))
E = base.embed_tokens.weight.detach()
er = float(E.pow(2).mean(1).sqrt().mean())
for name, scale in [("norm weight 1.0 (as trained)", 1.0), ("norm weight x embed rms %.4f" % er, er)]:
    cop = A.Coprocessor.from_base(base, 16, 1234)
    with torch.no_grad(): cop.model.norm.weight.mul_(scale)
    na, nb, pts = A.eval_table(base, cop, vw, 64, batch=1)
    t = A.table(na, nb)
    print(name, {k: round(v["rel"] * 100, 2) for k, v in t.items() if k in ("1", "2", "4", "8", "16", "32")}, flush=True)
