#!/usr/bin/env python3
"""scd_e2e.py — SCD reuse maps trained end to end on the consumer's answers (issue 14 experiment).

The calibration of scd_calibrate.py fits each layer's maps to reconstruct the consumer's K/V rows
(least squares over every direction). The diagnosis (bench/scd/diagnosis) found that the
consumer's answers depend on its last layer's keys far more finely than any reconstruction
reaches. This script keeps the maps' form — per layer Z = (A - mua) enc, B^ = Z dec + mub for
de-RoPE'd K and for V — and trains them on what the consumer does with them: on task-format
prompts built from the *training* corpus (train/scd_qa_prompts.py), the producer's prompt rows
go through the maps into the consumer's cache (positions 0 … P-2, as the pipe sends them), the
consumer runs the last prompt token and the answer teacher-forced, and the loss is the KL
divergence from the consumer's own full-prefill distributions at those positions (plus a small
reconstruction term, --recon, that keeps every row near the consumer's).

Initialisation: full-rank ridge maps (rank = kv_dim, the best measured reuse maps) fitted on the
same training prompts, or --init MAPS (an existing maps file; ranks kept). Writes a maps file the
engine loads (the patch tensors h.* copied from --patch-from, default --init).

  python3 train/scd_e2e.py --producer ../shared/models/kvt-l --consumer ../shared/models/kvt-l-qa \\
      --prompts qa.txt --patch-from models/scd/kvt-l-to-kvt-l-qa.safetensors --out e2e.safetensors

Held out: every fourth prompt (never trained on) measures the KL and the teacher-forced answer
token accuracy before and after. CPU is enough (18.9M-parameter models): each step is one
prompt's consumer suffix over a rebuilt cache.
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scd_calibrate import read_st, write_st  # noqa: E402


def load_model(d):
    cfg = json.load(open(os.path.join(d, 'config.json')))
    W = {}
    idx = os.path.join(d, 'model.safetensors.index.json')
    files = set(json.load(open(idx))['weight_map'].values()) if os.path.exists(idx) else {'model.safetensors'}
    for f in files:
        W.update(load_file(os.path.join(d, f)))
    return {k: v.float() for k, v in W.items()}, cfg


class Llama:
    """The kvt family's forward (HF Llama conventions: rotate-half RoPE, GQA, SwiGLU, tied head)."""

    def __init__(self, W, cfg):
        self.W, self.c = W, cfg
        self.L, self.hd = cfg['num_hidden_layers'], cfg['head_dim']
        self.nh, self.nkv = cfg['num_attention_heads'], cfg['num_key_value_heads']
        self.eps = cfg['rms_norm_eps']
        theta = cfg.get('rope_parameters', {}).get('rope_theta', cfg.get('rope_theta', 10000.0))
        self.inv = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd))

    def w(self, l, n):
        return self.W[f'model.layers.{l}.{n}.weight']

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):  # x (T, heads, hd)
        f = pos.double()[:, None] * self.inv[None, :]
        e = torch.cat([f, f], -1)
        cos, sin = e.cos().float()[:, None, :], e.sin().float()[:, None, :]
        h = self.hd // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * cos + rot * sin

    def forward(self, ids, start=0, prefix=None, collect=False):
        """ids (T,) at positions start … start+T-1; prefix[l] = (Kpre (start, kd), V (start, kd)) for
        positions 0 … start-1 (de-RoPE'd K). Returns logits (T, V) and, with collect, per layer the
        de-RoPE'd K and V of these positions."""
        T = ids.shape[0]
        pos = torch.arange(start, start + T)
        h = self.W['model.embed_tokens.weight'][ids]
        out = []
        mask = torch.ones(T, start + T, dtype=torch.bool).tril(start)
        for l in range(self.L):
            x = self.rms(h, self.w(l, 'input_layernorm'))
            q = (x @ self.w(l, 'self_attn.q_proj').T).view(T, self.nh, self.hd)
            k = x @ self.w(l, 'self_attn.k_proj').T
            v = x @ self.w(l, 'self_attn.v_proj').T
            if collect:
                out.append((k.detach(), v.detach()))
            if prefix is not None and start > 0:
                kp, vp = prefix[l]
                k_all, v_all, p_all = torch.cat([kp, k]), torch.cat([vp, v]), torch.arange(0, start + T)
            else:
                k_all, v_all, p_all = k, v, pos
            kr = self.rope(k_all.view(-1, self.nkv, self.hd), p_all)
            qr = self.rope(q, pos)
            g = self.nh // self.nkv
            kr = kr.repeat_interleave(g, 1)
            vr = v_all.view(-1, self.nkv, self.hd).repeat_interleave(g, 1)
            s = torch.einsum('thd,shd->hts', qr, kr) / math.sqrt(self.hd)
            s = s.masked_fill(~mask[None], float('-inf'))
            a = torch.einsum('hts,shd->thd', s.softmax(-1), vr).reshape(T, -1)
            h = h + a @ self.w(l, 'self_attn.o_proj').T
            x = self.rms(h, self.w(l, 'post_attention_layernorm'))
            h = h + (F.silu(x @ self.w(l, 'mlp.gate_proj').T) * (x @ self.w(l, 'mlp.up_proj').T)) @ self.w(l, 'mlp.down_proj').T
        h = self.rms(h, self.W['model.norm.weight'])
        logits = h @ self.W['model.embed_tokens.weight'].T
        return logits, out


DEFINE = re.compile(r'^#define\s+([A-Z][A-Z0-9_]{2,40})\s+(\(?-?(?:0x[0-9a-fA-F]+|\d+)[uUlL]*\)?)\s*$', re.M)


def variants(text, q, rng):
    """(context, [(question, answer)]) of a task-format prompt: its own question first, then up to
    q - 1 more about other entries of the same context (dictionary words, #defines)."""
    if text.startswith('Dictionary:\n'):
        i = text.rfind('Question: What does "')
        ctx, own = text[:i], text[i:]
        qa = [(own[:own.rfind('Answer:') + 7], own[own.rfind('Answer:') + 7:])]
        ents = [ln.split(': ', 1) for ln in ctx.split('\n')[1:] if ': ' in ln]
        rng.shuffle(ents)
        for w, g in ents[:q - 1]:
            if f'"{w}"' not in qa[0][0]:
                qa.append((f'Question: What does "{w}" mean?\nAnswer:', f' {g}'))
        return ctx, qa
    i = text.rfind('\n/* Question: what is the value of ')
    if i < 0:
        return None
    ctx, own = text[:i], text[i:]
    qa = [(own[:own.rfind('Answer:') + 7], own[own.rfind('Answer:') + 7:])]
    ms = list(DEFINE.finditer(ctx))
    rng.shuffle(ms)
    seen = {own}
    for m in ms:
        if len(qa) >= q:
            break
        qq = f'\n/* Question: what is the value of {m.group(1)} in the code above? */\n/* Answer:'
        if qq not in seen and m.group(1) not in own:
            seen.add(qq)
            qa.append((qq, f' {m.group(2)} */'))
    return ctx, qa


def build(texts, tok, P, C, a, rng):
    """Per prompt: the producer's and consumer's rows of the shared context (both prefills), and
    per question the rows of its tokens and the consumer's own distributions over the last
    prompt token and the answer (continuations over the cached context)."""
    t0 = time.time()
    out = []
    with torch.no_grad():
        for t in texts:
            v = variants(t, a.questions, rng)
            if not v:
                continue
            ctx, qa = v
            fulls = []
            for q, ans in qa:
                pid, fid = tok.encode(ctx + q).ids, tok.encode(ctx + q + ans).ids
                if fid[:len(pid)] != pid or len(fid) <= len(pid):
                    continue
                fulls.append((pid, fid[len(pid):]))
            if not fulls:
                continue
            cut = max(0, max(len(p) + len(x) for p, x in fulls) - a.max_len)
            fulls = [(p[cut:], x) for p, x in fulls]
            shared = len(fulls[0][0]) - 1
            for p, _ in fulls[1:]:
                n = 0
                while n < min(shared, len(p) - 1) and p[n] == fulls[0][0][n]:
                    n += 1
                shared = n
            base = torch.tensor(fulls[0][0][:shared])
            _, prow = P.forward(base, collect=True)
            _, crow = C.forward(base, collect=True)
            var = []
            for p, x in fulls:
                p, x = torch.tensor(p), torch.tensor(x)
                qt = p[shared:]  # question tokens (the last one the consumer runs itself)
                _, pq = P.forward(qt[:-1], start=shared, prefix=prow, collect=True) if len(qt) > 1 else (None, None)
                lo, cq = C.forward(torch.cat([qt, x]), start=shared, prefix=crow, collect=True)
                nq = len(qt) - 1
                var.append({'q': qt, 'ans': x,
                            'prod': [(k.half(), vv.half()) for k, vv in pq] if pq else None,
                            'cons': [(k[:nq].half(), vv[:nq].half()) for k, vv in cq],
                            'teach': lo[nq:nq + len(x)].log_softmax(-1)})
            out.append({'S': shared, 'prod': [(k.half(), vv.half()) for k, vv in prow],
                        'cons': [(k.half(), vv.half()) for k, vv in crow], 'var': var})
            if len(out) % 20 == 0:
                print(f'  {len(out)} prompts prefilled ({time.time() - t0:.0f} s)', flush=True)
            if len(out) == a.n:
                break
    return out



def build_plain(corpus, n, tok, P, C, a, rng):
    """Plain training-corpus windows (even-numbered documents, the calibration parity): the
    consumer continues 16 tokens after the transferred context; same structure as build()."""
    import lzma
    with lzma.open(corpus, 'rt', encoding='utf-8', errors='replace') as f:
        docs = [d for i, d in enumerate(f.read().split('\x1e')) if i % 2 == 0 and len(d) > 4000]
    rng.shuffle(docs)
    out, t0 = [], time.time()
    with torch.no_grad():
        for d in docs:
            ids = tok.encode(d).ids
            if len(ids) < 400:
                continue
            L = rng.randint(256, min(1500, len(ids) - 17))
            st = rng.randint(0, len(ids) - L - 17)
            w = ids[st:st + L + 17]
            base, qt, x = torch.tensor(w[:L]), torch.tensor(w[L:L + 1]), torch.tensor(w[L + 1:])
            _, prow = P.forward(base, collect=True)
            _, crow = C.forward(base, collect=True)
            lo, cq = C.forward(torch.cat([qt, x]), start=L, prefix=crow, collect=True)
            out.append({'S': L, 'prod': [(k.half(), vv.half()) for k, vv in prow],
                        'cons': [(k.half(), vv.half()) for k, vv in crow],
                        'var': [{'q': qt, 'ans': x, 'prod': None, 'cons': [(k[:0].half(), vv[:0].half()) for k, vv in cq],
                                 'teach': lo[:len(x)].log_softmax(-1)}], 'plain': True})
            if len(out) == n:
                break
    print(f'{len(out)} plain windows prefilled ({time.time() - t0:.0f} s)', flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--producer', required=True)
    ap.add_argument('--consumer', required=True)
    ap.add_argument('--prompts', required=True, help='task-format prompts (scd_qa_prompts.py), 0x1e-separated')
    ap.add_argument('--n', type=int, default=240, help='prompts used (every fourth held out)')
    ap.add_argument('--max-len', type=int, default=1984)
    ap.add_argument('--init', default=None, help='start from this maps file (else full-rank ridge maps)')
    ap.add_argument('--patch-from', default=None, help='maps file whose patch tensors and metadata are copied')
    ap.add_argument('--steps', type=int, default=2000)
    ap.add_argument('--lr', type=float, default=3e-4)
    ap.add_argument('--recon', type=float, default=0.1, help='weight of the rows reconstruction loss')
    ap.add_argument('--layers', default='all', help='layers whose maps train (others keep their init)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--out', required=True)
    ap.add_argument('--questions', type=int, default=8, help='questions per context (its own + others of the context)')
    ap.add_argument('--cache', default=None, help='save / load the prefills here (torch.save)')
    ap.add_argument('--eval-every', type=int, default=250)
    ap.add_argument('--plain', type=int, default=0, help='plain training-corpus windows mixed in (continuation KL)')
    ap.add_argument('--plain-cache', default=None)
    ap.add_argument('--plain-repeat', type=int, default=4, help='each plain window counts this many times in sampling')
    ap.add_argument('--corpus', default='../shared/data/corpus.train.txt.xz')
    ap.add_argument('--check-hf', action='store_true', help='compare this forward with transformers first')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    Wp, cfg = load_model(a.producer)
    Wc, _ = load_model(a.consumer)
    P, C = Llama(Wp, cfg), Llama(Wc, cfg)
    tok = Tokenizer.from_file(os.path.join(a.consumer, 'tokenizer.json'))
    if a.check_hf:
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(a.consumer, dtype=torch.float32).eval()
        ids = torch.tensor(tok.encode('Dictionary:\nword: a unit of language\nQuestion: What does "word" mean?\nAnswer:').ids)
        with torch.no_grad():
            ref = m(ids[None]).logits[0]
            mine, _ = C.forward(ids)
            kv = C.forward(ids[:-3], collect=True)[1]
            split, _ = C.forward(ids[-3:], start=len(ids) - 3, prefix=kv)
        print(f'check: |this - transformers| max {(mine - ref).abs().max():.2e} (logits spread {ref.std():.2f}); '
              f'prefix path {(split - ref[-3:]).abs().max():.2e}', flush=True)

    texts = [t for t in open(a.prompts, encoding='utf-8').read().split('\x1e') if t.strip()]
    rng = random.Random(a.seed)
    if a.cache and os.path.exists(a.cache):
        cache = torch.load(a.cache)
        print(f'{a.cache}: {len(cache)} prompts, {sum(len(c["var"]) for c in cache)} questions', flush=True)
    else:
        cache = build(texts, tok, P, C, a, rng)
        if a.cache:
            torch.save(cache, a.cache)
    n_task = len(cache)
    if a.plain:
        if a.plain_cache and os.path.exists(a.plain_cache):
            plain = torch.load(a.plain_cache)
        else:
            plain = build_plain(a.corpus, a.plain, tok, P, C, a, random.Random(a.seed + 1))
            if a.plain_cache:
                torch.save(plain, a.plain_cache)
        cache = cache + plain
    print(f'{len(cache)} prompts ({sum(len(c["var"]) for c in cache)} questions); prompt tokens mean '
          f'{sum(c["S"] for c in cache) / len(cache):.0f}', flush=True)
    L, kd = cfg['num_hidden_layers'], cfg['num_key_value_heads'] * cfg['head_dim']
    tr_idx = [i for i in range(len(cache)) if i % 4 != 3]
    ho_idx = [i for i in range(len(cache)) if i % 4 == 3]
    pairs = [(i, j) for i in tr_idx for j in range(len(cache[i]['var']))
             for _ in range(a.plain_repeat if cache[i].get('plain') else 1)]
    ho_idx = [i for i in ho_idx if i < n_task]  # early stopping on the task prompts
    ho_plain = [i for i in range(n_task, len(cache)) if i % 4 == 3]
    print(f'{len(tr_idx)} training prompts ({len(pairs)} questions), {len(ho_idx)} held out (their own question)', flush=True)

    # maps: parameters per layer and part
    maps = {}
    if a.init:
        T0, _ = read_st(a.init)
        for l in range(L):
            for part in 'kv':
                maps[(part, l)] = {n: torch.tensor(T0[f'{part}.{n}.{l}'].copy()) for n in ('mua', 'enc', 'dec', 'mub')}
    else:  # full-rank ridge from the training prompts' rows (the best reuse maps measured)
        for l in range(L):
            for j, part in enumerate('kv'):
                A = torch.cat([cache[i]['prod'][l][j] for i in tr_idx]).double()[::4]
                B = torch.cat([cache[i]['cons'][l][j] for i in tr_idx]).double()[::4]
                mua, mub = A.mean(0), B.mean(0)
                Ac, Bc = A - mua, B - mub
                G = Ac.T @ Ac
                lam = 1e-3 * torch.trace(G) / kd
                enc = torch.linalg.solve(G + lam * torch.eye(kd, dtype=torch.float64), Ac.T @ Bc)
                maps[(part, l)] = {'mua': mua.float(), 'enc': enc.float(), 'dec': torch.eye(kd), 'mub': mub.float()}
    train_layers = range(L) if a.layers == 'all' else [int(x) for x in a.layers.split(',')]
    params = []
    for (part, l), m in maps.items():
        for n in m:
            m[n] = m[n].clone().requires_grad_(l in train_layers and n != 'mua')
            if m[n].requires_grad:
                params.append(m[n])

    def rows(c, v, l, j, key):
        parts = [c[key][l][j]] + ([v[key][l][j]] if v[key] is not None and len(v[key][l][j]) else [])
        return torch.cat(parts).float()

    def loss_of(i, vi):
        c = cache[i]
        v = c['var'][vi]
        kv, rec = [], 0.0
        for l in range(L):
            pair = []
            for j, part in enumerate('kv'):
                m = maps[(part, l)]
                A = rows(c, v, l, j, 'prod')
                Bh = ((A - m['mua']) @ m['enc']) @ m['dec'] + m['mub']
                pair.append(Bh)
                B = rows(c, v, l, j, 'cons')
                rec = rec + ((Bh - B) ** 2).sum() / ((B - B.mean(0)) ** 2).sum().clamp_min(1e-9)
            kv.append(pair)
        S = kv[0][0].shape[0]
        suffix = torch.cat([v['q'][-1:], v['ans'][:-1]])
        lo, _ = C.forward(suffix, start=S, prefix=kv)
        lp = lo.log_softmax(-1)
        kl = F.kl_div(lp, v['teach'], log_target=True, reduction='batchmean')
        hit = lp.argmax(-1) == v['ans']
        return kl, rec / (2 * L), hit.float().mean(), hit[0].float()

    def evaluate(idx):
        with torch.no_grad():
            r = [loss_of(i, 0) for i in idx]
        return tuple(sum(float(x[k]) for x in r) / len(r) for k in range(4))

    def show(tag, e):
        print(f'{tag}: held-out KL {e[0]:.3f}, row error {e[1]:.3f}, answer-token accuracy {e[2]:.3f}, '
              f'first answer token {e[3]:.3f}', flush=True)

    e0 = evaluate(ho_idx)
    show('init', e0)
    if ho_plain:
        print(f'    held-out plain windows: KL {evaluate(ho_plain)[0]:.3f}', flush=True)
    best, best_state = e0, {k: {n: t.detach().clone() for n, t in m.items()} for k, m in maps.items()}
    opt = torch.optim.Adam(params, lr=a.lr)
    t0 = time.time()
    run = []
    for step in range(1, a.steps + 1):
        kl, rec, acc, first = loss_of(*random.choice(pairs))
        loss = kl + a.recon * rec
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.append((kl.item(), float(rec), float(acc), float(first)))
        if step % 100 == 0 or step == a.steps:
            k = len(run)
            print(f'step {step}: train KL {sum(x[0] for x in run) / k:.3f} row error {sum(x[1] for x in run) / k:.3f} '
                  f'acc {sum(x[2] for x in run) / k:.3f} first {sum(x[3] for x in run) / k:.3f} ({time.time() - t0:.0f} s)',
                  flush=True)
            run = []
        if step % a.eval_every == 0 or step == a.steps:
            e = evaluate(ho_idx)
            show(f'  step {step}', e)
            if ho_plain:
                print(f'    held-out plain windows: KL {evaluate(ho_plain)[0]:.3f}', flush=True)
            if e[0] < best[0]:
                best, best_state = e, {k: {n: t.detach().clone() for n, t in m.items()} for k, m in maps.items()}
    maps = best_state
    show('kept (lowest held-out KL)', best)
    kl0, rec0, acc0 = e0[:3]

    # write the maps file: reuse tensors trained here, patch tensors and metadata from --patch-from
    src = a.patch_from or a.init
    T1, meta = read_st(src)
    desc = json.loads(meta['scd'])
    out = {k: v for k, v in T1.items() if not (k.startswith('k.') or k.startswith('v.'))}
    for (part, l), m in maps.items():
        for n in ('mua', 'enc', 'dec', 'mub'):
            out[f'{part}.{n}.{l}'] = m[n].detach().numpy()
        desc['layers'][l]['r_' + part] = int(m['enc'].shape[1])
    desc['e2e'] = {'prompts': os.path.basename(a.prompts), 'n_train': len(tr_idx), 'n_questions': len(pairs), 'steps': a.steps, 'lr': a.lr,
                   'recon': a.recon, 'init': os.path.basename(a.init) if a.init else 'full-rank ridge',
                   'held_out_before': {'kl': kl0, 'row_err': rec0, 'acc': acc0},
                   'questions': a.questions, 'held_out_after': dict(zip(('kl', 'row_err', 'acc', 'first'), best))}
    order = sorted(out, key=lambda k: (k.split('.')[-1].isdigit() and int(k.split('.')[-1]), k))
    write_st(a.out, {k: out[k] for k in order}, {'scd': json.dumps(desc, separators=(',', ':'))})
    print(f'written {a.out}', flush=True)


if __name__ == '__main__':
    main()
