"""CPU checks of cache augmentation (python3 train/tests/test_augment.py).

The batched-trace forward (many points, one masked pass) against an independent reference that
handles one point at a time with explicit per-query softmax attention: the coprocessor over the
base's prefix K/V, then the base over [prefix, latents, ahead tokens] as one plain sequence."""
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import Config, LCKVModel, _rms, apply_rope, rope_cos_sin  # noqa: E402
import augment as A  # noqa: E402

torch.manual_seed(0)


def tiny():
    c = Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               intermediate_size=96, vocab_size=300, max_position_embeddings=256)
    m = LCKVModel(c)
    m.init_weights(1, std=0.2)
    return m.double()


def check(name, a, b, tol):
    d = (a - b).abs().max().item()
    print(f"{name}: max abs diff {d:.3e}")
    assert d < tol, name
    return d


def ref_layer(blk, h, pos, past_k, past_v):
    """One layer over rows h (n, D) at positions pos, keys = past (nkv, P, hd) + own, causal
    within own, explicit softmax. Returns h and own (k, v)."""
    a, eps, cfg = blk.self_attn, blk.cfg_eps, None
    n = h.shape[0]
    x = _rms(h, blk.input_layernorm.weight, eps)
    cos, sin = rope_cos_sin(pos, a.hd, 10000.0, h.device, h.dtype)
    q = apply_rope((x @ a.q_proj.weight.T).view(n, a.nq, a.hd).transpose(0, 1), cos, sin)
    k = apply_rope((x @ a.k_proj.weight.T).view(n, a.nkv, a.hd).transpose(0, 1), cos, sin)
    v = (x @ a.v_proj.weight.T).view(n, a.nkv, a.hd).transpose(0, 1)
    K, V = torch.cat([past_k, k], 1), torch.cat([past_v, v], 1)
    P = past_k.shape[1]
    o = torch.zeros(a.nq, n, a.hd, dtype=h.dtype)
    for hq in range(a.nq):
        g = hq // (a.nq // a.nkv)
        for i in range(n):
            s = (K[g, :P + i + 1] @ q[hq, i]) / math.sqrt(a.hd)
            o[hq, i] = torch.softmax(s, 0) @ V[g, :P + i + 1]
    h = h + o.transpose(0, 1).reshape(n, -1) @ a.o_proj.weight.T
    x = _rms(h, blk.post_attention_layernorm.weight, eps)
    h = h + (F.silu(x @ blk.mlp.gate_proj.weight.T) * (x @ blk.mlp.up_proj.weight.T)) @ blk.mlp.down_proj.weight.T
    return h, (k, v)


def ref_model(m, h, pos, past=None):
    """Whole model over rows h; past: per-layer (k, v) (nkv, P, hd) or None. Returns h, per-layer own."""
    own = []
    for i, blk in enumerate(m.layers):
        pk, pv = past[i] if past else (h.new_zeros(blk.self_attn.nkv, 0, blk.self_attn.hd),) * 2
        h, kv = ref_layer(blk, h, pos, pk, pv)
        own.append(kv)
    return h, own


def ref_point(base, cop, ids, T, A_):
    """nll of x_T .. x_{T+A-1} with latents at context length T, one point by itself."""
    NL = cop.n_latent
    _, past = ref_model(base, base.embed_tokens(ids[:T]), torch.arange(T))
    hz, _ = ref_model(cop.model, cop.soft, torch.arange(T, T + NL), past)
    z = _rms(hz, cop.model.norm.weight, 1e-5)
    # the base over the whole augmented sequence from scratch (not the cached past) as one plain sequence
    seq = torch.cat([base.embed_tokens(ids[:T]), z, base.embed_tokens(ids[T:T + A_ - 1])])
    h, _ = ref_model(base, seq, torch.arange(len(seq)))
    logits = base.logits(h[T + NL - 1:])
    return F.cross_entropy(logits, ids[T:T + A_], reduction="none"), z


base = tiny()
for p in base.parameters():
    p.requires_grad_(False)
NL, A_, T = 3, 4, 20
cop = A.Coprocessor.from_base(base, NL, seed=5).double()
with torch.no_grad():  # make the coprocessor differ from the base
    for p in cop.model.parameters():
        p.add_(0.05 * torch.randn_like(p))
ids = torch.randint(0, 300, (2, T))
points = [1, 4, 9, 13, 16]           # T + A - 1 <= 20

na, nb = A.step_losses(base, cop, ids, points, A_)
for b in range(2):
    for r, t in enumerate(points):
        ref, _ = ref_point(base, cop, ids[b], t, A_)
        check(f"seq {b} point {t}: batched traces vs one point alone", na[b, r], ref, 1e-10)
        with torch.no_grad():
            lb = F.cross_entropy(base.logits(ref_model(base, base.embed_tokens(ids[b]), torch.arange(T))[0]),
                                 torch.cat([ids[b, 1:], ids[b, :1]]), reduction="none")
        check(f"seq {b} point {t}: base nll", nb[b, r], lb[t - 1:t - 1 + A_], 1e-10)

# latents of one trace do not depend on later originals or on other traces
ids2 = ids.clone()
ids2[:, 10:] = torch.randint(0, 300, (2, T - 10))
z1 = A.latents(cop, A.prefix(base, ids)[1], [5, 9], T)
z2 = A.latents(cop, A.prefix(base, ids2)[1], [9, 5][::-1], T)
check("latents ignore later originals", z1, z2, 1e-12)

# gradients reach the soft embeddings and every coprocessor matrix but not the base
loss = na.mean()
loss.backward()
assert cop.soft.grad is not None and cop.soft.grad.abs().sum() > 0
for n, p in cop.model.named_parameters():
    if n == "embed_tokens.weight":
        assert p.grad is None, n
    else:
        assert p.grad is not None and p.grad.abs().sum() > 0, n
assert all(p.grad is None for p in base.parameters())
print("gradients: soft embeddings and all coprocessor matrices, none in the base")

# export / load round trip (bf16 weights; soft f32); n_latent mismatch refused
with tempfile.TemporaryDirectory() as d:
    bdir = os.path.join(d, "base")
    from model import save_hf
    save_hf(base.float(), bdir)
    base.double()
    A.export(cop, os.path.join(d, "aug"), bdir, {"steps": 0}, with_embed=False)
    c2, aug = A.load_coprocessor(os.path.join(d, "aug"), base, dtype=torch.float64)
    assert aug["n_latent"] == NL and aug["base_model"] == "base"
    check("export round trip soft", c2.soft, cop.soft.float().double(), 1e-6)
    check("export round trip q_proj (bf16)", c2.model.layers[0].self_attn.q_proj.weight,
          cop.model.layers[0].self_attn.q_proj.weight, 0.02)
    import json
    p = os.path.join(d, "aug", "augment.json")
    j = json.load(open(p))
    j["n_latent"] = NL + 1
    json.dump(j, open(p, "w"))
    try:
        A.load_coprocessor(os.path.join(d, "aug"), base)
        raise SystemExit("n_latent mismatch was not refused")
    except ValueError as e:
        print("refused:", e)

# --latent-scale embed: latents start at the RMS of the base's embedding rows
c3 = A.Coprocessor.from_base(base, NL, seed=5).double()
z_one = A.latents(c3, A.prefix(base, ids)[1], [5, 9], T)
f = A.scale_to_embeddings(c3, base)
z_emb = A.latents(c3, A.prefix(base, ids)[1], [5, 9], T)
e_rms = base.embed_tokens.weight.pow(2).mean(1).sqrt().mean().item()
check("latent scale factor = embedding RMS", torch.tensor(f), torch.tensor(e_rms), 1e-6)
check("scaled latents = latents x factor", z_emb, z_one * f, 1e-10)
print(f"latent RMS {z_one.pow(2).mean().sqrt().item():.3f} -> {z_emb.pow(2).mean().sqrt().item():.4f}")

# the table's statistics on synthetic numbers
import numpy as np
rng = np.random.default_rng(0)
nbn = rng.uniform(1, 3, size=(20, 8, 32))
t = A.table(nbn - 0.1, nbn)
assert abs(t["1"]["rel"] - math.expm1(-0.1)) < 1e-12 and t["1"]["lo"] <= t["1"]["rel"] <= t["1"]["hi"]
print("table:", t["1"])
print("all augment checks passed")
