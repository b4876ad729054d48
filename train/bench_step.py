"""Training-step throughput of the kvt-l shape, standard and LCKV, on random tokens (no corpus).

python3 train/bench_step.py [--steps 6] [--specs std:1,w2:1,w4:1,std:0,w2:0]   (name:compile)
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, LCKVModel  # noqa: E402
from train import head_loss  # noqa: E402

LT = {"std": "", "w2": "0_8_8_8_8_8_8_8_8_9", "w4": "0_1_7_7_7_7_7_7_8_9"}


def bench(name, comp, steps, batch, ctx):
    torch.manual_seed(0)
    cfg = Config(layer_types=LT[name])
    model = LCKVModel(cfg)
    model.init_weights(0)
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    hl = head_loss
    if comp:
        model.compile()
        hl = torch.compile(head_loss)
    x = torch.randint(0, cfg.vocab_size, (batch, ctx + 1), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model.forward_train(x[:, :-1])
            loss = hl(h, model.norm.weight, model.embed_tokens.weight, x[:, 1:], cfg.rms_norm_eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.time()
    step().item()
    first = time.time() - t0
    step().item()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(steps):
        loss = step()
    e1.record()
    torch.cuda.synchronize()
    ms = e0.elapsed_time(e1) / steps
    r = {"model": name, "compile": comp, "first_step_s": round(first, 1), "step_ms": round(ms, 1),
         "tok_s": round(batch * ctx / ms * 1e3), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
         "loss": round(loss.item(), 3)}
    print(json.dumps(r), flush=True)
    return r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--specs", default="std:1,w2:1,w4:1,std:0,w2:0")
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    res = []
    for spec in a.specs.split(","):
        name, comp = spec.split(":")
        res.append(bench(name, int(comp), a.steps, a.batch, a.ctx))
    if a.out:
        json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
