#!/usr/bin/env python3
"""scd_stream_table.py — streamed vs not (`scd_ttft.sh -S "1 0"`): per (rate, method, stream)
the medians over repetitions of TTFT end to end, the producer's prefill and encoding, and the
tail TTFT - prefill - encoding (what the producer's compute did not hide), with the range of
TTFT.   python3 scripts/scd_stream_table.py bench/scd/stream/ttft.jsonl"""
import json
import statistics as S
import sys
from collections import defaultdict

g = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    p = r['producer']
    c = p['consumer']
    g[(r['rate_mbit'], r['len'], p['method'], p.get('stream', False))].append(
        (c['ttft'], p['t_prefill'], p['t_encode'], p['bytes']))
print('| Mbit/s | tokens | method | producer | n | TTFT median (min–max) s | prefill s | encode s | TTFT − prefill s | MB |')
print('|---|---|---|---|---|---|---|---|---|---|')
for k in sorted(g, key=lambda k: (k[0], k[1], k[2], not k[3])):
    v = g[k]
    t = [x[0] for x in v]
    print(f'| {k[0]} | {k[1]} | {k[2]} | {"streamed" if k[3] else "prefill, then send"} | {len(v)} | {S.median(t):.2f} '
          f'({min(t):.2f}–{max(t):.2f}) | {S.median(x[1] for x in v):.2f} | {S.median(x[2] for x in v):.2f} | '
          f'{S.median(x[0] - x[1] for x in v):.2f} | {v[0][3] / 1e6:.2f} |')
