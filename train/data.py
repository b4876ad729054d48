"""Corpus reading and tokenisation: documents separated by byte 0x1e, token 0 before each document."""
import lzma
import os
import time

import numpy as np


def read_docs(path, max_bytes=None):
    """Documents of a (possibly .xz) corpus file, as str. A trailing empty piece is dropped."""
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rb") as f:
        data = f.read() if max_bytes is None else f.read(max_bytes)
    docs = data.split(b"\x1e")
    if docs and docs[-1] == b"":
        docs.pop()
    return [d.decode("utf-8", errors="replace") for d in docs]


def load_tokenizer(path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)


def encode_docs(tok, docs, bos=0, chunk=4096, max_tokens=None):
    """[bos] + ids(doc) for every document, concatenated (uint16). Stops once max_tokens are held."""
    enc = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    parts, n = [], 0
    for s in range(0, len(docs), chunk):
        for e in enc(docs[s:s + chunk], add_special_tokens=False):
            ids = e.ids
            a = np.empty(len(ids) + 1, dtype=np.uint16)
            a[0] = bos
            a[1:] = ids
            parts.append(a)
            n += len(a)
        if max_tokens is not None and n >= max_tokens:
            break
    out = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
    return out if max_tokens is None else out[:max_tokens]


def tokenize_corpus(corpus, tokenizer, max_tokens=None, log=print):
    t0 = time.time()
    docs = read_docs(corpus)
    t1 = time.time()
    tok = load_tokenizer(tokenizer)
    ids = encode_docs(tok, docs, max_tokens=max_tokens)
    t2 = time.time()
    log(f"tokenized {os.path.basename(corpus)}: {len(docs)} docs, {len(ids)} tokens "
        f"(read {t1 - t0:.1f}s, tokenize {t2 - t1:.1f}s, {len(ids) / max(t2 - t1, 1e-9) / 1e6:.2f}M tok/s)")
    return ids


def val_windows(corpus, tokenizer, windows=200, ctx=2048):
    """The protocol's perplexity windows (docs/evaluation.md section 3): (n, ctx) int64."""
    ids = tokenize_corpus(corpus, tokenizer, max_tokens=windows * ctx)
    n = len(ids) // ctx
    return ids[:n * ctx].astype(np.int64).reshape(n, ctx)
