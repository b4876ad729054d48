#!/usr/bin/env python3
"""pool.py DIR...: pool MiniCache ppl blocks (run_blocks.sh: CONFIG-SSS.json, `ppl --skip SSS
--windows 5`) from one or more directories into one result per config (a block found twice is
counted once, the first directory's). Per config: windows, perplexity with its standard error
(per-token, as `slimkv ppl`), the full cache's perplexity on the same windows, mean KL to the full
cache, mean KV bytes at the end of a window and that as a share of the full cache's; and which
windows are covered. Writes JSON to stdout."""
import glob, json, math, os, sys

full_bytes = None
blocks = {}
for d in sys.argv[1:]:
    for f in sorted(glob.glob(os.path.join(d, '*-[0-9][0-9][0-9].json'))):
        cfg, s = os.path.basename(f)[:-5].rsplit('-', 1)
        blocks.setdefault(cfg, {}).setdefault(int(s), (f, json.load(open(f))))
out = {}
for cfg, bl in sorted(blocks.items()):
    n = sx = sx2 = sfull = skl = skv = 0.0
    wins, cmds, machines = [], set(), set()
    for s, (f, j) in sorted(bl.items()):
        k = j['tokens_scored']
        mean, se = j['nll'], j['nll_se']
        n += k
        sx += mean * k
        sx2 += (se * se * (k - 1) + mean * mean) * k
        sfull += math.log(j['ppl_full']) * k
        skl += j['kl_mean'] * k
        skv += j['kv_bytes_mean'] * j['windows']
        wins += list(range(j['first_window'], j['first_window'] + j['windows']))
        a = j['command'].split()
        keep, i = [], 2
        while i < len(a):  # the options that define the run (not the block, threads, files)
            if a[i] in ('--skip', '--windows', '--out', '-o', '-t', '-f', '-m'): i += 2; continue
            if a[i] != '-q': keep.append(a[i])
            i += 1
        cmds.add(' '.join(keep))
        machines.add(j['machine'])
    mean = sx / n
    se = math.sqrt((sx2 / n - mean * mean) / (n - 1))
    W = j['window_tokens']
    fb = 10 * 2 * 2 * 64 * 4 * W  # lckv-std: 10 layers, 2 KV heads, head_dim 64, f32 CPU cache
    rng, w0 = [], None
    for i, w in enumerate(sorted(wins)):
        if w0 is None: w0 = w
        if i + 1 == len(wins) or sorted(wins)[i + 1] != w + 1:
            rng.append('%d-%d' % (w0, w)); w0 = None
    out[cfg] = {'windows': len(wins), 'window_ranges': ','.join(rng),
                'tokens_scored': int(n), 'ppl': math.exp(mean), 'ppl_se': math.exp(mean) * se,
                'ppl_full': math.exp(sfull / n), 'kl_mean': skl / n, 'kv_bytes_mean': skv / len(wins),
                'kv_share': skv / len(wins) / fb, 'mc_options': sorted(cmds), 'machines': sorted(machines)}
json.dump(out, sys.stdout, indent=1)
print()
