#!/usr/bin/env python3
"""make_tok_fixtures.py — build the small tokenizer fixtures of tests/data/tok/ and their
reference ids with the Hugging Face `tokenizers` library (the reference implementation).

Not run by the tests: its outputs are committed, so the C tests need no Python. Re-run it from the
repository root after changing it:

    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers
    /tmp/tokvenv/bin/python scripts/make_tok_fixtures.py

For each variant NAME it writes
    tests/data/tok/NAME.tokenizer.json   a tokenizer.json in the format of Hugging Face tokenizers
    tests/data/tok/NAME.cases.json       [{"text", "ids", "decoded"}], decoded = decode(ids) with
                                         special tokens kept
The models are trained here on the first 300 KB of ../shared/data/corpus.val.txt.xz (English prose,
dictionaries, C code) with a small vocabulary, so CJK, emoji and rare accented letters fall outside
the vocabulary (byte fallback / unk / byte-level paths).

Variants:
  spm_llama2     SentencePiece-style BPE as Llama-2: byte_fallback, fuse_unk, normalizer
                 Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, decoder
                 Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)], extra added tokens
                 (lstrip/rstrip, single_word, a normalized one)
  spm_metaspace  same model, Metaspace pre-tokenizer (prepend_scheme "first", split) and decoder
                 Sequence[Metaspace, ByteFallback, Fuse]
  spm_unk        same vocab without byte fallback (unk_token, no fuse), Metaspace ("always",
                 split false) pre-tokenizer and a lone Metaspace decoder
  bl_llama3      byte-level BPE as Llama-3: Split(Llama-3 regex, Isolated) + ByteLevel(no regex),
                 ignore_merges, merges as [left, right] pairs, many special tokens
  bl_qwen2       byte-level BPE as Qwen2: NFC normalizer, Split(Qwen2 regex), merges as strings
  bl_gpt2        byte-level BPE with NFKC, Digits(individual) + ByteLevel(add_prefix_space, regex)
  bl_mix         bl_gpt2's model behind Sequence normalizers (Strip, Replace regex, NFD, Lowercase)
                 and Split pre-tokenizers with every behavior, invert, literal and regex patterns
  bl_ws_nodecoder  NFKD, WhitespaceSplit + Digits + Whitespace + ByteLevel, no decoder
  bpe_suffix     classic BPE with continuing_subword_prefix "##", end_of_word_suffix "</w>", unk
"""
import json
import lzma
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tok")
CORPUS = os.path.join(ROOT, "..", "shared", "data", "corpus.val.txt.xz")

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus():
    with lzma.open(CORPUS, "rt", encoding="utf-8") as f:
        text = f.read(300_000)
    return [d for d in text.replace("\x1e", "\n").split("\n") if d.strip()]


def added(id_, content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


# ----------------------------------------------------------------------- SentencePiece-style

def train_spm(lines):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=90, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    m = json.loads(tok.to_str())["model"]
    # Llama-2 layout: <unk> <s> </s>, then <0x00>..<0xFF>, then the pieces.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for piece, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [" ".join(p) if isinstance(p, list) else p for p in m["merges"]]
    return vocab, merges


def spm_model(vocab, merges, byte_fallback=True, fuse_unk=True):
    return {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": fuse_unk, "byte_fallback": byte_fallback,
            "ignore_merges": False, "vocab": vocab, "merges": merges}


def spm_variants(lines):
    vocab, merges = train_spm(lines)
    n = len(vocab)
    base_added = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]
    llama2 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": base_added + [
            added(n, "[INST]"), added(n + 1, "[/INST]"),
            added(n + 2, "<sep>", lstrip=True, rstrip=True),
            added(n + 3, "<word>", special=False, single_word=True),
            added(n + 4, "Mr Darcy", special=False, normalized=True),
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": spm_model(vocab, merges),
    }
    metaspace = dict(llama2)
    metaspace["added_tokens"] = base_added + [added(n, "<|im_end|>", rstrip=True)]
    metaspace["normalizer"] = None
    metaspace["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                                  "split": True}
    metaspace["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    unk = dict(metaspace)
    unk["added_tokens"] = base_added
    unk["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                            "split": False}
    unk["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    unk["model"] = spm_model(vocab, merges, byte_fallback=False, fuse_unk=False)
    return {"spm_llama2": llama2, "spm_metaspace": metaspace, "spm_unk": unk}


# ---------------------------------------------------------------------------- byte-level

def train_bytelevel(lines, pre, special):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return json.loads(tok.to_str())


def bl_variants(lines):
    out = {}
    # Llama-3 style
    split3 = {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False}
    bl_norex = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    special3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"] + ["<|reserved_special_token_%d|>" % i for i in range(6)]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(LLAMA3_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    j = train_bytelevel(lines, pre, special3)
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split3, bl_norex]}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    j["normalizer"] = None
    j["model"]["ignore_merges"] = True
    # Words in the vocab that no merge sequence builds: only ignore_merges yields them whole.
    for w in ("Ġxyzzy", "plugh"):
        j["model"]["vocab"][w] = len(j["model"]["vocab"])
    j["model"]["merges"] = [p.split(" ") if isinstance(p, str) else p for p in j["model"]["merges"]]
    out["bl_llama3"] = j

    # Qwen2 style
    splitq = {"type": "Split", "pattern": {"Regex": QWEN2_RE}, "behavior": "Isolated", "invert": False}
    specialq = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(QWEN2_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    j = train_bytelevel(lines, pre, specialq)
    j["normalizer"] = {"type": "NFC"}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [splitq, bl_norex]}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    j["model"]["ignore_merges"] = False
    j["model"]["merges"] = [" ".join(p) if isinstance(p, list) else p for p in j["model"]["merges"]]
    out["bl_qwen2"] = j

    # GPT-2 style with prefix space, NFKC and individual digits
    pre = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    j = train_bytelevel(lines, pre, ["<|endoftext|>"])
    j["normalizer"] = {"type": "NFKC"}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    j["model"]["merges"] = [" ".join(p) if isinstance(p, list) else p for p in j["model"]["merges"]]
    out["bl_gpt2"] = j

    # The same model behind unusual normalizer / pre-tokenizer chains: every Split behavior,
    # invert, literal and regex patterns, Strip / Replace(regex) / Lowercase / NFD normalizers.
    mix = json.loads(json.dumps(j))
    mix["added_tokens"] = [added(0, "<|endoftext|>"), added(900, "<mask>", lstrip=True),
                           added(901, "ZZ", special=False, normalized=True)]
    mix["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Replace", "pattern": {"Regex": "[ \t]{2,}"}, "content": " "},
        {"type": "NFD"}, {"type": "Lowercase"}]}
    mix["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[0-9]+"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"String": ","}, "behavior": "Contiguous", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Removed", "invert": True},
        {"type": "Split", "pattern": {"Regex": "\n+"}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    out["bl_mix"] = mix
    ws = json.loads(json.dumps(j))
    ws["normalizer"] = {"type": "NFKD"}
    ws["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": False},
        {"type": "Whitespace"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    ws["decoder"] = None
    out["bl_ws_nodecoder"] = ws
    return out


def suffix_variant(lines):
    """Classic (non byte-level) BPE with continuing_subword_prefix and end_of_word_suffix."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["[UNK]", "[SEP]"], limit_alphabet=100,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>",
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    j = json.loads(tok.to_str())
    j["decoder"] = None
    return {"bpe_suffix": j}


# --------------------------------------------------------------------------------- texts

FIXED = [
    "", " ", "  ", "a", "Hello world", " Hello world", "   leading spaces", "trailing spaces   ",
    "multiple   spaces    inside", "tabs\tand\ttabs", "new\nlines\n\nand\r\nCRLF\n", "\n\n\n",
    " \n \t ", "It is a truth universally acknowledged, that a single man in possession",
    "naïve café — “quotes” ✓ 日本語 🙂", "日本語", "🙂🙂 emoji 👍🏽 family 👨‍👩‍👧", "ひらがな カタカナ 漢字",
    "x = a->b[i] << 3; /* comment */", "static int __init init_module(void)\n{\n\treturn 0;\n}\n",
    "1234567890 3.14159 0xdeadbeef 1,000,000", "don't won't I'll we've THEY'RE She'S",
    "\u00a0nbsp and \u200b zero-width", "e\u0301 vs \u00e9, \ufb01 ligature, \u2460 circled, \uff21 fullwidth",
    "Hello, World!!!   ", "Ünïcödé Ελληνικά Русский العربية עברית हिन्दी",
    "<s>Hello</s>", "[INST] What is it? [/INST] It is.", "a <sep> b<sep>c  <sep>  d",
    "<word> inside<word>x <word>", "Mr Darcy and Mr Darcy's friend, Mr  Darcy",
    "<|im_end|> after <|im_end|>\n end", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhey<|im_end|>",
    "<|endoftext|>special<|endoftext|>", "<unk> literal and </s> end", "▁ literal metaspace ▁▁x",
    "\x01\x02\x1f control \x7f", "plugh xyzzy xyzzyx plughs", "😀" * 5 + "z", "ÿþ\u0100\u0120 byte-level lookalikes Ġ Ċ",
]

POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 +
        list(" \t\n.,;:!?'\"()[]{}<>-_=+*/\\|#@$%^&~`") * 2 +
        list("éèàüöäßçñøåœæ€£¥©®°±µ¶·¿¡") + list("日本語中文한국어ひらがなカタカナ") +
        ["🙂", "👍", "🏽", "\u200d", "\u0301", "\u00a0", "\u3000", "\r\n", "   ", "'s", "'ll"])


def random_texts(rng, n):
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


def write(name, j, texts):
    os.makedirs(OUT, exist_ok=True)
    s = json.dumps(j, ensure_ascii=False, indent=None)
    tok = Tokenizer.from_str(s)
    with open(os.path.join(OUT, name + ".tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(s)
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    with open(os.path.join(OUT, name + ".cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
    print("%s: vocab %d, %d cases" % (name, tok.get_vocab_size(), len(cases)), file=sys.stderr)


def main():
    lines = corpus()
    rng = random.Random(1234)
    long_text = "\n".join(lines[2000:2060])[:6000]
    texts = FIXED + random_texts(rng, 150) + [long_text]
    variants = {}
    variants.update(spm_variants(lines))
    variants.update(bl_variants(lines))
    variants.update(suffix_variant(lines))
    for name, j in variants.items():
        write(name, j, texts)


if __name__ == "__main__":
    main()
