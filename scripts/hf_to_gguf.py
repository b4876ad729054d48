#!/usr/bin/env python3
"""A Hugging Face Llama model directory (config.json, safetensors, tokenizer.json) -> GGUF, written
with gguf-py as llama.cpp's converter writes it: the `llama.*` keys, the byte-level BPE tokenizer
(tokens by id, token types, merges, `tokenizer.ggml.pre`), and the weights with Q and K rows
permuted for ggml's RoPE (the converter's `permute`), in F32 or Q8_0. With a tokenizer.json as
SRC (or --tokenizer-only), only the tokenizer metadata (no tensors). Used by the tests
(tests/test_gguf_convert.c) to check that a model and tokenizer read back from GGUF equal the
originals. Needs numpy and gguf (PyPI); exits 3 when they are missing.

    python3 scripts/hf_to_gguf.py ../shared/models/kvt-s out.gguf [--type f32|q8_0] [--pre gpt2]
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
    ap.add_argument("--type", choices=["f32", "q8_0"], default="f32")
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
            if a.type == "q8_0" and t.ndim == 2:
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
