"""Reference logits of an exported model, golden.json-style (docs/evaluation.md section 1), computed
by train/model.py in float32 from the bf16 weights, in both LCKV semantics.

python3 train/ref_logits.py models/lckv-w2 [--golden ../shared/models/kvt-l/golden.json] [--out DIR/reference.json]

Per prompt (the four prompts of kvt-l's golden.json and one longer val-corpus excerpt):
  top-level  top_ids / top_logits (8 largest logits at every position), last_logits (all),
             greedy32 (+ text): the PREFILL semantics, i.e. the engine's default path: the prompt in
             one parallel pass with the LCKV group iterated m + b = 9 times, the K/V of the last
             iteration cached, then 32 greedy tokens decoded one at a time (token 0 not a stop).
  sequential the same four fields with the prompt processed token by token as well (the exact model:
             every condensed layer sees the source K/V of all earlier tokens, never its own).
  prefill_vs_sequential_max_abs: max |logit difference| of the two over the prompt.
For a standard model both are the same computation; the file also records the max difference from
Hugging Face transformers (eager, float32) when transformers is installed.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
from model import Decoder, load_hf, sequential_logits  # noqa: E402

LONG_CHARS = 1500


def r5(t):
    return [round(float(x), 5) for x in t]


def fields(lg_prompt, greedy, tok):
    top = torch.topk(lg_prompt, 8, dim=-1)
    return {"top_ids": top.indices.tolist(), "top_logits": [r5(r) for r in top.values],
            "last_logits": r5(lg_prompt[-1]), "greedy32": greedy, "greedy32_text": tok.decode(greedy)}


@torch.no_grad()
def run_prompt(model, ids, tok, n_new=32):
    x = torch.tensor([ids])
    T = len(ids)
    # prefill semantics
    lg_p, kvs = model.forward_iterative(x, return_kv=True)
    dec = Decoder(model, 1, "cpu", torch.float32, T + n_new)
    dec.load_prefill(kvs, T)
    g, nxt = [], int(lg_p[0, -1].argmax())
    for _ in range(n_new):
        g.append(nxt)
        nxt = int(dec.step(torch.tensor([nxt]))[0].argmax())
    pre = fields(lg_p[0], g, tok)
    # sequential semantics
    dec = Decoder(model, 1, "cpu", torch.float32, T + n_new)
    lg_s = torch.stack([dec.step(x[:, t])[0] for t in range(T)])
    g, nxt = [], int(lg_s[-1].argmax())
    for _ in range(n_new):
        g.append(nxt)
        nxt = int(dec.step(torch.tensor([nxt]))[0].argmax())
    seq = fields(lg_s, g, tok)
    return pre, seq, float((lg_p[0] - lg_s).abs().max()), lg_p[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--golden", default="../shared/models/kvt-l/golden.json")
    p.add_argument("--val", default="../shared/data/corpus.val.txt.xz")
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    gold = json.load(open(a.golden))
    tok = D.load_tokenizer(os.path.join(a.model_dir, "tokenizer.json"))
    for e in gold["tokenizer"]:
        assert tok.encode(e["text"], add_special_tokens=False).ids == e["ids"], e["text"]
    model = load_hf(a.model_dir, "cpu", torch.float32)
    texts = [q["text"] for q in gold["prompts"]]
    doc = next(d for d in D.read_docs(a.val) if len(d) > 4 * LONG_CHARS and "#include" in d)
    texts.append(doc[:LONG_CHARS])
    hf = None
    if model.group is None:
        try:
            from transformers import LlamaConfig, LlamaForCausalLM
            cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
            for k in ("layer_types", "lckv", "forward_passes", "backward_passes"):
                cfg.pop(k, None)  # transformers >= 5 rejects an LCKV layer_types string
            hf = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="eager"))
            from safetensors.torch import load_file
            sd = {k: v.float() for k, v in load_file(os.path.join(a.model_dir, "model.safetensors")).items()}
            hf.load_state_dict(sd, strict=False)
            hf.tie_weights()
            hf.eval()
        except ImportError:
            hf = None
    out = {
        "model": os.path.basename(os.path.normpath(a.model_dir)),
        "dtype": "float32 compute from bf16 weights (train/model.py, CPU)",
        "layer_types": model.cfg.layer_types_str,
        "prefill_iterations": (model.cfg.forward_passes + model.cfg.backward_passes) if model.group else 1,
        "semantics": __doc__.split("Per prompt")[1].strip(),
        "tokenizer": gold["tokenizer"],
        "prompts": [],
    }
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        pre, seq, d, lg = run_prompt(model, ids, tok)
        q = {"text": text, "ids": ids, **pre, "sequential": seq, "prefill_vs_sequential_max_abs": round(d, 6)}
        if hf is not None:
            with torch.no_grad():
                ref = hf(torch.tensor([ids])).logits[0]
            q["transformers_max_abs_diff"] = float((ref - lg).abs().max())
            assert q["transformers_max_abs_diff"] < 1e-3, q["transformers_max_abs_diff"]
        print(f"{len(ids):4d} tokens  prefill vs sequential max |dlogit| {d:.4f}  "
              f"greedy equal: {pre['greedy32'] == seq['greedy32']}"
              + (f"  transformers diff {q['transformers_max_abs_diff']:.2e}" if hf is not None else "")
              + f"  | {pre['greedy32_text'][:50]!r}", flush=True)
        out["prompts"].append(q)
    path = a.out or os.path.join(a.model_dir, "reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print("wrote", path)


if __name__ == "__main__":
    main()
