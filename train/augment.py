"""Cache augmentation (Liu et al., arXiv 2412.17747; docs/techniques.md section 4) for kvt-l.

Written for slimkv from the paper and the spec (the paper has no public code).

A frozen base model (kvt-l) reads a packed 2048-token sequence once and keeps its per-layer K/V.
A coprocessor (same shape, initialised from the base, fully fine-tuned) plus N_L trainable soft
embeddings runs at many augmentation points ("traces") of the sequence in one pass: trace r at
context length T_r (originals 0 .. T_r-1 visible) feeds the N_L soft embeddings at positions
T_r .. T_r+N_L-1, attending to the base's K/V of originals < T_r and causally to its own trace;
its final hidden states after the final RMSNorm are the latents z. The frozen base then runs, per
trace, [z_1 .. z_NL, x_{T_r} .. x_{T_r+A-2}] at positions T_r .. T_r+N_L+A-2 with the same mask
rule (originals < T_r, causal within the trace, never other traces); the logits at the last latent
predict x_{T_r}, those at ahead token x_{T_r+a} predict x_{T_r+a+1}; A = 16 "ahead" targets per
trace, cross-entropy, gradients through the frozen base into z.

Engine semantics (what the C side must reproduce): at context length T the coprocessor's soft
tokens take positions T .. T+N_L-1 over the base cache as read-only past; z = its hidden states
after its final norm; the base consumes z as input embeddings at T .. T+N_L-1 (cache grows by
N_L); the first token after comes from the last latent's logits and is placed at T+N_L.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, LCKVModel, _kv, _rms, apply_rope, config_from_hf, rope_cos_sin  # noqa: E402


# ------------------------------------------------------------------------------ loading
def load_state(model_dir):
    """All tensors of a model directory (single file or sharded with an index)."""
    from safetensors.torch import load_file
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    sd = {}
    for shard in sorted(set(idx["weight_map"].values())):
        sd.update(load_file(os.path.join(model_dir, shard)))
    return sd


def load_base(model_dir, device="cpu", dtype=torch.float32):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = config_from_hf(json.load(f))
    m = LCKVModel(cfg)
    if m.group is not None:
        raise ValueError(f"{model_dir}: cache augmentation needs a standard model (no condensed layers)")
    m.load_hf_state_dict({k: v.to(dtype) for k, v in load_state(model_dir).items()})
    return m.to(device=device, dtype=dtype)


class Coprocessor(nn.Module):
    """The coprocessor's transformer (kvt-l layout) and its N_L soft embeddings."""

    def __init__(self, cfg: Config, n_latent: int):
        super().__init__()
        self.cfg, self.n_latent = cfg, n_latent
        self.model = LCKVModel(cfg)
        self.soft = nn.Parameter(torch.zeros(n_latent, cfg.hidden_size))

    @staticmethod
    def from_base(base: LCKVModel, n_latent: int, seed: int = 0):
        c = Coprocessor(base.cfg, n_latent)
        c.model.load_state_dict(base.state_dict())
        # soft embeddings start as the embeddings of n_latent random vocabulary items
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(base.cfg.vocab_size, generator=g)[:n_latent]
        with torch.no_grad():
            c.soft.copy_(base.embed_tokens.weight.detach().float()[rows].to(c.soft.dtype))
        c.model.embed_tokens.weight.requires_grad_(False)  # never used by the coprocessor
        return c.to(base.embed_tokens.weight.device)


def scale_to_embeddings(cop: Coprocessor, base: LCKVModel):
    """Multiply the coprocessor's final norm weight by the mean RMS of the base's embedding rows,
    so that latents (hidden states after that norm, RMS ~ the weight) start at the scale of the
    inputs the base was trained on. Gemma, the paper's base, multiplies its embeddings by sqrt(d),
    which puts them at the normed scale already; a Llama-layout base such as kvt-l does not (kvt-l:
    embedding rows RMS 0.077, final norm weight 1.0). Returns the factor."""
    er = float(base.embed_tokens.weight.detach().float().pow(2).mean(1).sqrt().mean())
    with torch.no_grad():
        cop.model.norm.weight.mul_(er)
    return er


# ------------------------------------------------------------------------------ forward pieces
def rope_at(cfg, positions, device, dtype):
    return rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, device, dtype)


def _attend(q, k, v, mask, causal=False):
    """q (B, nq, M, hd); k, v (B, nkv, N, hd); mask (M, N) bool (True: attend) or None."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _layer(blk, h, cos, sin, past, mask, causal):
    a, eps = blk.self_attn, blk.cfg_eps
    B, M, _ = h.shape
    x = _rms(h, blk.input_layernorm.weight, eps)
    q = apply_rope(F.linear(x, a.q_proj.weight).view(B, M, a.nq, a.hd).transpose(1, 2), cos, sin)
    k, v = _kv(x, a.k_proj.weight, a.v_proj.weight, cos, sin, a.nkv, a.hd)
    own = (k, v)
    if past is not None:
        k, v = torch.cat([past[0].to(k.dtype), k], 2), torch.cat([past[1].to(v.dtype), v], 2)
    o = _attend(q, k, v, mask, causal)
    h = h + F.linear(o.transpose(1, 2).reshape(B, M, a.nq * a.hd), a.o_proj.weight)
    x = _rms(h, blk.post_attention_layernorm.weight, eps)
    h = h + F.linear(F.silu(F.linear(x, blk.mlp.gate_proj.weight)) * F.linear(x, blk.mlp.up_proj.weight),
                     blk.mlp.down_proj.weight)
    return h, own


def prefix(base, ids):
    """Causal pass of the base over ids (B, T): final hidden before the norm, per-layer (K, V)."""
    B, T = ids.shape
    h = base.embed_tokens(ids)
    cos, sin = rope_at(base.cfg, torch.arange(T), ids.device, _dt(h))
    kvs = []
    for blk in base.layers:
        h, own = _layer(blk, h, cos, sin, None, None, True)
        kvs.append(own)
    return h, kvs


def traces_forward(model, h, positions, past, mask):
    """model's layers over trace inputs h (B, M, D) at positions (M,), attending to past[i] (the
    base's K/V of originals) and to the traces' own K/V under mask (M, T + M)."""
    cos, sin = rope_at(model.cfg, positions, h.device, _dt(h))
    for i, blk in enumerate(model.layers):
        h, _ = _layer(blk, h, cos, sin, past[i], mask, False)
    return h


def _dt(h):
    if h.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return h.dtype


def trace_mask(points, L, T, device):
    """(R*L, T + R*L) bool: trace r (context length points[r]) sees originals < points[r] and
    its own tokens causally."""
    R = len(points)
    pts = torch.as_tensor(points, device=device)
    row_pt = pts.repeat_interleave(L)                                    # (R*L,)
    orig = torch.arange(T, device=device)[None, :] < row_pt[:, None]    # (R*L, T)
    tid = torch.arange(R, device=device).repeat_interleave(L)
    j = torch.arange(L, device=device).repeat(R)
    own = (tid[:, None] == tid[None, :]) & (j[None, :] <= j[:, None])   # (R*L, R*L)
    return torch.cat([orig, own], 1)


def trace_positions(points, L, device):
    pts = torch.as_tensor(points, device=device)
    return (pts[:, None] + torch.arange(L, device=device)[None, :]).reshape(-1)


def latents(cop: Coprocessor, past, points, T):
    """Latents z (B, R, N_L, D) after the coprocessor's final norm for every point."""
    B = past[0][0].shape[0]
    R, NL, D = len(points), cop.n_latent, cop.cfg.hidden_size
    dev = cop.soft.device
    h = cop.soft[None, None].expand(B, R, NL, D).reshape(B, R * NL, D)
    h = traces_forward(cop.model, h, trace_positions(points, NL, dev), past, trace_mask(points, NL, T, dev))
    z = _rms(h, cop.model.norm.weight, cop.cfg.rms_norm_eps)
    return z.view(B, R, NL, D)


def augmented_hidden(base, z, ids, past, points, n_ahead):
    """Base over [z, x_T .. x_{T+n_ahead-2}] per trace; returns the hidden states (pre-norm) of the
    n_ahead rows whose logits predict x_T .. x_{T+n_ahead-1}: (B, R, n_ahead, D)."""
    B, R, NL, D = z.shape
    T = ids.shape[1]
    pts = torch.as_tensor(points, device=ids.device)
    L = NL + n_ahead - 1
    if n_ahead > 1:
        gi = pts[:, None] + torch.arange(n_ahead - 1, device=ids.device)[None, :]  # (R, A-1)
        emb = base.embed_tokens(ids[:, gi])                                        # (B, R, A-1, D)
        x = torch.cat([z, emb.to(z.dtype)], 2)
    else:
        x = z
    h = traces_forward(base, x.reshape(B, R * L, D), trace_positions(points, L, ids.device), past,
                       trace_mask(points, L, T, ids.device))
    return h.view(B, R, L, D)[:, :, NL - 1:]


def targets(ids, points, n_ahead):
    pts = torch.as_tensor(points, device=ids.device)
    return ids[:, pts[:, None] + torch.arange(n_ahead, device=ids.device)[None, :]]  # (B, R, A)


def nll(base, h, y):
    """Per-token negative log-likelihood (float32) of y under the base's head at hidden states h."""
    logits = F.linear(_rms(h, base.norm.weight, base.cfg.rms_norm_eps), base.embed_tokens.weight)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)


def base_hidden_at(hp, points, n_ahead):
    """hp (B, T, D) prefix hidden; rows T_r-1+a (a < n_ahead) predict x_{T_r+a}: (B, R, A, D)."""
    pts = torch.as_tensor(points, device=hp.device)
    return hp[:, pts[:, None] - 1 + torch.arange(n_ahead, device=hp.device)[None, :]]


def step_losses(base, cop, ids, points, n_ahead):
    """(augmented nll (B,R,A), base nll (B,R,A) no grad) for one batch of windows."""
    with torch.no_grad():
        hp, past = prefix(base, ids)
        y = targets(ids, points, n_ahead)
        nb = nll(base, base_hidden_at(hp, points, n_ahead), y)
    z = latents(cop, past, points, ids.shape[1])
    ha = augmented_hidden(base, z, ids, past, points, n_ahead)
    return nll(base, ha, y), nb


# ------------------------------------------------------------------------------ export
def export(cop: Coprocessor, out_dir, base_dir, meta, with_embed=True):
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in cop.model.hf_state_dict().items()}
    if not with_embed:
        sd.pop("model.embed_tokens.weight")
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    save_file({"soft_embeddings": cop.soft.detach().float().contiguous().cpu()},
              os.path.join(out_dir, "soft.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(base_dir, "config.json")) as f:
        bc = json.load(f)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(bc, f, indent=2)
        f.write("\n")
    c = cop.cfg
    aug = {"kind": "cache_augmentation_coprocessor", "base_model": os.path.basename(os.path.normpath(base_dir)),
           "n_latent": cop.n_latent, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
           "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
           "latent": "hidden_normed", "positions": "advance", "soft_embeddings": "soft.safetensors"}
    aug.update(meta)
    with open(os.path.join(out_dir, "augment.json"), "w") as f:
        json.dump(aug, f, indent=2)
        f.write("\n")


def load_coprocessor(aug_dir, base: LCKVModel, device="cpu", dtype=torch.float32):
    from safetensors.torch import load_file
    with open(os.path.join(aug_dir, "augment.json")) as f:
        aug = json.load(f)
    soft = load_file(os.path.join(aug_dir, "soft.safetensors"))["soft_embeddings"]
    if soft.shape[0] != aug["n_latent"]:
        raise ValueError(f"{aug_dir}: n_latent {aug['n_latent']} but soft_embeddings has {soft.shape[0]} rows")
    cop = Coprocessor(base.cfg, aug["n_latent"])
    sd = load_state(aug_dir)
    if "model.embed_tokens.weight" not in sd:
        sd["model.embed_tokens.weight"] = base.embed_tokens.weight.detach().to(torch.bfloat16).cpu()
    cop.model.load_hf_state_dict({k: v.to(dtype) for k, v in sd.items()})
    with torch.no_grad():
        cop.soft.copy_(soft.to(dtype))
    return cop.to(device=device, dtype=dtype), aug


# ------------------------------------------------------------------------------ evaluation
def eval_points(ctx, n_latent, every, n_ahead=32):
    """The per-position protocol's points in a window: T = every, 2*every, ... with
    T + n_latent + n_ahead <= ctx."""
    return list(range(every, ctx - n_latent - n_ahead + 1, every))


@torch.no_grad()
def eval_table(base, cop, windows, every, n_ahead=32, batch=4, log=print):
    """Per-point nll with and without latents at k = 1..n_ahead: arrays (W, R, A)."""
    W, T = windows.shape
    points = eval_points(T, cop.n_latent, every, n_ahead)
    na, nb = [], []
    for s in range(0, W, batch):
        ids = windows[s:s + batch]
        a, b = step_losses(base, cop, ids, points, n_ahead)
        na.append(a.cpu())
        nb.append(b.cpu())
    return torch.cat(na).numpy(), torch.cat(nb).numpy(), points


def table(na, nb, ks=(1, 2, 4, 8, 16, 32), boot=2000, seed=0):
    """Relative perplexity change ppl_aug(k)/ppl_base(k) - 1 over all points, with a 95 % bootstrap
    interval resampling windows (points of one window are not independent)."""
    W = na.shape[0]
    rng = np.random.default_rng(seed)
    d = (na - nb).astype(np.float64)           # (W, R, A)
    per_w = d.mean(1)                          # (W, A): mean over a window's points
    out = {}
    idx = rng.integers(0, W, size=(boot, W))
    for k in ks:
        if k > na.shape[2]:
            continue
        m = d[:, :, k - 1].mean()
        bs = per_w[idx, k - 1].mean(1)
        lo, hi = np.percentile(bs, [2.5, 97.5])
        out[str(k)] = {"rel": float(math.expm1(m)), "lo": float(math.expm1(lo)), "hi": float(math.expm1(hi)),
                       "ppl_base": float(math.exp(nb[:, :, k - 1].mean())),
                       "ppl_aug": float(math.exp(na[:, :, k - 1].mean()))}
    out["points"] = int(na.shape[0] * na.shape[1])
    out["windows"] = int(W)
    return out


# ------------------------------------------------------------------------------ training
def get_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="../shared/models/kvt-l")
    p.add_argument("--corpus", default="../shared/data/corpus.train.txt.xz")
    p.add_argument("--val", default="../shared/data/corpus.val.txt.xz")
    p.add_argument("--tokenizer", default="", help="default: BASE/tokenizer.json")
    p.add_argument("--token-cache", default="", help="npy of the tokenised corpus: read if present, else written")
    p.add_argument("--max-corpus-tokens", type=float, default=0)
    p.add_argument("--nl", type=int, default=16, help="latents N_L")
    p.add_argument("--ahead", type=int, default=16, help="ahead tokens N_A (targets per trace)")
    p.add_argument("--traces", type=int, default=128, help="augmentation points per sequence")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--micro", type=int, default=0, help="sequences per forward (0: = batch)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--soft-lr", type=float, default=5e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tokens", type=float, default=0, help="training tokens (sequences x ctx; 0: one epoch)")
    p.add_argument("--max-seconds", type=float, default=0, help="stop training after this wall time")
    p.add_argument("--out", required=True)
    p.add_argument("--export", default="")
    p.add_argument("--no-embed", action="store_true", help="export without embed_tokens (travels smaller)")
    p.add_argument("--eval-windows", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", help="autocast dtype on CUDA (bf16) or none")
    p.add_argument("--latent-scale", choices=("one", "embed"), default="one",
                   help="initial scale of the coprocessor's final norm weight: one (the base's, as in the paper, "
                        "whose Gemma base scales its input embeddings by sqrt(d)), or embed (times the RMS of the "
                        "base's embedding rows, so that latents start at the scale of the inputs the base knows)")
    return p.parse_args(argv)


def probe_attention(dev, a, micro, log):
    """Whether the memory-efficient SDPA kernel takes the trace mask at the training shape (else
    the math kernel would materialise (B, heads, M, T + M) scores: use a smaller micro-batch)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    L = a.nl + a.ahead - 1
    M, N = a.traces * L, a.ctx + a.traces * L
    pts = list(range(1, 1 + a.traces))
    mask = trace_mask(pts, L, a.ctx, dev)
    q = torch.randn(1, 6, M, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 6, N, 64, device=dev, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            F.scaled_dot_product_attention(q, k, k, attn_mask=mask).sum().backward()
        log(f"attention probe: memory-efficient kernel takes the mask ({M} x {N}); micro-batch {micro}")
        return micro
    except RuntimeError as e:
        log(f"attention probe: memory-efficient kernel refused ({str(e)[:200]}); micro-batch 2")
        return min(micro, 2)


def main(argv=None):
    a = get_args(argv)
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "log.txt"), "a")

    def log(*s):
        msg = " ".join(str(x) for x in s)
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    log("args", json.dumps(vars(a)))
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    tokp = a.tokenizer or os.path.join(a.base, "tokenizer.json")
    from data import tokenize_corpus, val_windows
    if a.token_cache and os.path.exists(a.token_cache):
        ids = np.load(a.token_cache)
    else:
        ids = tokenize_corpus(a.corpus, tokp, max_tokens=int(a.max_corpus_tokens) or None, log=log)
        if a.token_cache:
            np.save(a.token_cache, ids)
    nwin = len(ids) // a.ctx
    wins = torch.from_numpy(ids[:nwin * a.ctx].astype(np.int64)).view(nwin, a.ctx)
    g = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(nwin, generator=g)
    n_seq = int(a.tokens // a.ctx) if a.tokens else nwin
    steps = max(1, n_seq // a.batch)
    log(f"corpus: {len(ids)} tokens, {nwin} windows of {a.ctx}; {steps} steps of {a.batch} sequences")

    base = load_base(a.base, dev)
    for p in base.parameters():
        p.requires_grad_(False)
    cop = Coprocessor.from_base(base, a.nl, a.seed)
    if a.latent_scale == "embed":
        er = scale_to_embeddings(cop, base)
        log(f"latent scale: the coprocessor's final norm weight times {er:.4f} (RMS of the base's embedding rows)")
    mats = [p for n, p in cop.model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": mats, "lr": a.lr, "base_lr": a.lr},
                             {"params": [cop.soft], "lr": a.soft_lr, "base_lr": a.soft_lr}],
                            betas=(0.9, 0.95), eps=1e-8, weight_decay=a.wd)
    hi_pt = a.ctx - a.nl - a.ahead + 1   # trace positions stay < ctx
    use_ac = dev.type == "cuda" and a.dtype == "bf16"
    curve, t0, seen = [], time.time(), 0
    step = 0
    micro = a.micro or a.batch
    if dev.type == "cuda":
        micro = probe_attention(dev, a, micro, log)
    for step in range(steps):
        el = time.time() - t0
        frac = max(step / max(1, steps - 1), el / a.max_seconds if a.max_seconds else 0.0)
        mult = (step + 1) / a.warmup if step < a.warmup else \
            a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        for gr in opt.param_groups:
            gr["lr"] = gr["base_lr"] * mult
        sel = order[(step * a.batch + torch.arange(a.batch)) % nwin]
        x = wins[sel].to(dev, non_blocking=True)
        pts = (1 + torch.randperm(hi_pt, generator=g)[:a.traces]).sort().values.tolist()
        while True:
            try:
                opt.zero_grad(set_to_none=True)
                la = lb = 0.0
                for s0 in range(0, a.batch, micro):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_ac):
                        na, nb = step_losses(base, cop, x[s0:s0 + micro], pts, a.ahead)
                        loss = na.mean() * (na.shape[0] / a.batch)
                    loss.backward()
                    la += loss.item()
                    lb += nb.mean().item() * (na.shape[0] / a.batch)
                break
            except torch.cuda.OutOfMemoryError:
                if micro == 1:
                    raise
                micro = max(1, micro // 2)
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                log(f"out of memory: micro-batch now {micro}")
        gn = torch.nn.utils.clip_grad_norm_(mats + [cop.soft], a.clip)
        opt.step()
        seen += a.batch * a.ctx
        if step % a.log_every == 0 or step == steps - 1:
            el = time.time() - t0
            curve.append({"step": step, "loss": la, "base": lb, "gnorm": float(gn), "t": el})
            log(f"step {step}/{steps} loss {la:.4f} base {lb:.4f} rel {math.expm1(la - lb) * 100:+.2f}% "
                f"gn {float(gn):.2f} lr {opt.param_groups[0]['lr']:.2e} {el:.1f}s {seen / el:.0f} tok/s")
        if a.max_seconds and time.time() - t0 > a.max_seconds:
            log(f"stopping at step {step} after {time.time() - t0:.1f}s (max-seconds)")
            break
    train_s = time.time() - t0
    if dev.type == "cuda":
        log(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    meta = {"train_tokens": seen, "train_sequences": seen // a.ctx, "steps": step + 1, "ahead": a.ahead,
            "traces": a.traces, "batch": a.batch, "lr": a.lr, "soft_lr": a.soft_lr, "seed": a.seed,
            "latent_scale": a.latent_scale,
            "train_seconds": round(train_s, 1)}
    log("trained", json.dumps(meta))
    res = {"meta": meta, "curve": curve}
    if a.export:
        export(cop, a.export, a.base, meta, with_embed=not a.no_embed)
        # evaluate the exported (bf16-rounded) weights, as the engine sees them
        cop, _ = load_coprocessor(a.export, base, dev)
    if a.eval_windows:
        vw = torch.from_numpy(val_windows(a.val, tokp, windows=a.eval_windows, ctx=a.ctx)).to(dev)
        te = time.time()
        with torch.autocast("cuda", enabled=False):
            torch.backends.cuda.matmul.allow_tf32 = False
            na, nb, points = eval_table(base, cop.float(), vw, a.eval_every, batch=a.eval_batch)
        res["table"] = table(na, nb)
        res["eval"] = {"every": a.eval_every, "points_per_window": len(points), "seconds": round(time.time() - te, 1)}
        np.savez_compressed(os.path.join(a.out, "eval_nll.npz"), aug=na.astype(np.float32),
                            base=nb.astype(np.float32), points=np.array(points))
        log("table", json.dumps(res["table"]))
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res




def assemble(aug_dir, base_dir):
    """Add the base's embed_tokens to a coprocessor exported with --no-embed (the coprocessor never
    uses or trains them), so that the directory is a complete model of the base's layout."""
    from safetensors.torch import load_file, save_file
    p = os.path.join(aug_dir, "model.safetensors")
    sd = load_file(p)
    if "model.embed_tokens.weight" not in sd:
        sd["model.embed_tokens.weight"] = load_state(base_dir)["model.embed_tokens.weight"].to(torch.bfloat16)
        save_file(sd, p, metadata={"format": "pt"})


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "assemble":  # augment.py assemble AUG_DIR BASE_DIR
        assemble(sys.argv[2], sys.argv[3])
    else:
        main()
