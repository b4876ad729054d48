#!/usr/bin/env python3
"""PyTorch reference timings for `slimkv bench --backend cuda` (run on the GPU machine).

Loads a Hugging Face model directory (as written by `slimkv mkmodel`) with transformers in
bf16 with attn_implementation="sdpa" and times, with CUDA events after a warm-up:
  pp<P>        one forward pass over P random tokens (cache built, logits of the last token only)
  tg<N>@d<D>   N greedy single-token steps after a D-token prefill (DynamicCache), batch 1
  bs<B>@d<D>   N steps of B sequences decoded together after a D-token prefill
  with --compiled, also PyTorch's best decode path: a StaticCache of D+N rows and the one-token
  step under torch.compile(mode="reduce-overhead") (CUDA graphs), as tg<N>@d<D>/compiled and
  bs<B>@d<D>/compiled; compilation and graph capture happen in the warm-up, outside the timing.
Writes JSON (--out) with the same test names as slimkv's bench.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache


def empty():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(fn, reps):
    fn()  # warm-up
    if not torch.cuda.is_available():  # --device cpu dry run: wall clock
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--pps", default="4096,16384")
    ap.add_argument("--depths", default="4096,16384,32768")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--batch-depth", type=int, default=1024)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--compiled", action="store_true",
                    help="also time decode with a StaticCache and torch.compile(reduce-overhead)")
    ap.add_argument("--device", default="cuda", help="cuda (timings) or cpu (a dry run of the code paths)")
    a = ap.parse_args()
    t0 = time.time()
    dev = a.device
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").to(dev).eval()
    load_s = time.time() - t0
    V = model.config.vocab_size
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []

    def ids(b, n):
        return torch.randint(0, V, (b, n), device=dev, generator=g)

    with torch.inference_mode():
        for p in [int(x) for x in a.pps.split(",") if x]:
            x = ids(1, p)
            ms = timed(lambda: model(x, use_cache=True, logits_to_keep=1), a.reps)
            rows.append({"test": f"pp{p}", "n": p, "batch": 1, "ms": ms})

        def decode(b, d):
            x = ids(b, d)
            cache = DynamicCache()
            out = model(x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)

            def run():
                nonlocal nxt
                c = cache
                # each repetition continues the same cache by crop-and-regrow
                extra = c.get_seq_length() - d
                if extra > 0:  # a negative crop removes that many rows (all transformers versions)
                    c.crop(-extra)
                t = nxt
                for _ in range(a.tg):
                    o = model(t, past_key_values=c, use_cache=True)
                    t = o.logits[:, -1].argmax(-1, keepdim=True)
            return run

        def decode_static(b, d):
            # PyTorch's fastest decode: a preallocated cache (fixed shapes) and the one-token
            # step compiled with CUDA graphs. Every repetition rewrites rows d..d+N-1.
            x = ids(b, d)
            try:
                cache = StaticCache(config=model.config, max_cache_len=d + a.tg)
            except TypeError:  # older transformers
                cache = StaticCache(config=model.config, max_batch_size=b, max_cache_len=d + a.tg,
                                    device=dev, dtype=torch.bfloat16)
            out = model(x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            first = out.logits[:, -1].argmax(-1, keepdim=True)
            # transformers 5 keeps each static layer's length as a device tensor and derives the
            # positions from it: every repetition sets it back to d in place (its address is static)
            lengths = [l.cumulative_length for l in getattr(cache, "layers", [])
                       if torch.is_tensor(getattr(l, "cumulative_length", None))]
            if not lengths:
                raise SystemExit("torch_bench: this transformers' StaticCache has no per-layer length tensor")

            def step(t):
                o = model(t, past_key_values=cache, use_cache=True)
                return o.logits[:, -1].argmax(-1, keepdim=True)
            if dev == "cuda":
                step = torch.compile(step, mode="reduce-overhead", fullgraph=True)

            def run():
                for n in lengths:
                    n.fill_(d)
                t = first
                for i in range(a.tg):
                    t = step(t).clone()
            run()  # compile and capture (timed() warms up once more)
            return run

        variants = [("", decode)] + ([("/compiled", decode_static)] if a.compiled else [])
        for suffix, make in variants:
            for d in [int(x) for x in a.depths.split(",") if x]:
                ms = timed(make(1, d), a.reps)
                rows.append({"test": f"tg{a.tg}@d{d}{suffix}", "n": a.tg, "depth": d, "batch": 1, "ms": ms})
                empty()
            for b in [int(x) for x in a.batches.split(",") if x]:
                ms = timed(make(b, a.batch_depth), a.reps)
                rows.append({"test": f"bs{b}@d{a.batch_depth}{suffix}", "n": a.tg, "depth": a.batch_depth,
                             "batch": b, "ms": ms})
                empty()
    for r in rows:
        r["ms_mean"] = statistics.mean(r["ms"])
        toks = r["n"] * (r["batch"] if r["test"].startswith(("tg", "bs")) else 1)
        r["tokens_per_s"] = toks / (r["ms_mean"] / 1e3)
        print(f'{r["test"]:16s} {r["ms_mean"]:10.2f} ms {r["tokens_per_s"]:12.1f} tok/s', flush=True)
    import transformers
    res = {"framework": f"torch {torch.__version__}, transformers {transformers.__version__} (sdpa, bf16, DynamicCache" +
                        ("; /compiled rows: StaticCache + torch.compile reduce-overhead" if a.compiled else "") + ")",
           "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "model": a.model, "load_seconds": load_s, "results": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
