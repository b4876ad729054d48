#!/usr/bin/env python3
"""scd_calibrate.py — fit SCD's maps (docs/techniques.md section 5) from `slimkv scd-dump` data.

Per layer, separately for de-RoPE'd K and for V (rows = calibration tokens, A producer, B
consumer):  X = [A B] centred, PCA (eigendecomposition of X^T X), rank r = the smallest keeping
`--energy` of B's energy (or fixed); shared code Z = Xc V_r; ridge encoder
W_enc = (Ac^T Ac + lam I)^-1 Ac^T Z with lam = 1e-3 trace(Ac^T Ac)/d (or --lam);
consumer decoder W_dec,B = V_r[B rows]^T with B's mean as bias.
Patch path: the same for the normalised attention inputs H (encoder on the producer's H), then
an aligner g(Z_H) -> H_B: linear (ridge, closed form) or MLP r_H -> hidden -> dim (SiLU) plus
the linear skip, started from the ridge solution and trained with Adam on the rest.

Writes one safetensors file (f32 tensors, names below) whose __metadata__ "scd" holds the JSON
description (ranks, aligner, fit errors); `slimkv scd-rank` then adds the patch-layer ranking.

  python3 train/scd_calibrate.py --dump calib.st --out maps.safetensors [--aligner mlp|linear]
  python3 train/scd_calibrate.py --check-engine calib.st --model DIR   (numpy vs engine check)

Tensors per layer L:  k.mua.L (kd)  k.enc.L (kd, rk)  k.dec.L (rk, kd)  k.mub.L (kd);  v.* alike;
h.mua.L (dim)  h.enc.L (dim, rh)  h.skip.L (rh, dim)  h.b2.L (dim)  and with the MLP
h.w1.L (rh, hidden)  h.b1.L (hidden)  h.w2.L (hidden, dim).
Runtime: Z = (A - mua) enc;  B^ = Z dec + mub;  H^ = Z skip + b2 (+ silu(Z w1 + b1) w2).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def read_st(path):
    """safetensors -> (dict name -> np.ndarray f32 view/copy, metadata dict)."""
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        hdr = json.loads(f.read(n))
    meta = hdr.pop('__metadata__', {})
    mm = np.memmap(path, dtype=np.uint8, mode='r', offset=8 + n)
    out = {}
    for k, e in hdr.items():
        b, en = e['data_offsets']
        raw = mm[b:en]
        if e['dtype'] == 'F32':
            a = raw.view(np.float32)
        elif e['dtype'] == 'BF16':
            a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f'{path}: tensor {k}: dtype {e["dtype"]} not handled')
        out[k] = a.reshape(e['shape'])
    return out, meta


def write_st(path, tensors, meta):
    hdr, off, blobs = {}, 0, []
    for k, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        hdr[k] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    hdr['__metadata__'] = meta
    h = json.dumps(hdr, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def fit_reuse(A, B, energy, rank, lam):
    """PCA of [A B], ridge encoder from A, decoder to B. Returns tensors and stats."""
    A = A.astype(np.float64)
    B = B.astype(np.float64)
    da = A.shape[1]
    mua, mub = A.mean(0), B.mean(0)
    Xc = np.concatenate([A - mua, B - mub], 1)
    C = Xc.T @ Xc
    w, V = np.linalg.eigh(C)
    order = np.argsort(w)[::-1]
    w, V = np.maximum(w[order], 0), V[:, order]
    eB = float(np.trace(C[da:, da:]))
    # B's energy left out at rank r: sum over i > r of lam_i |v_i[B]|^2
    vb = (V[da:, :] ** 2).sum(0) * w
    kept = 1 - (eB - np.cumsum(vb)) / max(eB, 1e-30)
    if rank > 0:
        r = min(rank, V.shape[1])
    else:
        r = int(np.searchsorted(kept, energy - 1e-12) + 1)
        r = min(max(r, 1), min(da, B.shape[1]) * 2)
    Vr = V[:, :r]
    Ac = A - mua
    AtA = Ac.T @ Ac
    lam_v = lam if lam is not None else 1e-3 * np.trace(AtA) / da
    enc = np.linalg.solve(AtA + lam_v * np.eye(da), C[:da, :] @ Vr)
    dec = Vr[da:, :].T
    Bh = (Ac @ enc) @ dec + mub
    rel = float(np.linalg.norm(Bh - B) / max(np.linalg.norm(B - mub), 1e-30))
    raw = float(np.linalg.norm(A - B) / max(np.linalg.norm(B - mub), 1e-30))
    return ({'mua': mua, 'enc': enc, 'dec': dec, 'mub': mub},
            {'rank': r, 'energy_B': float(kept[r - 1]), 'rel_err': rel, 'raw_rel_err': raw, 'lam': float(lam_v)})


def silu(x):
    return x / (1 + np.exp(-x))


def fit_aligner(Z, H, kind, hidden, steps, lr, seed, lam_scale=1e-3):
    """g(Z) -> H: ridge skip + bias, then (mlp) a residual MLP trained with Adam."""
    Z = Z.astype(np.float64)
    H = H.astype(np.float64)
    n, r = Z.shape
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    nv = max(n // 10, 1)
    va, tr = idx[:nv], idx[nv:]
    Z1 = np.concatenate([Z, np.ones((n, 1))], 1)

    def ridge(rows):
        G = Z1[rows].T @ Z1[rows]
        reg = lam_scale * np.trace(G) / G.shape[0] * np.eye(r + 1)
        reg[-1, -1] = 0
        W = np.linalg.solve(G + reg, Z1[rows].T @ H[rows])
        return W[:r], W[r]

    def err(pred, rows):
        return float(np.linalg.norm(pred - H[rows]) / max(np.linalg.norm(H[rows] - H[tr].mean(0)), 1e-30))

    # held-out error of the linear map fitted on the training split; the map kept is fitted on
    # every row (the MLP below trains on the training split only)
    s_tr, b_tr = ridge(tr)
    st = {'linear_val_rel_err': err(Z[va] @ s_tr + b_tr, va)}
    skip, b2 = ridge(np.arange(n))
    out = {'skip': skip, 'b2': b2}
    if kind == 'linear':
        st['val_rel_err'] = st['linear_val_rel_err']
        return out, st
    D = H.shape[1]
    f32 = np.float32
    zs = Z.std(0) + 1e-6  # inputs scaled for the MLP; folded back into w1 at the end
    w1 = (rng.standard_normal((r, hidden)) / np.sqrt(r)).astype(f32)
    b1 = np.zeros(hidden, f32)
    w2 = np.zeros((hidden, D), f32)
    sk = skip.astype(f32)
    bb = b2.astype(f32)
    params = [w1, b1, w2, sk, bb]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    Zs = (Z / zs).astype(f32)
    Zr = Z.astype(f32)
    Hf = H.astype(f32)
    hs = float(H[tr].std()) + 1e-6
    best = (st['linear_val_rel_err'], [p.copy() for p in params])
    bs, b1_, b2_, eps = 256, 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        rows = tr[rng.integers(0, len(tr), bs)]
        zs_b, zr_b, h_b = Zs[rows], Zr[rows], Hf[rows]
        a = zs_b @ w1 + b1
        s = silu(a)
        pred = s @ w2 + zr_b @ sk + bb
        g = 2 * (pred - h_b) / (bs * hs * hs)
        gw2 = s.T @ g
        gs = g @ w2.T
        sig = 1 / (1 + np.exp(-a))
        ga = gs * (sig * (1 + a * (1 - sig)))
        grads = [zs_b.T @ ga, ga.sum(0), gw2, zr_b.T @ g, g.sum(0)]
        lr_t = lr * min(1.0, t / 100) * 0.5 * (1 + np.cos(np.pi * t / steps))
        for i, (p, gr) in enumerate(zip(params, grads)):
            m[i] = b1_ * m[i] + (1 - b1_) * gr
            v[i] = b2_ * v[i] + (1 - b2_) * gr * gr
            p -= lr_t * (m[i] / (1 - b1_ ** t)) / (np.sqrt(v[i] / (1 - b2_ ** t)) + eps)
        if t % 250 == 0 or t == steps:
            pv = silu(Zs[va] @ w1 + b1) @ w2 + Zr[va] @ sk + bb
            e = err(pv.astype(np.float64), va)
            if e < best[0]:
                best = (e, [p.copy() for p in params])
    w1, b1, w2, sk, bb = best[1]
    st['val_rel_err'] = best[0]
    out = {'w1': w1 / zs[:, None].astype(f32), 'b1': b1, 'w2': w2, 'skip': sk, 'b2': bb}
    return out, st


def calibrate(a):
    T, meta = read_st(a.dump)
    L = max(int(k.split('.')[-1]) for k in T) + 1
    kd = T['a.k.0'].shape[1]
    dim = T['a.h.0'].shape[1]
    tensors, layers = {}, []
    for l in range(L):
        lay = {}
        for part, rank in (('k', a.rank_k), ('v', a.rank_v)):
            mp, s = fit_reuse(T[f'a.{part}.{l}'], T[f'b.{part}.{l}'], a.energy, rank, a.lam)
            for n_, x in mp.items():
                tensors[f'{part}.{n_}.{l}'] = x
            lay[part] = s
        mp, s = fit_reuse(T[f'a.h.{l}'], T[f'b.h.{l}'], a.energy_h, a.rank_h, a.lam)
        tensors[f'h.mua.{l}'] = mp['mua']
        tensors[f'h.enc.{l}'] = mp['enc']
        Z = (T[f'a.h.{l}'].astype(np.float64) - mp['mua']) @ mp['enc']
        al, ast = fit_aligner(Z, T[f'b.h.{l}'], a.aligner, a.hidden, a.steps, a.lr, a.seed + l, a.aligner_lam)
        for n_, x in al.items():
            tensors[f'h.{n_}.{l}'] = x
        s.update(ast)
        lay['h'] = s
        layers.append({'r_k': lay['k']['rank'], 'r_v': lay['v']['rank'], 'r_h': lay['h']['rank'], 'fit': lay})
        print(f'layer {l}: r_k {lay["k"]["rank"]} (rel err {lay["k"]["rel_err"]:.3f}, raw {lay["k"]["raw_rel_err"]:.3f})'
              f'  r_v {lay["v"]["rank"]} ({lay["v"]["rel_err"]:.3f}, raw {lay["v"]["raw_rel_err"]:.3f})'
              f'  r_h {lay["h"]["rank"]} (aligner val {lay["h"]["val_rel_err"]:.3f}, linear '
              f'{lay["h"]["linear_val_rel_err"]:.3f})', flush=True)
    desc = {'version': 1, 'producer': meta.get('producer', ''), 'consumer': meta.get('consumer', ''),
            'n_layer': L, 'kv_dim': kd, 'dim': dim, 'aligner': a.aligner,
            'hidden': a.hidden if a.aligner == 'mlp' else 0,
            'energy': a.energy, 'energy_h': a.energy_h,
            'calibration': {'dump': os.path.basename(a.dump), 'rows': int(T['a.k.0'].shape[0]),
                            'prompts': meta.get('prompts', ''), 'seed': meta.get('seed', '')},
            'layers': layers, 'patch_rank': list(range(L)), 'patch_k': 0, 'patch_ranked': False}
    write_st(a.out, tensors, {'scd': json.dumps(desc, separators=(',', ':'))})
    print(f'wrote {a.out}')


def check_engine(a):
    """The dump's K (de-RoPE'd) and V against numpy projections of its H with the model's own
    weights: the engine's taps, cache read-back and de-RoPE agree with plain arithmetic."""
    T, _ = read_st(a.check_engine)
    d = a.model
    idx = os.path.join(d, 'model.safetensors.index.json')
    W = {}
    files = sorted(set(json.load(open(idx))['weight_map'].values())) if os.path.exists(idx) else ['model.safetensors']
    for f in files:
        W.update(read_st(os.path.join(d, f))[0])
    side = 'a' if a.side == 'producer' else 'b'
    worst = 0.0
    L = max(int(k.split('.')[-1]) for k in T) + 1
    for l in range(L):
        H = T[f'{side}.h.{l}'][:512].astype(np.float64)
        for part, w in (('k', 'k_proj'), ('v', 'v_proj')):
            ref = H @ W[f'model.layers.{l}.self_attn.{w}.weight'].astype(np.float64).T
            got = T[f'{side}.{part}.{l}'][:512]
            e = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-30))
            worst = max(worst, e)
    print(f'engine check ({a.side}, {L} layers): max |K,V - H W^T| / max|.| = {worst:.2e}')
    if worst > 1e-4:
        sys.exit(1)


def set_rank(a):
    """Merge `slimkv scd-rank` output (patch_rank, patch_k, the KLs) into a maps file."""
    T, meta = read_st(a.set_rank)
    desc = json.loads(meta['scd'])
    r = json.load(open(a.rank_json))
    L = desc['n_layer']
    if sorted(r['patch_rank']) != list(range(L)):
        raise SystemExit(f'{a.rank_json}: patch_rank is not a permutation of {L} layers')
    desc['patch_rank'] = r['patch_rank']
    desc['patch_k'] = int(a.patch_k) if a.patch_k is not None else int(r['patch_k'])
    desc['patch_ranked'] = True
    desc['ranking'] = {k: r[k] for k in ('prompts', 'tail', 'kl_reuse_only', 'kl_single', 'kl_top_k', 'criterion',
                                         'patch_k', 'commit') if k in r}
    T = {k: np.array(v) for k, v in T.items()}
    write_st(a.set_rank, T, {'scd': json.dumps(desc, separators=(',', ':'))})
    print(f'{a.set_rank}: patch_rank {desc["patch_rank"]}, patch_k {desc["patch_k"]}')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dump', help='scd-dump output (safetensors)')
    p.add_argument('--out', help='maps file to write')
    p.add_argument('--energy', type=float, default=0.99, help="share of B's energy the K/V ranks keep")
    p.add_argument('--energy-h', type=float, default=0.99, help="the same for the patch codes")
    p.add_argument('--rank-k', type=int, default=0, help='fixed K rank (0: by energy)')
    p.add_argument('--rank-v', type=int, default=0, help='fixed V rank (0: by energy)')
    p.add_argument('--rank-h', type=int, default=0, help='fixed patch rank (0: by energy)')
    p.add_argument('--lam', type=float, default=None, help='ridge lambda (default 1e-3 trace(A^T A)/d)')
    p.add_argument('--aligner', choices=['mlp', 'linear'], default='mlp')
    p.add_argument('--aligner-lam', type=float, default=1e-3, help='aligner ridge, relative to trace/d (default 1e-3)')
    p.add_argument('--hidden', type=int, default=1024)
    p.add_argument('--steps', type=int, default=1500)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--check-engine', help='dump file to check against numpy projections')
    p.add_argument('--model', help='model directory for --check-engine')
    p.add_argument('--side', choices=['producer', 'consumer'], default='producer')
    p.add_argument('--set-rank', help='maps file to update with --rank-json (scd-rank output)')
    p.add_argument('--rank-json', help='scd-rank output')
    p.add_argument('--patch-k', type=int, default=None, help='with --set-rank: override the criterion\'s k')
    a = p.parse_args()
    if a.set_rank:
        if not a.rank_json:
            p.error('--set-rank needs --rank-json')
        return set_rank(a)
    if a.check_engine:
        if not a.model:
            p.error('--check-engine needs --model')
        return check_engine(a)
    if not a.dump or not a.out:
        p.error('--dump and --out are required')
    calibrate(a)


if __name__ == '__main__':
    main()
