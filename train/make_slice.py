"""The training slice of the cache-augmentation runs (train/README.md): 2,001 documents of the
training corpus drawn at random, 29.9 MB of text, written xz -9e (6.3 MB) to fit the device call.
python3 train/make_slice.py [--corpus ../shared/data/corpus.train.txt.xz] [--out train30.txt.xz]"""
import argparse
import lzma
import random

p = argparse.ArgumentParser()
p.add_argument("--corpus", default="../shared/data/corpus.train.txt.xz")
p.add_argument("--out", default="train30.txt.xz")
p.add_argument("--bytes", type=int, default=30_000_000)
a = p.parse_args()
docs = lzma.open(a.corpus, "rb").read().split(b"\x1e")
if docs and docs[-1] == b"":
    docs.pop()
random.seed(13)
idx = list(range(len(docs)))
random.shuffle(idx)
out, n = [], 0
for i in idx:
    if n + len(docs[i]) + 1 > a.bytes:
        break
    out.append(docs[i])
    n += len(docs[i]) + 1
with lzma.open(a.out, "wb", preset=9 | lzma.PRESET_EXTREME) as f:
    f.write(b"\x1e".join(out) + b"\x1e")
print(f"{len(out)} documents, {n} bytes -> {a.out}")
