#!/usr/bin/env python3
"""scd_ttft_table.py — bench/scd/ttft.jsonl (scripts/scd_ttft.sh) as Markdown tables: per
transport and prompt length, TTFT per method and rate, bytes per request, the speedup over the
oracle, and the crossover rate (the lowest rate at which a method's TTFT beats the oracle's).
Two TTFTs: end to end (request at the producer -> first token at the consumer, the producer's
prefill included) and after the producer's prefill (its K/V already there: transfer, rebuild,
first token; the oracle's has no producer prefill, so it is the same for both)."""
import json
import sys
from collections import defaultdict


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    d = defaultdict(dict)
    for r in rows:
        p = r['producer']
        c = p['consumer']
        if not c.get('ok'):
            continue
        key = (p['transport'], r['len'])
        ttft = c['ttft']
        after = ttft - (p['t_prefill'] if p['method'] != 'oracle' else 0)
        d[key][(p['method'], r['rate_mbit'])] = (ttft, after, p['bytes'])
    for (t, ln), v in sorted(d.items()):
        methods = sorted({m for m, _ in v}, key=lambda m: ['oracle', 'scd', 'reuse', 'raw', 'kivi4', 'recompute'].index(m)
                         if m in ['oracle', 'scd', 'reuse', 'raw', 'kivi4', 'recompute'] else 9)
        rates = sorted({r for _, r in v})
        for which, name in ((0, 'end to end'), (1, "after the producer's prefill")):
            print(f'\n### {t}, {ln}-token prompts: TTFT {name} (s; x = speedup over the oracle)\n')
            print('| method | bytes/request | ' + ' | '.join(f'{r} Mbit/s' for r in rates) + ' | crossover |')
            print('|---|---|' + '---|' * len(rates) + '---|')
            for m in methods:
                cells, cross = [], None
                for r in rates:
                    x = v.get((m, r))
                    o = v.get(('oracle', r))
                    if not x:
                        cells.append('')
                        continue
                    s = f'{x[which]:.3f}'
                    if o and m != 'oracle':
                        s += f' ({o[which] / x[which]:.2f}x)'
                        if cross is None and x[which] < o[which]:
                            cross = r
                    cells.append(s)
                b = next((x[2] for (mm, _), x in v.items() if mm == m), 0)
                cr = '' if m == 'oracle' else (f'{cross} Mbit/s' if cross else 'none')
                print(f'| {m} | {b / 1e6:.3f} MB | ' + ' | '.join(cells) + f' | {cr} |')


if __name__ == '__main__':
    main()
