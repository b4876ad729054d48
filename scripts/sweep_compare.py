#!/usr/bin/env python3
# sweep_compare.py OLD_DIR NEW_DIR — compare two `slimkv sweep` result folders row by row
# (rows.jsonl: score, kv_bytes, KL of every (task, row, policy, budget) both hold) and by
# configuration (sweep.csv means). Used to show that a change left the results unchanged.
import csv, json, lzma, os, sys
def rows(p):
    d = {}
    # big result files are committed xz-compressed (rows.jsonl.xz)
    f = open(p) if os.path.exists(p) else lzma.open(p + '.xz', 'rt')
    for line in f:
        r = json.loads(line)
        d[(r['task'], r['index'], r['policy'], str(r['budget']))] = r
    return d
def csvd(p):
    return {(r['policy'], r['budget'], r['task']): r for r in csv.DictReader(open(p))}
old, new = sys.argv[1], sys.argv[2]
a, b = rows(old + '/rows.jsonl'), rows(new + '/rows.jsonl')
common = [k for k in a if k in b]
sd = sum(a[k]['score'] != b[k]['score'] for k in common)
bd = sum(a[k]['kv_bytes'] != b[k]['kv_bytes'] for k in common)
kl = max(abs(float(a[k]['kl']) - float(b[k]['kl'])) for k in common)
print(f"{new}: rows compared {len(common)} (old {len(a)}, new {len(b)}); score differs in {sd}, kv_bytes differs in {bd}, max |KL diff| {kl:.3g}")
ca, cb = csvd(old + '/sweep.csv'), csvd(new + '/sweep.csv')
cc = [k for k in ca if k in cb]
print(f"  sweep.csv: {len(cc)} rows; identical score {sum(ca[k]['score']==cb[k]['score'] for k in cc)}, identical kv_bytes {sum(ca[k]['kv_bytes']==cb[k]['kv_bytes'] for k in cc)}, max |KL diff| {max(abs(float(ca[k]['kl'])-float(cb[k]['kl'])) for k in cc):.3g}")
