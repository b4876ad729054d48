"""Llama model of the kvt family with layer-condensed KV (LCKV, Wu & Tu, arXiv 2405.10637).

Written for slimkv from the paper and docs/techniques.md section 3 (not copied from the reference code).

layer_types: t(i) for every layer i, the layer whose K/V layer i's queries attend to.
  t(i) == i  standard causal attention over its own K/V, diagonal included.
  t(i) <  i  attends to a lower layer's K/V of the same pass, diagonal included (CLA-like).
  t(i) >  i  condensed: no k_proj/v_proj; token j attends to the source layer's K/V of tokens < j
             only (token 0 gets a zero attention output). Because the source layer runs later for
             the current token, a parallel pass needs iterations (see `forward_iterative`).
Layer i owns k_proj/v_proj iff some t(j) == i.

Three forward semantics are implemented:
  * forward_train: the paper's training plan. Layers below the cyclic group [low, high] run once;
    m group iterations without grad (their hidden states are discarded, only the source K/V is kept),
    b-1 iterations with grad and no update, one iteration with grad whose hidden state goes on; then
    the layers above. Iteration 1 sees no source K/V (the paper's zero K/V gives a zero attention
    output, so the attention of condensed layers is skipped there).
  * forward_iterative (prefill): the same plan with n_iter = m + b iterations, no grad; the source
    K/V kept in the cache is the one the last iteration computed.
  * Decoder.step (sequential): one token at a time with a K/V cache; condensed layers attend to the
    cached source K/V of tokens 0..t-1, never their own token; this is the exact model.
For a model without t(i) > i all three are the ordinary causal transformer.
"""
import json
import math
import os
from dataclasses import dataclass, field, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 8192
    hidden_size: int = 384
    num_hidden_layers: int = 10
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    layer_types: list = field(default_factory=list)  # ints; empty = all standard
    forward_passes: int = 7  # m
    backward_passes: int = 2  # b

    def __post_init__(self):
        if isinstance(self.layer_types, str):
            self.layer_types = parse_layer_types(self.layer_types) if self.layer_types else []
        if not self.layer_types:
            self.layer_types = list(range(self.num_hidden_layers))
        check_layer_types(self.layer_types, self.num_hidden_layers)

    @property
    def layer_types_str(self):
        return "_".join(str(t) for t in self.layer_types)


def parse_layer_types(s):
    return [int(x) for x in s.split("_")]


def check_layer_types(lt, n):
    if len(lt) != n:
        raise ValueError(f"layer_types has {len(lt)} entries for {n} layers")
    for i, t in enumerate(lt):
        if not 0 <= t < n:
            raise ValueError(f"layer_types[{i}] = {t} out of range")
        if lt[t] != t:
            raise ValueError(f"layer {i} attends to layer {t}, which does not attend to itself")


def cyclic_group(lt):
    """(low, high) of the layers iterated in parallel, or None when no layer attends upwards."""
    up = [i for i, t in enumerate(lt) if t > i]
    if not up:
        return None
    return up[0], max(lt[i] for i in up)


def rope_cos_sin(positions, head_dim, theta, device, dtype=torch.float32):
    """HF Llama 'default' RoPE: inv_freq over even dims, angles duplicated (rotate_half layout)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = positions.to(device=device, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    # x: (B, H, T, D); cos/sin: (T, D)
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        # as HF Llama: normalise in float32, cast back, then scale
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Config, has_kv: bool):
        super().__init__()
        self.nq, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nq * self.hd, bias=False)
        if has_kv:
            self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
            self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nq * self.hd, cfg.hidden_size, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# attention kinds of a layer forward
FULL = 0      # causal, diagonal included (standard, or t(i) < i)
STRICT = 1    # condensed with source K/V: token j sees source tokens < j
NOKV = 2      # condensed, first iteration: no source K/V yet -> zero attention output


class Block(nn.Module):
    def __init__(self, cfg: Config, idx: int):
        super().__init__()
        self.idx = idx
        self.target = cfg.layer_types[idx]
        self.has_kv = idx in cfg.layer_types
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, self.has_kv)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.cfg_eps = cfg.rms_norm_eps

    def weights(self):
        a, m = self.self_attn, self.mlp
        wk = a.k_proj.weight if self.has_kv else None
        wv = a.v_proj.weight if self.has_kv else None
        return (self.input_layernorm.weight, a.q_proj.weight, wk, wv, a.o_proj.weight,
                self.post_attention_layernorm.weight, m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight)

    def kv(self, x, cos, sin):
        """K (RoPE applied) and V of normalised input x: (B, nkv, T, hd)."""
        a = self.self_attn
        return _kv(x, a.k_proj.weight, a.v_proj.weight, cos, sin, a.nkv, a.hd)

    def kv_only(self, h, cos, sin):
        return block_kv(h, cos, sin, self.input_layernorm.weight, self.self_attn.k_proj.weight,
                        self.self_attn.v_proj.weight, self.cfg_eps, self.self_attn.nkv, self.self_attn.hd)

    def forward(self, h, cos, sin, kind: int, k=None, v=None):
        """One layer over a whole sequence; see block_forward."""
        a = self.self_attn
        return block_forward(h, cos, sin, kind, k, v, *self.weights(), self.cfg_eps, a.nq, a.nkv, a.hd)


def _rms(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _kv(x, wk, wv, cos, sin, nkv, hd):
    B, T, _ = x.shape
    k = F.linear(x, wk).view(B, T, nkv, hd).transpose(1, 2)
    v = F.linear(x, wv).view(B, T, nkv, hd).transpose(1, 2)
    return apply_rope(k, cos, sin), v


def block_kv(h, cos, sin, ln1, wk, wv, eps: float, nkv: int, hd: int):
    return _kv(_rms(h, ln1, eps), wk, wv, cos, sin, nkv, hd)


def block_forward(h, cos, sin, kind: int, k, v, ln1, wq, wk, wv, wo, ln2, wg, wu, wd,
                  eps: float, nq: int, nkv: int, hd: int):
    """One layer, module-free so that one compiled graph serves every layer of the same kind.
    kind FULL with k None: the layer's own K/V (wk, wv given). Returns (h, own K/V or None)."""
    B, T, _ = h.shape
    x = _rms(h, ln1, eps)
    own = None
    if wk is not None:
        own = _kv(x, wk, wv, cos, sin, nkv, hd)
        if k is None:
            k, v = own
    if kind != NOKV:  # NOKV: zero source K/V -> zero attention output (o_proj has no bias)
        q = apply_rope(F.linear(x, wq).view(B, T, nq, hd).transpose(1, 2), cos, sin)
        if kind == FULL:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # STRICT: queries 1..T-1 against keys 0..T-2, causal; query 0 -> 0
            o = F.scaled_dot_product_attention(q[:, :, 1:], k[:, :, :-1], v[:, :, :-1],
                                               is_causal=True, enable_gqa=True)
            o = torch.cat([o.new_zeros(B, nq, 1, hd), o], dim=2)
        h = h + F.linear(o.transpose(1, 2).reshape(B, T, nq * hd), wo)
    x = _rms(h, ln2, eps)
    h = h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
    return h, own


class LCKVModel(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.group = cyclic_group(cfg.layer_types)
        self._rope = {}
        # callables, replaceable by compiled versions (see compile_blocks)
        self.bf, self.bkv = block_forward, block_kv

    def compile(self, **kw):
        """Compile the module-free layer functions (one graph per layer kind and grad mode)."""
        self.bf = torch.compile(block_forward, **kw)
        self.bkv = torch.compile(block_kv, **kw)

    def _call(self, i, h, cos, sin, kind, k=None, v=None):
        blk = self.layers[i]
        a = blk.self_attn
        return self.bf(h, cos, sin, kind, k, v, *blk.weights(), blk.cfg_eps, a.nq, a.nkv, a.hd)

    # ---------------------------------------------------------------- init / io
    def init_weights(self, seed, std=0.02):
        g = torch.Generator().manual_seed(seed)
        L = self.cfg.num_hidden_layers
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                s = std / math.sqrt(2 * L) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * s)

    def hf_state_dict(self):
        """Hugging Face Llama tensor names (lm_head tied: not stored)."""
        return {"model." + k: v for k, v in self.state_dict().items()}

    def load_hf_state_dict(self, sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        self.load_state_dict(sd, strict=True)

    def rope(self, T, device, dtype, offset=0):
        key = (T, offset, device, dtype)
        if key not in self._rope:
            pos = torch.arange(offset, offset + T)
            self._rope[key] = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, device, dtype)
        return self._rope[key]

    def logits(self, h):
        return F.linear(self.norm(h), self.embed_tokens.weight)

    # ---------------------------------------------------------------- parallel forward
    def _run(self, i, h, cos, sin, kvs, src):
        """Layer i in a parallel pass. kvs: K/V computed in this pass; src: previous iteration's."""
        t = self.cfg.layer_types[i]
        if t > i:
            if src is None:
                h, own = self._call(i, h, cos, sin, NOKV)
            else:
                k, v = src[t]
                h, own = self._call(i, h, cos, sin, STRICT, k, v)
        elif t < i:
            k, v = kvs[t]
            h, own = self._call(i, h, cos, sin, FULL, k, v)
        else:
            h, own = self._call(i, h, cos, sin, FULL)
        if own is not None:
            kvs[i] = own
        return h

    def _group_pass(self, h, cos, sin, kvs_below, src, update):
        """One iteration over the cyclic group. Returns (hidden or None, K/V of this iteration)."""
        low, high = self.group
        kvs = dict(kvs_below)
        for i in range(low, high):
            h = self._run(i, h, cos, sin, kvs, src)
        if not update:
            # only the K/V of the upward targets is needed from a non-update iteration; the highest
            # of them is `high`, whose attention and MLP output would be discarded
            blk = self.layers[high]
            kvs[high] = self.bkv(h, cos, sin, blk.input_layernorm.weight, blk.self_attn.k_proj.weight,
                                 blk.self_attn.v_proj.weight, blk.cfg_eps, blk.self_attn.nkv, blk.self_attn.hd)
            return None, kvs
        h = self._run(high, h, cos, sin, kvs, src)
        return h, kvs

    def hidden_parallel(self, ids, n_nograd, n_grad, return_kv=False):
        """Final hidden states before the norm. n_nograd iterations without grad, then n_grad with
        grad (the last updates the hidden state). Standard models: one ordinary pass."""
        cfg = self.cfg
        B, T = ids.shape
        dt = torch.get_autocast_dtype("cuda") if (ids.is_cuda and torch.is_autocast_enabled("cuda")) \
            else self.embed_tokens.weight.dtype
        cos, sin = self.rope(T, ids.device, dt)
        h = self.embed_tokens(ids)
        kvs = {}
        if self.group is None:
            for i in range(cfg.num_hidden_layers):
                h = self._run(i, h, cos, sin, kvs, None)
            return (h, kvs) if return_kv else h
        low, high = self.group
        for i in range(low):
            h = self._run(i, h, cos, sin, kvs, None)
        src = None
        if n_nograd:
            with torch.no_grad():
                for _ in range(n_nograd):
                    _, src = self._group_pass(h, cos, sin, kvs, src, update=False)
        for it in range(n_grad):
            last = it == n_grad - 1
            hn, kv_it = self._group_pass(h, cos, sin, kvs, src, update=last)
            if last:
                h, kvs = hn, kv_it
            else:
                src = kv_it
        for i in range(high + 1, cfg.num_hidden_layers):
            h = self._run(i, h, cos, sin, kvs, None)
        return (h, kvs) if return_kv else h

    def forward_train(self, ids):
        return self.hidden_parallel(ids, self.cfg.forward_passes, self.cfg.backward_passes)

    @torch.no_grad()
    def forward_iterative(self, ids, n_iter=None, return_kv=False):
        """Prefill semantics: n_iter (default m + b = 9) group iterations; returns logits (B,T,V)."""
        n_iter = n_iter or (self.cfg.forward_passes + self.cfg.backward_passes)
        out = self.hidden_parallel(ids, n_iter - 1, 1, return_kv=return_kv)
        if return_kv:
            h, kvs = out
            return self.logits(h), kvs
        return self.logits(out)


class Decoder:
    """Token-by-token (sequential) inference with a K/V cache: the exact LCKV semantics.

    Cache: for every layer that owns K/V, (B, nkv, T, hd) tensors. Prefill may come from
    forward_iterative (its K/V: for the group's layers, the last iteration's)."""

    def __init__(self, model: LCKVModel, batch: int, device, dtype, max_len):
        self.m, self.cfg = model, model.cfg
        c = self.cfg
        self.n = 0
        self.k = {i: torch.zeros(batch, c.num_key_value_heads, max_len, c.head_dim, device=device, dtype=dtype)
                  for i in sorted(set(c.layer_types))}
        self.v = {i: torch.zeros_like(t) for i, t in self.k.items()}
        self.cos, self.sin = rope_cos_sin(torch.arange(max_len), c.head_dim, c.rope_theta, device, dtype)

    def load_prefill(self, kvs, T):
        for i, (k, v) in kvs.items():
            self.k[i][:, :, :T] = k
            self.v[i][:, :, :T] = v
        self.n = T

    @torch.no_grad()
    def step(self, tok):
        """tok: (B,) ids at position self.n; returns logits (B, V)."""
        m, c, t = self.m, self.cfg, self.n
        cos, sin = self.cos[t:t + 1], self.sin[t:t + 1]
        h = m.embed_tokens(tok)[:, None, :]
        B = h.shape[0]
        for i, blk in enumerate(m.layers):
            a = blk.self_attn
            x = blk.input_layernorm(h)
            if blk.has_kv:
                k, v = blk.kv(x, cos, sin)
                self.k[i][:, :, t:t + 1] = k
                self.v[i][:, :, t:t + 1] = v
            tgt = c.layer_types[i]
            q = apply_rope(a.q_proj(x).view(B, 1, a.nq, a.hd).transpose(1, 2), cos, sin)
            # target K/V visible to this token: upward targets have not run yet for token t
            n_vis = t if tgt > i else t + 1
            if n_vis == 0:
                o = q.new_zeros(B, a.nq, 1, a.hd)
            else:
                o = F.scaled_dot_product_attention(q, self.k[tgt][:, :, :n_vis], self.v[tgt][:, :, :n_vis],
                                                   enable_gqa=True)
            h = h + a.o_proj(o.transpose(1, 2).reshape(B, 1, a.nq * a.hd))
            h = h + blk.mlp(blk.post_attention_layernorm(h))
        self.n = t + 1
        return m.logits(h)[:, 0]


@torch.no_grad()
def sequential_logits(model, ids, dtype=None):
    """All logits of ids (B, T) by token-by-token decoding from an empty cache."""
    dtype = dtype or model.embed_tokens.weight.dtype
    B, T = ids.shape
    dec = Decoder(model, B, ids.device, dtype, T)
    return torch.stack([dec.step(ids[:, t]) for t in range(T)], dim=1)


# -------------------------------------------------------------------- Hugging Face export
def hf_config(cfg: Config):
    lckv = cyclic_group(cfg.layer_types) is not None
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "dtype": "bfloat16",
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
        # LCKV (slimkv): t(i) per layer as the reference code's underscore-joined string
        "layer_types": cfg.layer_types_str,
        "lckv": lckv,
        "forward_passes": cfg.forward_passes,
        "backward_passes": cfg.backward_passes,
    }


def config_from_hf(d):
    lt = d.get("layer_types") or ""
    if isinstance(lt, list):
        lt = "_".join(str(x) for x in lt) if lt and isinstance(lt[0], int) else ""
    rp = d.get("rope_parameters") or {}
    return Config(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
        head_dim=d.get("head_dim", d["hidden_size"] // d["num_attention_heads"]),
        intermediate_size=d["intermediate_size"], rms_norm_eps=d["rms_norm_eps"],
        rope_theta=rp.get("rope_theta", d.get("rope_theta", 10000.0)),
        max_position_embeddings=d["max_position_embeddings"], layer_types=lt,
        forward_passes=d.get("forward_passes", 7), backward_passes=d.get("backward_passes", 2))


def save_hf(model: LCKVModel, out_dir, tokenizer_path=None, extra_files=None):
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in model.hf_state_dict().items()}
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(model.cfg), f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 0}, f, indent=2)
        f.write("\n")
    if tokenizer_path:
        import shutil
        shutil.copy(tokenizer_path, os.path.join(out_dir, "tokenizer.json"))
        tc = os.path.join(os.path.dirname(tokenizer_path), "tokenizer_config.json")
        if os.path.exists(tc):
            shutil.copy(tc, os.path.join(out_dir, "tokenizer_config.json"))


def load_hf(model_dir, device="cpu", dtype=torch.float32):
    from safetensors.torch import load_file
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = config_from_hf(json.load(f))
    model = LCKVModel(cfg)
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    model.load_hf_state_dict({k: v.to(dtype) for k, v in sd.items()})
    return model.to(device=device, dtype=dtype).eval()
