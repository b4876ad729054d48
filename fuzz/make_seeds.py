#!/usr/bin/env python3
"""make_seeds.py — writes the seed corpora of fuzz/corpus/<target>/ from the real files of the
repository and ../shared (run from the repository root; the output is committed, so this only
documents where each seed comes from and lets it be regenerated)."""
import json, os, struct, sys

SHARED = sys.argv[1] if len(sys.argv) > 1 else "../shared"
OUT = "fuzz/corpus"


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def st_file(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


# safetensors: kvt-s's real header cut down to its norm vectors (offsets rebased, their real
# bytes), a hand-made file of each dtype, and the real header followed by only 64 data bytes
raw = open("models/kvt-s/model.safetensors", "rb").read()
hlen = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + hlen])
data0 = 8 + hlen
keep = {"__metadata__": hdr.get("__metadata__", {})}
blob = b""
for name, e in sorted(hdr.items()):
    if name == "__metadata__" or "norm" not in name or len(keep) > 4:
        continue
    b, en = e["data_offsets"]
    keep[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [len(blob), len(blob) + en - b]}
    blob += raw[data0 + b:data0 + en]
put("safetensors", "kvt-s-norms.safetensors", st_file(keep, blob))
put("safetensors", "dtypes.safetensors", st_file({
    "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
    "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    "c": {"dtype": "F16", "shape": [1, 1, 2, 2], "data_offsets": [20, 28]}}, bytes(range(28))))
put("safetensors", "kvt-s-header-truncated.safetensors", raw[:data0 + 64])

# sharded index: one for the shards the harness writes, and kvt-l's real index
put("st_index", "two-shards.json", json.dumps({"metadata": {"total_size": 28}, "weight_map": {
    "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00001-of-00002.safetensors",
    "c.weight": "model-00002-of-00002.safetensors"}}, indent=2))
put("st_index", "kvt-l.index.json", open(f"{SHARED}/models/kvt-l/model.safetensors.index.json", "rb").read())

# config.json: kvt-s and kvt-l as shipped; kvt-s as Qwen2, as Mistral, with llama3 and linear RoPE
put("config", "kvt-s.json", open("models/kvt-s/config.json", "rb").read())
put("config", "kvt-l.json", open(f"{SHARED}/models/kvt-l/config.json", "rb").read())
c = json.load(open("models/kvt-s/config.json"))
q = dict(c, architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False, sliding_window=4096)
put("config", "qwen2.json", json.dumps(q, indent=2))
m = dict(c, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=64, head_dim=64)
put("config", "mistral.json", json.dumps(m, indent=2))
l3 = dict(c, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}, eos_token_id=[0, 1])
put("config", "llama3-rope.json", json.dumps(l3, indent=2))
put("config", "linear-rope.json", json.dumps(dict(c, rope_scaling={"type": "linear", "factor": 2.0}), indent=2))


# tokenizer.json: the real ones with the vocabulary cut to its first entries and the merges
# that stay inside it (every other part as it is)
def trim(path, n):
    t = json.load(open(path))
    m = t["model"]
    vocab = {k: v for k, v in m["vocab"].items() if v < n}
    added = [a for a in t["added_tokens"] if a["id"] < n] or t["added_tokens"][:1]
    for a in added:
        vocab.setdefault(a["content"], a["id"]) if a["id"] < n else None
    merges = []
    for mg in m["merges"]:
        a, b = mg if isinstance(mg, list) else mg.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    t["added_tokens"] = [a for a in added if a["id"] < n]
    return json.dumps(t, ensure_ascii=False, indent=1)


put("tokenizer_json", "kvt-s.json", trim("models/kvt-s/tokenizer.json", 300))
for k in ["bl_gpt2", "bl_llama3", "bl_mix", "bl_qwen2", "bl_ws_nodecoder", "bpe_suffix", "spm_llama2",
          "spm_metaspace", "spm_unk"]:
    put("tokenizer_json", k + ".json", trim(f"tests/data/tok/{k}.tokenizer.json", 300))

# tokenize: first byte = which tokenizer (fuzz_tokenize.c's list), then the text
texts = [b"It is a truth universally acknowledged, that a single man in possession of a good fortune",
         b"static int foo(struct bar *b) {\n\treturn b->x + 42;\n}\n",
         "na\u00efve caf\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001F600 <|endoftext|> <s></s>  \u2581x".encode(),
         b"bad \xff\xfe utf-8 \xc3 \xe2\x82 end\r\n\x00tail"]
for i in range(10):
    for j, tx in enumerate(texts):
        put("tokenize", f"tok{i}-{j}.bin", bytes([i]) + tx)

# task lines: first byte = the per-task row limit; two real rows (contexts shortened) and a
# row with every field escaped
rows = [json.loads(l) for l in open(f"{SHARED}/data/tasks.val.jsonl")][:400:80]
lines = "".join(json.dumps(dict(r, context=r["context"][-300:])) + "\n" for r in rows[:3])
put("tasks", "real-rows.jsonl", b"\x01" + lines.encode())
put("tasks", "escapes.jsonl", b"\x00" + json.dumps({"task": "passkey", "context": "a\u00e9\n\t\"q\"\\",
                                                    "answer": " 1"}).encode() + b"\r\n\n  \n")
