#!/usr/bin/env python3
"""A Hugging Face Llama model directory (config.json, safetensors, tokenizer.json) -> GGUF, written
with gguf-py as llama.cpp's converter writes it: the `llama.*` keys, the byte-level BPE tokenizer
(tokens by id, token types, merges, `tokenizer.ggml.pre`), and the weights with Q and K rows
permuted for ggml's RoPE (the converter's `permute`), in F32 or Q8_0, or `mix`: every matrix in
another stored type (Q4_0, Q4_1, Q5_0, Q8_0, F16, BF16, and Q4_K / Q5_K / Q6_K where the row is a
multiple of 256; the k-quants by this script's own simple quantisers, gguf-py has none), q, k and
v of one layer in three different types. With a tokenizer.json as
SRC (or --tokenizer-only), only the tokenizer metadata (no tensors). Used by the tests
(tests/test_gguf_convert.c) to check that a model and tokenizer read back from GGUF equal the
originals. Needs numpy and gguf (PyPI); exits 3 when they are missing.

    python3 scripts/hf_to_gguf.py ../shared/models/kvt-s out.gguf [--type f32|q8_0|mix] [--pre gpt2]
"""
import argparse, json, os, struct, sys

try:
    import numpy as np
    import gguf
except ImportError as e:  # the tests skip on this
    print("hf_to_gguf.py: %s (pip install numpy gguf)" % e, file=sys.stderr)
    sys.exit(3)


def read_safetensors(path):
    """name -> float32 array (F32, F16 and BF16 by hand: no torch needed)"""
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw = b[8 + n + s:8 + n + e]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F16":
            a = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            a = np.frombuffer(raw, dtype=np.float32).copy()
        out[k] = a.reshape(v["shape"])
    return out


def load_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        w = {}
        for f in sorted(set(json.load(open(idx))["weight_map"].values())):
            w.update(read_safetensors(os.path.join(d, f)))
        return w
    return read_safetensors(os.path.join(d, "model.safetensors"))


def permute(w, n_head):
    """llama.cpp's converter: HF's rotate-half row order -> ggml's interleaved pairs"""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def f16(a):
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def quant_q4_k(x, five=False):
    """(rows, n) float32, n % 256 == 0 -> Q4_K (or Q5_K) blocks as uint8 (rows, n / 256 * 144|176):
    per sub-block of 32 a scale and a minimum (x = d sc q - dmin m), 6-bit codes of d and dmin"""
    top = 31 if five else 15
    b = x.reshape(-1, 8, 32).astype(np.float32)
    mins = np.maximum(0.0, -b.min(axis=2))
    scale = (b.max(axis=2) + mins) / top
    d, dmin = f16(scale.max(axis=1) / 63), f16(mins.max(axis=1) / 63)
    sc = np.clip(np.round(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), 0, 63).astype(np.int32)
    m = np.clip(np.round(np.divide(mins, dmin[:, None], out=np.zeros_like(mins), where=dmin[:, None] > 0)), 0, 63).astype(np.int32)
    ds, dm = d[:, None] * sc, dmin[:, None] * m
    q = np.divide(b + dm[:, :, None], ds[:, :, None], out=np.zeros_like(b), where=ds[:, :, None] > 0)
    q = np.clip(np.round(q), 0, top).astype(np.uint8).reshape(-1, 256)
    sc8, m8 = sc.astype(np.uint8), m.astype(np.uint8)
    scales = np.zeros((b.shape[0], 12), np.uint8)
    scales[:, 0:4] = sc8[:, 0:4] | ((sc8[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = m8[:, 0:4] | ((m8[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc8[:, 4:8] & 0xF) | ((m8[:, 4:8] & 0xF) << 4)
    lo = q & 0xF
    qs = np.zeros((b.shape[0], 128), np.uint8)
    for p in range(4):
        qs[:, 32 * p:32 * p + 32] = lo[:, 64 * p:64 * p + 32] | (lo[:, 64 * p + 32:64 * p + 64] << 4)
    parts = [d.astype(np.float16).view(np.uint8).reshape(-1, 2), dmin.astype(np.float16).view(np.uint8).reshape(-1, 2), scales]
    if five:
        qh = np.zeros((b.shape[0], 32), np.uint8)
        for j in range(8):
            qh |= ((q[:, 32 * j:32 * j + 32] >> 4) & 1) << j
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1).reshape(x.shape[0], -1)


def quant_q6_k(x):
    """(rows, n) float32, n % 256 == 0 -> Q6_K blocks (rows, n / 256 * 210): an int8 scale per 16
    weights, q in -32..31"""
    b = x.reshape(-1, 16, 16).astype(np.float32)
    amax = np.abs(b).max(axis=2)
    scale = amax / 31
    d = f16(scale.max(axis=1) / 127)
    sc = np.clip(np.round(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), -128, 127)
    ds = d[:, None] * sc
    q = np.divide(b, ds[:, :, None], out=np.zeros_like(b), where=ds[:, :, None] > 0)
    u = (np.clip(np.round(q), -32, 31) + 32).astype(np.uint8).reshape(-1, 256)
    nb = b.shape[0]
    ql, qh = np.zeros((nb, 128), np.uint8), np.zeros((nb, 64), np.uint8)
    for h in range(2):
        u0, u1, u2, u3 = (u[:, 128 * h + 32 * k:128 * h + 32 * k + 32] for k in range(4))
        ql[:, 64 * h:64 * h + 32] = (u0 & 0xF) | ((u2 & 0xF) << 4)
        ql[:, 64 * h + 32:64 * h + 64] = (u1 & 0xF) | ((u3 & 0xF) << 4)
        qh[:, 32 * h:32 * h + 32] = (u0 >> 4) | ((u1 >> 4) << 2) | ((u2 >> 4) << 4) | ((u3 >> 4) << 6)
    parts = [ql, qh, sc.astype(np.int8).view(np.uint8), d.astype(np.float16).view(np.uint8).reshape(-1, 2)]
    return np.concatenate(parts, axis=1).reshape(x.shape[0], -1)


Q = gguf.GGMLQuantizationType
MIX_QKV = [(Q.Q5_0, Q.Q8_0, Q.Q4_1), (Q.Q4_0, Q.F16, Q.Q8_0), (Q.BF16, Q.Q5_0, Q.Q4_0), (Q.Q8_0, Q.Q4_1, Q.Q5_0)]
MIX_DOWN = [Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q4_K]


def mix_type(name):
    """the stored type of a matrix in the `mix` conversion"""
    if name == "token_embd.weight" or name == "output.weight":
        return Q.Q8_0
    l, part = int(name.split(".")[1]) % 4, name.split(".")[2]
    if part in ("attn_q", "attn_k", "attn_v"):
        return MIX_QKV[l][("attn_q", "attn_k", "attn_v").index(part)]
    return {"attn_output": [Q.Q4_1, Q.Q8_0, Q.F16, Q.Q5_0][l], "ffn_gate": [Q.Q8_0, Q.Q5_0, Q.Q4_1, Q.Q4_0][l],
            "ffn_up": [Q.Q5_0, Q.Q4_0, Q.Q8_0, Q.Q4_1][l], "ffn_down": MIX_DOWN[l]}[part]


def quantize(t, qt):
    """t (rows, n) float32 -> (raw array, raw dtype) for gguf-py; the k-quants checked against
    gguf-py's dequantiser"""
    if qt == Q.F16:
        return t.astype(np.float16), None
    if qt in (Q.Q4_K, Q.Q5_K, Q.Q6_K) and t.shape[1] % 256 == 0:
        q = quant_q6_k(t) if qt == Q.Q6_K else quant_q4_k(t, five=qt == Q.Q5_K)
        back = gguf.quants.dequantize(q, qt)
        err = np.abs(back - t).max() / max(np.abs(t).max(), 1e-12)
        assert err < {Q.Q4_K: 0.15, Q.Q5_K: 0.08, Q.Q6_K: 0.04}[qt], "%s quantiser error %.3f" % (qt.name, err)
        return q, qt
    if qt in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        qt = Q.Q8_0
    q = gguf.quants.quantize(t, qt)
    return q, qt


def pre_of(tj):
    """the tokenizer.ggml.pre name whose pre-tokenizer this tokenizer.json has"""
    p = json.dumps(tj.get("pre_tokenizer"))
    if "\\\\p{N}{1,3}" in p:
        return "llama-bpe"
    if "Split" in p and "\\\\p{N}|" in p:
        return "qwen2"
    if "Digits" in p:
        return "smollm"
    return "gpt2"


def add_tokenizer(w, tj, pre):
    model = tj["model"]
    assert model["type"] == "BPE", "byte-level BPE tokenizers only"
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    n = max(list(model["vocab"].values()) + list(added.keys())) + 1
    toks, types = ["[PAD%d]" % i for i in range(n)], [gguf.TokenType.UNUSED] * n
    for t, i in model["vocab"].items():
        toks[i], types[i] = t, gguf.TokenType.NORMAL
    for i, a in added.items():
        toks[i] = a["content"]
        types[i] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre or pre_of(tj))
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src"), ap.add_argument("out")
    ap.add_argument("--type", choices=["f32", "q8_0", "mix"], default="f32")
    ap.add_argument("--pre", default=None)
    ap.add_argument("--tokenizer-only", action="store_true")
    a = ap.parse_args()
    tok_path = a.src if a.src.endswith(".json") else os.path.join(a.src, "tokenizer.json")
    tj = json.load(open(tok_path, encoding="utf-8"))
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(os.path.basename(os.path.normpath(a.src)))
    n_vocab = add_tokenizer(w, tj, a.pre)
    if not (a.tokenizer_only or a.src.endswith(".json")):
        c = json.load(open(os.path.join(a.src, "config.json")))
        hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        nh, nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        theta = (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0))
        w.add_context_length(c["max_position_embeddings"])
        w.add_embedding_length(c["hidden_size"])
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_block_count(c["num_hidden_layers"])
        w.add_head_count(nh)
        w.add_head_count_kv(nkv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(float(theta))
        w.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
        w.add_vocab_size(n_vocab)
        if c.get("bos_token_id") is not None:
            w.add_bos_token_id(c["bos_token_id"])
        if c.get("eos_token_id") is not None:
            w.add_eos_token_id(c["eos_token_id"])
        wt = load_weights(a.src)
        names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
        per = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight"}
        for l in range(c["num_hidden_layers"]):
            for k, v in per.items():
                names["model.layers.%d.%s" % (l, k)] = "blk.%d.%s" % (l, v)
        for k in sorted(wt):
            if k not in names:
                sys.exit("hf_to_gguf.py: unexpected tensor %s" % k)
            t = wt[k]
            if k.endswith("q_proj.weight"):
                t = permute(t, nh)
            elif k.endswith("k_proj.weight"):
                t = permute(t, nkv)
            if a.type == "mix" and t.ndim == 2:
                q, qt = quantize(np.ascontiguousarray(t, dtype=np.float32), mix_type(names[k]))
                if qt is None:
                    w.add_tensor(names[k], q)
                else:
                    w.add_tensor(names[k], q, raw_shape=q.shape, raw_dtype=qt)
            elif a.type == "q8_0" and t.ndim == 2:
                q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(names[k], q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(names[k], np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
