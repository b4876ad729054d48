#!/usr/bin/env python3
"""scd_qa_prompts.py — SCD calibration prompts in the formats the consumer (kvt-l-qa) was
fine-tuned on, built from the *training* corpus only (never from the evaluation rows):

  dictqa-like:  "Dictionary:\\n" + k lines "word: gloss" (WordNet entries of the training corpus,
                first sense, cut at ';') + 'Question: What does "w" mean?\\nAnswer:' + " gloss"
  macroqa-like: a cut of a training kernel source holding "#define NAME VALUE" +
                "\\n/* Question: what is the value of NAME in the code above? */\\n/* Answer:" + " VALUE */"

The answer is appended so that calibration rows cover the positions the consumer answers from.
Output: one file of prompts separated by 0x1e; even-numbered prompts come from even-numbered
corpus documents (calibration, `scd-dump --whole-docs`), odd-numbered from odd documents (the
patch ranking, `scd-rank --whole-docs`), so the two never share a source document.

  python3 train/scd_qa_prompts.py --corpus ../shared/data/corpus.train.txt.xz -o qa.txt
"""
import argparse
import lzma
import random
import re

SENSE = re.compile(r'^\s+(?:n|v|adj|adv|adj\.|s)\s*(?:\d+)?\s*:\s*(.*)$')


def wordnet_entries(doc):
    """(word, gloss) of each entry's first sense in a WordNet-formatted document."""
    out, word, gloss, in_first = [], None, None, False
    for line in doc.split('\n'):
        if line and not line[0].isspace():
            if word and gloss:
                out.append((word, gloss))
            word, gloss, in_first = line.strip(), None, False
            continue
        m = SENSE.match(line)
        if m and word:
            if gloss is None:
                gloss, in_first = m.group(1).strip(), True
            else:
                in_first = False
        elif in_first and line.strip():
            gloss += ' ' + line.strip()
    if word and gloss:
        out.append((word, gloss))
    res = []
    for w, g in out:
        g = re.sub(r'\[syn:.*', '', g).split(';')[0].strip()
        if 2 <= len(w) <= 40 and 3 <= len(g) <= 160 and ':' not in w and '"' not in w:
            res.append((w, g))
    return res


DEFINE = re.compile(r'^#define\s+([A-Z][A-Z0-9_]{2,40})\s+(\(?-?(?:0x[0-9a-fA-F]+|\d+)[uUlL]*\)?)\s*$', re.M)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--corpus', required=True)
    ap.add_argument('-o', '--out', required=True)
    ap.add_argument('--calib', type=int, default=200, help='calibration prompts (half of each kind)')
    ap.add_argument('--rank', type=int, default=24, help='ranking prompts (half of each kind)')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    opener = lzma.open if a.corpus.endswith('.xz') else open
    with opener(a.corpus, 'rt', encoding='utf-8', errors='replace') as f:
        docs = f.read().split('\x1e')
    rng = random.Random(a.seed)
    words = {0: [], 1: []}
    codes = {0: [], 1: []}
    for i, d in enumerate(docs):
        if '\n    n 1:' in d or '\n    v 1:' in d or '\n    adj 1:' in d:
            words[i % 2].extend(wordnet_entries(d))
        elif '#define' in d:
            ms = list(DEFINE.finditer(d))
            if ms:
                codes[i % 2].append((d, ms))

    def dict_prompt(par):
        k = rng.randint(30, 110)
        ents = rng.sample(words[par], k)
        w, g = rng.choice(ents)
        body = ''.join(f'{x}: {y}\n' for x, y in ents)
        return f'Dictionary:\n{body}Question: What does "{w}" mean?\nAnswer: {g}'

    def macro_prompt(par):
        d, ms = rng.choice(codes[par])
        m = rng.choice(ms)
        end = min(len(d), m.end() + rng.randint(0, 3000))
        start = max(0, end - rng.randint(1500, 7000))
        start = min(start, m.start())
        return (d[start:end] + f'\n/* Question: what is the value of {m.group(1)} in the code above? */\n'
                f'/* Answer: {m.group(2)} */')

    out = []
    for i in range(max(a.calib, a.rank)):
        for par, n in ((0, a.calib), (1, a.rank)):
            if i < n:
                out.append(dict_prompt(par) if i % 2 == 0 else macro_prompt(par))
            else:
                out.append('')
    with open(a.out, 'w', encoding='utf-8') as f:
        f.write('\x1e'.join(p.replace('\x1e', ' ') for p in out))
    print(f'{a.out}: {a.calib} calibration + {a.rank} ranking prompts; '
          f'{len(words[0])}/{len(words[1])} dictionary entries, {len(codes[0])}/{len(codes[1])} code files (even/odd)')


if __name__ == '__main__':
    main()
