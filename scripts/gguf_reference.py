#!/usr/bin/env python3
"""Reference outputs of the GGUF models from an independent implementation: Hugging Face
transformers loading the GGUF file (dequantised to float32 by gguf-py; its tokenizer converted from
the GGUF metadata), torch float32 on the CPU. Writes tests/data/gguf_ref/<model>.json, read by
tests/test_gguf_models.c when models/<model>.gguf is present (scripts/get-models.sh).

    pip install torch transformers gguf sentencepiece
    python3 scripts/gguf_reference.py [model.gguf ...]      (default: every models/*.gguf)

Per model: for each string of STRINGS, the token ids (no special tokens added); for each prompt of
PROMPTS (BOS first where the file says add_bos_token), the ids, the TOPK largest last-position
logits with their ids, and the logits at PROBE fixed ids; for the first GREEDY prompts, 32 greedy
tokens with the margin (top-1 minus top-2 logit) at each step."""
import json, os, sys, time
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from gguf import GGUFReader

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOPK, GREEDY_N = 40, 32
STRINGS = [
    "The capital of France is",
    "Hello world, 12345 héllo!",
    "  leading spaces, tabs\tand\nnewlines\n\n  end",
    "Größe, naïve café — 東京タワーは日本にあります。 Emoji: 🚀🙂 ελληνικά, русский, עברית",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "It's 3.14159 and they've CamelCaseWords don't 2024-12-01",
    "<|im_start|>user\nhi<|im_end|>\n<start_of_turn>model\n",
]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Größe, naïve café — 東京タワーは日本にあります。 Emoji: 🚀🙂",
    None,  # the model's chat template on one user turn (filled in below)
]
GREEDY = 2


def meta(path):
    r = GGUFReader(path)
    out = {}
    for k in ("tokenizer.chat_template", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id"):
        f = r.fields.get(k)
        if f is not None:
            v = f.parts[f.data[0]]
            out[k] = bytes(v).decode() if k.endswith("template") else v.tolist()[0]
    return out


def chat_text(tmpl):
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(tmpl).render(messages=[{"role": "user", "content": "What is 2+2? Answer briefly."}],
                                        add_generation_prompt=True, bos_token="", eos_token="")


def main(paths):
    torch.set_num_threads(2)
    os.makedirs(os.path.join(ROOT, "tests", "data", "gguf_ref"), exist_ok=True)
    for path in paths:
        d, f = os.path.split(os.path.abspath(path))
        name = f[:-5]
        t0 = time.time()
        m = meta(path)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
        model.eval()
        vocab = model.config.vocab_size
        rng = np.random.default_rng(15)
        probe = sorted(set(rng.integers(0, vocab, size=64).tolist()))
        bos = m.get("tokenizer.ggml.bos_token_id") if m.get("tokenizer.ggml.add_bos_token") else None
        ref = {"model": f, "reference": "transformers %s GGUF loader (gguf-py %s dequantisation), torch %s float32 CPU" % (
            __import__("transformers").__version__, __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else "?",
            torch.__version__), "bos": bos, "probe_ids": probe, "strings": [], "prompts": []}
        for s in STRINGS:
            ref["strings"].append({"text": s, "ids": tok.encode(s, add_special_tokens=False)})
        prompts = list(PROMPTS)
        prompts[3] = chat_text(m["tokenizer.chat_template"]) if m.get("tokenizer.chat_template") else None
        for i, p in enumerate(prompts):
            if p is None:
                continue
            ids = tok.encode(p, add_special_tokens=False)
            if bos is not None:
                ids = [bos] + ids
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].float().numpy()
            top = np.argsort(-logits, kind="stable")[:TOPK]
            e = {"text": p, "ids": ids, "top_ids": top.tolist(), "top_logits": [float(logits[j]) for j in top],
                 "probe_logits": [float(logits[j]) for j in probe]}
            if i < GREEDY:
                seq, gen, margins = list(ids), [], []
                with torch.no_grad():
                    out = model(torch.tensor([seq]), use_cache=True)
                    past = out.past_key_values
                    lg = out.logits[0, -1]
                    for _ in range(GREEDY_N):
                        v, ix = torch.topk(lg, 2)
                        nxt = int(ix[0])
                        gen.append(nxt)
                        margins.append(float(v[0] - v[1]))
                        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                        past, lg = out.past_key_values, out.logits[0, -1]
                e["greedy"] = gen
                e["greedy_margins"] = margins
            ref["prompts"].append(e)
        out = os.path.join(ROOT, "tests", "data", "gguf_ref", name + ".json")
        json.dump(ref, open(out, "w"), ensure_ascii=False, indent=0)
        print("%s: %d strings, %d prompts in %.0f s -> %s" % (f, len(ref["strings"]), len(ref["prompts"]), time.time() - t0, out))
        del model


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(p for p in __import__("glob").glob(os.path.join(ROOT, "models", "*.gguf"))))
