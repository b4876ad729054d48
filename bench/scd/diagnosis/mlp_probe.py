import sys, time, numpy as np, torch
sys.path.insert(0, '/work/wt-issue14/train')
from scd_calibrate import read_st
from scd_probe import shift
torch.set_num_threads(1); torch.manual_seed(0)
T, meta = read_st('/tmp/scd14-calib.st'); blk = int(meta['rows_per_prompt'])
L = 10; n = T['a.k.0'].shape[0]; p = np.arange(n)//blk; keep = (np.arange(n)%blk) >= 2
tr = np.nonzero((p%5!=0)&keep)[0]; va = np.nonzero((p%5==0)&keep)[0]
import os
fr = float(os.environ.get("FRAC", "1")); tr = tr[p[tr] < fr * p.max()]
print("train rows", len(tr), flush=True)
def feats(kind, l):
    if kind == 'h+prev':
        H = np.asarray(T[f'a.h.{l}'], np.float32); return np.concatenate([H, shift(H, blk, 1), shift(H, blk, 2)], 1)
    if kind == 'all+prev':
        H = np.concatenate([np.asarray(T[f'a.h.{i}'], np.float32) for i in range(L)], 1); return np.concatenate([H, shift(H, blk, 1)], 1)
for kind, l, part, hid, steps in [(a, int(b), c, int(d), int(e)) for a, b, c, d, e in (x.split(':') for x in sys.argv[1:])]:
    X = feats(kind, l); Y = np.asarray(T[f'b.{part}.{l}'], np.float32)
    mx, sx = X[tr].mean(0), X[tr].std(0)+1e-6; my, sy = Y[tr].mean(0), Y[tr].std()
    Xt = torch.tensor((X-mx)/sx); Yt = torch.tensor((Y-my)/sy)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hid), torch.nn.SiLU(), torch.nn.Linear(hid, hid), torch.nn.SiLU(), torch.nn.Linear(hid, Y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    trt = torch.tensor(tr); t0 = time.time()
    den_tr = torch.linalg.norm(Yt[tr] - Yt[tr].mean(0)); den_va = torch.linalg.norm(Yt[va] - Yt[tr].mean(0))
    for s in range(steps):
        b = trt[torch.randint(0, len(tr), (512,))]
        loss = ((net(Xt[b]) - Yt[b])**2).mean(); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if (s+1) % (steps//4) == 0:
            with torch.no_grad():
                e_tr = (torch.linalg.norm(net(Xt[tr[:6000]]) - Yt[tr[:6000]]) / torch.linalg.norm(Yt[tr[:6000]] - Yt[tr].mean(0))).item()
                e_va = (torch.linalg.norm(net(Xt[va]) - Yt[va]) / den_va).item()
            print(f'{kind} L{l} {part} hid {hid} step {s+1}: train {e_tr:.3f} held-out {e_va:.3f} ({time.time()-t0:.0f} s)', flush=True)
