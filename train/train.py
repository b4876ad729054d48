"""Pretraining of kvt-l-shaped models, standard or LCKV (layer_types), on the shared corpus.

Data order: the training corpus is tokenised in file order ([0] + ids per document, concatenated)
and cut into non-overlapping windows of ctx + 1 tokens (stride ctx); epoch e visits the windows in
the order torch.randperm(n_windows, generator seeded with seed * 1000 + e); step s takes global
samples s*batch .. (s+1)*batch - 1. The order depends on (seed, step) only, so the same seed gives
the same batches for every layer_types, and a resumed run continues exactly.

Example (kvt-l shape, LCKV w=2):
  python3 train/train.py --layer-types 0_8_8_8_8_8_8_8_8_9 --tokens 100e6 --out runs/w2
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
from model import Config, LCKVModel, save_hf  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default="../shared/data/corpus.train.txt.xz")
    p.add_argument("--val", default="../shared/data/corpus.val.txt.xz")
    p.add_argument("--tokenizer", default="../shared/models/kvt-l/tokenizer.json")
    p.add_argument("--layer-types", default="", help="t(i) joined by '_' (empty: all standard)")
    p.add_argument("--tokens", type=float, default=100e6, help="training tokens (rounded up to whole steps)")
    p.add_argument("--batch", type=int, default=64, help="sequences per step")
    p.add_argument("--micro", type=int, default=0, help="sequences per micro-batch (0: = batch)")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--m", type=int, default=7, help="forward-only iterations")
    p.add_argument("--b", type=int, default=2, help="iterations with backprop")
    p.add_argument("--compile", type=int, default=1)
    p.add_argument("--out", required=True, help="run directory (log, checkpoint, export)")
    p.add_argument("--export", default="", help="Hugging Face directory to write at the end")
    p.add_argument("--ckpt-every", type=int, default=0, help="steps between checkpoints (0: end only)")
    p.add_argument("--no-ckpt", action="store_true", help="write no optimizer checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--max-seconds", type=float, default=0, help="stop (checkpoint + export) after this wall time")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-windows", type=int, default=200, help="val ppl windows at the end (0: none)")
    p.add_argument("--tiny", action="store_true", help="2-layer toy shape for CPU tests")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--token-cache", default="", help="npy file of the tokenised corpus: read if present, else written")
    p.add_argument("--max-corpus-tokens", type=float, default=0, help="tokenise only this many (tests)")
    return p.parse_args(argv)


def make_config(a):
    if a.tiny:
        return Config(hidden_size=64, num_hidden_layers=len(a.layer_types.split("_")) if a.layer_types else 2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, intermediate_size=128,
                      max_position_embeddings=a.ctx, layer_types=a.layer_types, forward_passes=a.m,
                      backward_passes=a.b)
    return Config(layer_types=a.layer_types, max_position_embeddings=max(2048, a.ctx),
                  forward_passes=a.m, backward_passes=a.b)


class Batches:
    def __init__(self, ids, ctx, batch, seed, device):
        self.ctx, self.batch, self.seed = ctx, batch, seed
        self.n_win = (len(ids) - 1) // ctx
        self.stream = torch.from_numpy(ids[: self.n_win * ctx + 1].astype(np.int32)).to(device)
        self.ar = torch.arange(ctx + 1, device=device)
        self.perms = {}

    def perm(self, e):
        if e not in self.perms:
            g = torch.Generator().manual_seed(self.seed * 1000 + e)
            self.perms = {e: torch.randperm(self.n_win, generator=g)}
        return self.perms[e]

    def get(self, step):
        idx = torch.arange(step * self.batch, (step + 1) * self.batch)
        wins = torch.empty(self.batch, dtype=torch.long)
        for e in torch.unique(idx // self.n_win).tolist():
            sel = (idx // self.n_win) == e
            wins[sel] = self.perm(e)[idx[sel] % self.n_win]
        starts = (wins * self.ctx).to(self.stream.device)
        w = self.stream[starts[:, None] + self.ar[None, :]].long()
        return w[:, :-1], w[:, 1:]


def lr_at(step, total, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, total - a.warmup)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def head_loss(h, norm_w, emb_w, y, eps: float):
    hf = h.float()
    x = norm_w * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    logits = F.linear(x, emb_w)
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))


def main(argv=None):
    a = get_args(argv)
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "log.txt"), "a")

    def log(*s):
        msg = " ".join(str(x) for x in s)
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = make_config(a)
    torch.manual_seed(a.seed)
    model = LCKVModel(cfg)
    model.init_weights(a.seed)
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"args {json.dumps(vars(a))}")
    log(f"layer_types {cfg.layer_types_str} group {model.group} params {n_params} "
        f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'} torch {torch.__version__}")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)

    tokens_per_step = a.batch * a.ctx
    total_steps = math.ceil(a.tokens / tokens_per_step)
    start_step, curve = 0, []
    ckpt_path = os.path.join(a.out, "ckpt.pt")
    if a.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=dev)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start_step, curve = ck["step"], ck["curve"]
        log(f"resumed from step {start_step}")

    if a.token_cache and os.path.exists(a.token_cache):
        ids = np.load(a.token_cache)
        log(f"tokens from cache {a.token_cache}: {len(ids)}")
    else:
        ids = D.tokenize_corpus(a.corpus, a.tokenizer, max_tokens=int(a.max_corpus_tokens) or None, log=log)
        if a.token_cache:
            np.save(a.token_cache, ids)
    batches = Batches(ids, a.ctx, a.batch, a.seed, dev)
    log(f"corpus tokens {len(ids)} windows {batches.n_win}; steps {total_steps} x {tokens_per_step} tokens "
        f"= {total_steps * tokens_per_step} tokens ({total_steps * a.batch / batches.n_win:.2f} epochs)")

    if a.compile and cuda:
        model.compile()
        hl = torch.compile(head_loss)
    else:
        hl = head_loss
    micro = a.micro or a.batch
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def save_ckpt(step):
        if a.no_ckpt:
            return
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "curve": curve,
                    "args": vars(a)}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    model.train()
    t_train = time.time()
    t_log, tok_log = time.time(), 0
    step = start_step
    stopped_early = False
    compile_s = None
    while step < total_steps:
        if a.max_steps and step - start_step >= a.max_steps:
            stopped_early = True
            break
        if a.max_seconds and time.time() - t_start > a.max_seconds:
            log(f"time limit reached at step {step}")
            stopped_early = True
            break
        lr = lr_at(step, total_steps, a)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches.get(step)
        loss_sum = 0.0
        for s in range(0, a.batch, micro):
            with amp:
                h = model.forward_train(x[s:s + micro])
                loss = hl(h, model.norm.weight, model.embed_tokens.weight, y[s:s + micro], cfg.rms_norm_eps)
            (loss * (micro / a.batch)).backward()
            loss_sum = loss_sum + loss.detach() * (micro / a.batch)
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tok_log += tokens_per_step
        if step == start_step + 1:
            lv = loss_sum.item()
            compile_s = time.time() - t_train
            log(f"step {step} loss {lv:.4f} first step (compile) {compile_s:.1f}s")
            curve.append({"step": step, "tokens": step * tokens_per_step, "loss": lv, "lr": lr,
                          "gnorm": float(gn), "wall": time.time() - t_start})
            t_log, tok_log = time.time(), 0
        elif step % a.log_every == 0 or step == total_steps:
            lv = loss_sum.item()
            dt = time.time() - t_log
            tps = tok_log / dt
            curve.append({"step": step, "tokens": step * tokens_per_step, "loss": lv, "lr": lr,
                          "gnorm": float(gn), "tok_s": tps, "wall": time.time() - t_start})
            log(f"step {step}/{total_steps} loss {lv:.4f} lr {lr:.2e} gnorm {float(gn):.3f} "
                f"{tps / 1e3:.0f}k tok/s  wall {time.time() - t_start:.0f}s")
            t_log, tok_log = time.time(), 0
            if not math.isfinite(lv):
                log("non-finite loss, stopping")
                stopped_early = True
                break
        if a.ckpt_every and step % a.ckpt_every == 0 and step < total_steps:
            save_ckpt(step)
    train_s = time.time() - t_train
    steady = [c["tok_s"] for c in curve if "tok_s" in c]
    result = {
        "layer_types": cfg.layer_types_str, "params": n_params, "steps_done": step, "steps_total": total_steps,
        "tokens_seen": step * tokens_per_step, "complete": step >= total_steps and not stopped_early,
        "train_seconds": train_s, "first_step_seconds": compile_s,
        "tok_s_median": float(np.median(steady)) if steady else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "final_loss_mean_last5": float(np.mean([c["loss"] for c in curve[-5:]])) if curve else None,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "command": "python3 " + " ".join(sys.argv), "seed": a.seed, "m": a.m, "b": a.b, "batch": a.batch, "ctx": a.ctx, "lr": a.lr,
    }
    save_ckpt(step)
    if a.export:
        save_hf(model, a.export, a.tokenizer)
        log(f"exported to {a.export}")
    if a.eval_windows and a.export:
        from eval_ppl import evaluate
        from model import load_hf
        torch.backends.cuda.matmul.allow_tf32 = False
        wins = D.val_windows(a.val, a.tokenizer, a.eval_windows, a.ctx)
        ev = load_hf(a.export, dev, torch.float32)  # the exported bf16 weights, float32 compute
        result["val"] = []
        for mode in (["iterative", "sequential"] if ev.group is not None else ["iterative"]):
            if mode == "sequential" and a.max_seconds and time.time() - t_start > a.max_seconds + 30:
                continue
            t0 = time.time()
            res = evaluate(ev, wins, dev, mode=mode)
            res["seconds"] = time.time() - t0
            result["val"].append(res)
            log(f"val ppl {res['ppl']:.4f} ({mode}, {res['windows']} windows, {res['seconds']:.1f}s)")
    result["wall_seconds"] = time.time() - t_start
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(a.out, "curve.json"), "w") as f:
        json.dump(curve, f)
    log(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
