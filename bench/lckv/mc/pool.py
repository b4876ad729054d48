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
    bm, bf = [], []  # per-block mean NLL (policy, full cache)
    wins, cmds, machines = [], set(), set()
    for s, (f, j) in sorted(bl.items()):
        k = j['tokens_scored']
        mean, se = j['nll'], j['nll_se']
        n += k
        sx += mean * k
        sx2 += (se * se * (k - 1) + mean * mean) * k
        sfull += math.log(j['ppl_full']) * k
        bm.append(mean)
        bf.append(math.log(j['ppl_full']))
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
    # a 95 % interval from the spread of the 5-window blocks (tokens within a window are not
    # independent, so the per-token standard error understates a partial run's uncertainty)
    nb = len(bm)
    bmean = sum(bm) / nb
    bse = math.sqrt(sum((x - bmean) ** 2 for x in bm) / (nb - 1) / nb) if nb > 1 else float('nan')
    d = [x - y for x, y in zip(bm, bf)]  # vs the full cache on the same blocks (paired)
    dm = sum(d) / nb
    dse = math.sqrt(sum((x - dm) ** 2 for x in d) / (nb - 1) / nb) if nb > 1 else float('nan')
    out[cfg] = {'windows': len(wins), 'window_ranges': ','.join(rng),
                'tokens_scored': int(n), 'ppl': math.exp(mean), 'ppl_se': math.exp(mean) * se,
                'ppl_ci95_blocks': [math.exp(mean - 1.96 * bse), math.exp(mean + 1.96 * bse)],
                'ratio_to_full': math.exp(mean) / math.exp(sfull / n),
                'ratio_to_full_ci95_blocks': [math.exp(dm - 1.96 * dse), math.exp(dm + 1.96 * dse)],
                'ppl_full': math.exp(sfull / n), 'kl_mean': skl / n, 'kv_bytes_mean': skv / len(wins),
                'kv_share': skv / len(wins) / fb, 'mc_options': sorted(cmds), 'machines': sorted(machines)}
json.dump(out, sys.stdout, indent=1)
print()
