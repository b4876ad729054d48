#!/usr/bin/env python3
"""A random-weight GGUF file with the shape and the per-tensor stored types of a real quantized
model, for speed measurements where the real file cannot go (the GPU machine takes 64 MiB).
Needs numpy only (GGUF v3 written by hand: no gguf-py on the GPU machine).

    python3 scripts/mk_gguf_shape.py [--shape qwen2.5-1.5b-q4_k_m] [--layers N] OUT.gguf

qwen2.5-1.5b-q4_k_m is Qwen2.5-Coder-1.5B-Instruct Q4_K_M as the published file has it (checked
against models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf): 28 layers, hidden 1536, ffn 8960, 12/2
heads of 128, vocab 151936, untied; Q4_K everywhere except attn_v and ffn_down in Q6_K on layers
0, 1, 5-10, 13, 16, 19, 21, 24, 27 (as in the published file) and output.weight in Q6_K; norms and q/k/v biases F32. Block contents are random bytes with f16
scales set so that weights are of order 0.02; the tokenizer is placeholder tokens (ids only).
"""
import argparse, struct, sys

try:
    import numpy as np
except ImportError as e:
    print("mk_gguf_shape.py: %s" % e, file=sys.stderr)
    sys.exit(3)

# ggml type id, block weights, block bytes, offsets of f16 scale fields and their magnitude
TYPES = {"F32": (0, 1, 4, [], 0), "Q4_K": (12, 256, 144, [0, 2], 2e-5), "Q6_K": (14, 256, 210, [208], 5e-6)}

SHAPES = {"qwen2.5-1.5b-q4_k_m": dict(arch="qwen2", L=28, D=1536, F=8960, H=12, KVH=2, hd=128, V=151936, ctx=32768,
                                      theta=1e6, eps=1e-6, bias=True, tied=False, base="Q4_K", more="Q6_K",
                                      more_parts=("attn_v", "ffn_down"), out="Q6_K", emb="Q4_K",
                                      more_layers=(0, 1, 5, 6, 7, 8, 9, 10, 13, 16, 19, 21, 24, 27))}


def tensors(s, L):
    D, F, H, KVH, hd, V = s["D"], s["F"], s["H"], s["KVH"], s["hd"], s["V"]
    out = [("token_embd.weight", s["emb"], (V, D))]
    for i in range(L):
        big = i in s["more_layers"]
        t = lambda part: s["more"] if big and part in s["more_parts"] else s["base"]
        b = "blk.%d." % i
        out += [(b + "attn_norm.weight", "F32", (D,)), (b + "ffn_norm.weight", "F32", (D,)),
                (b + "attn_q.weight", t("attn_q"), (H * hd, D)), (b + "attn_k.weight", t("attn_k"), (KVH * hd, D)),
                (b + "attn_v.weight", t("attn_v"), (KVH * hd, D)), (b + "attn_output.weight", t("attn_output"), (D, H * hd)),
                (b + "ffn_gate.weight", t("ffn_gate"), (F, D)), (b + "ffn_up.weight", t("ffn_up"), (F, D)),
                (b + "ffn_down.weight", t("ffn_down"), (D, F))]
        if s["bias"]:
            out += [(b + "attn_q.bias", "F32", (H * hd,)), (b + "attn_k.bias", "F32", (KVH * hd,)),
                    (b + "attn_v.bias", "F32", (KVH * hd,))]
    out += [("output_norm.weight", "F32", (D,))]
    if not s["tied"]:
        out.append(("output.weight", s["out"], (V, D)))
    return out


def nbytes(ty, shape):
    _, blk, bb, _, _ = TYPES[ty]
    n = 1
    for x in shape:
        n *= x
    return n // blk * bb


def data(name, ty, shape, rng):
    if ty == "F32":
        n = int(np.prod(shape))
        if name.endswith("norm.weight"):
            return np.ones(n, np.float32).tobytes()
        return (rng.standard_normal(n).astype(np.float32) * 0.02).tobytes()
    _, blk, bb, offs, mag = TYPES[ty]
    nb = int(np.prod(shape)) // blk
    b = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for o in offs:
        h = (rng.random(nb, dtype=np.float32) * mag).astype(np.float16)
        b[:, o:o + 2] = h.view(np.uint8).reshape(nb, 2)
    return b.tobytes()


def gstr(s):
    e = s.encode()
    return struct.pack("<Q", len(e)) + e


def kv(key, ty, val):
    if ty == "u32":
        return gstr(key) + struct.pack("<II", 4, val)
    if ty == "f32":
        return gstr(key) + struct.pack("<If", 6, val)
    if ty == "str":
        return gstr(key) + struct.pack("<I", 8) + gstr(val)
    if ty == "strs":
        return gstr(key) + struct.pack("<IIQ", 9, 8, len(val)) + b"".join(gstr(v) for v in val)
    raise ValueError(ty)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="qwen2.5-1.5b-q4_k_m", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=0, help="fewer layers (0: the model's)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    L = a.layers or s["L"]
    ar = s["arch"]
    meta = [kv("general.architecture", "str", ar), kv("general.name", "str", "random " + a.shape),
            kv(ar + ".block_count", "u32", L), kv(ar + ".context_length", "u32", s["ctx"]),
            kv(ar + ".embedding_length", "u32", s["D"]), kv(ar + ".feed_forward_length", "u32", s["F"]),
            kv(ar + ".attention.head_count", "u32", s["H"]), kv(ar + ".attention.head_count_kv", "u32", s["KVH"]),
            kv(ar + ".rope.freq_base", "f32", s["theta"]), kv(ar + ".attention.layer_norm_rms_epsilon", "f32", s["eps"]),
            kv("general.alignment", "u32", 32), kv("tokenizer.ggml.model", "str", "gpt2"),
            kv("tokenizer.ggml.pre", "str", "qwen2"),
            kv("tokenizer.ggml.tokens", "strs", ["<t%d>" % i for i in range(s["V"])])]
    ts = tensors(s, L)
    info, off = b"", 0
    for name, ty, shape in ts:
        dims = tuple(reversed(shape))  # ggml order: the row length first
        info += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        info += struct.pack("<IQ", TYPES[ty][0], off)
        off += (nbytes(ty, shape) + 31) // 32 * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(ts), len(meta)) + b"".join(meta) + info
    rng = np.random.default_rng(a.seed)
    with open(a.out, "wb") as f:
        f.write(head)
        f.write(b"\0" * ((32 - len(head) % 32) % 32))
        for name, ty, shape in ts:
            d = data(name, ty, shape, rng)
            f.write(d)
            f.write(b"\0" * ((32 - len(d) % 32) % 32))
    print("%s: %d tensors, %.1f MB of tensor data" % (a.out, len(ts), off / 1e6))


if __name__ == "__main__":
    main()
