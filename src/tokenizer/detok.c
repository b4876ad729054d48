/*
 * detok.c — the streaming detokenizer (skv_detok_*). Each pushed id runs through the decoder
 * chain on its own; bytes produced by ByteLevel / ByteFallback go through a small UTF-8
 * assembler that emits only complete characters and holds back a character split across
 * tokens. Steps that act on the whole fused text in the reference are applied at stream level:
 * a Strip after Fuse (or after ByteLevel) removes leading characters of the stream only, and
 * Metaspace treats the first token of the stream as the reference treats list element 0.
 *
 * For valid UTF-8 the concatenated output equals skv_detokenize. Known differences, only for
 * invalid byte sequences or unusual chains: an invalid byte-fallback run gets one U+FFFD per
 * invalid byte rather than for the whole run; a Strip "stop" after Fuse is not applied.
 */
#include "tok_internal.h"

enum { RAW_NONE = 0, RAW_LOSSY = 1, RAW_PER_BYTE = 2 };

struct skv_detok {
    const skv_tokenizer *tok;  /* borrowed */
    size_t n_seen;             /* tokens that had a string so far */
    unsigned char pend[4];     /* bytes of an incomplete character */
    int n_pend;
    int pend_mode;             /* RAW_LOSSY / RAW_PER_BYTE: how to replace them if invalid */
    int *strip_left;           /* per decoder step: leading strips still to do (stream level) */
    skv_buf cur, tmp;          /* per-token scratch */
    skv_buf out;               /* decoded text not yet handed to the caller */
};

skv_status skv_detok_init(const skv_tokenizer *tok, skv_detok **out) {
    if (out) *out = NULL;
    if (!tok || !out) return skv_set_error(SKV_ERR_ARG, "skv_detok_init: NULL argument");
    skv_detok *d = calloc(1, sizeof *d);
    if (!d) return skv_tok_nomem();
    d->tok = tok;
    int n = tok->dec.n_steps;
    d->strip_left = calloc((size_t)(n ? n : 1), sizeof *d->strip_left);
    if (!d->strip_left || skv_buf_reserve(&d->out, 64)) {
        skv_detok_free(d);
        return skv_tok_nomem();
    }
    for (int k = 0; k < n; k++) d->strip_left[k] = tok->dec.steps[k].strip_start;
    *out = d;
    return SKV_OK;
}

void skv_detok_free(skv_detok *d) {
    if (!d) return;
    free(d->strip_left);
    skv_buf_free(&d->cur);
    skv_buf_free(&d->tmp);
    skv_buf_free(&d->out);
    free(d);
}

/* ---------------------------------------------------------------------- the UTF-8 assembler */

static int emit_fffd(skv_detok *d, int count) {
    for (int i = 0; i < count; i++)
        if (skv_buf_append(&d->out, "\xef\xbf\xbd", 3)) return -1;
    return 0;
}

/* Replace the held-back bytes (an incomplete character) by U+FFFD. */
static int resolve_pending(skv_detok *d) {
    if (d->n_pend == 0) return 0;
    int bad = emit_fffd(d, d->pend_mode == RAW_PER_BYTE ? d->n_pend : 1);
    d->n_pend = 0;
    return bad;
}

static void drop_pending(skv_detok *d, int k) {
    memmove(d->pend, d->pend + k, (size_t)(d->n_pend - k));
    d->n_pend -= k;
}

static int feed_byte(skv_detok *d, unsigned char c, int mode) {
    if (d->n_pend && d->pend_mode != mode && resolve_pending(d)) return -1;
    d->pend_mode = mode;
    d->pend[d->n_pend++] = c;
    while (d->n_pend) {
        int full = skv_utf8_valid_len(d->pend, (size_t)d->n_pend);
        if (full) {
            if (skv_buf_append(&d->out, d->pend, (size_t)full)) return -1;
            drop_pending(d, full);
            continue;
        }
        int ok = skv_utf8_maximal_subpart(d->pend, (size_t)d->n_pend);
        if (ok == d->n_pend) break; /* a valid but incomplete prefix: wait for more */
        if (ok == 0) ok = 1;         /* cannot start a character */
        if (emit_fffd(d, mode == RAW_PER_BYTE ? ok : 1)) return -1;
        drop_pending(d, ok);
    }
    return 0;
}

/* ------------------------------------------------------------------- one token through the chain */

static int swap_in(skv_detok *d) { /* cur <- tmp */
    skv_buf t = d->cur;
    d->cur = d->tmp;
    d->tmp = t;
    d->tmp.len = 0;
    return 0;
}

static skv_status decode_one(skv_detok *d, const char *s, size_t n) {
    const skv_decoder *dec = &d->tok->dec;
    d->cur.len = d->tmp.len = 0;
    if (!dec->present) { /* no decoder: tokens joined by spaces */
        int bad = resolve_pending(d) || (d->n_seen && skv_buf_append(&d->out, " ", 1)) ||
                  skv_buf_append(&d->out, s, n);
        d->n_seen++;
        return bad ? skv_tok_nomem() : SKV_OK;
    }
    if (skv_buf_append(&d->cur, s, n)) return skv_tok_nomem();
    int raw = RAW_NONE, fused = 0, bad = 0;
    char enc[4];
    for (int k = 0; k < dec->n_steps && !bad; k++) {
        const skv_dec_step *st = &dec->steps[k];
        int el;
        switch (st->kind) {
        case DEC_BYTELEVEL:
            bad = skv_bytelevel_token_bytes(d->cur.buf, d->cur.len, &d->tmp) || swap_in(d);
            raw = RAW_LOSSY;
            fused = 1;
            break;
        case DEC_METASPACE: {
            el = skv_utf8_encode(st->replacement, enc);
            int drop = (fused || d->n_seen == 0) && st->prepend != PREPEND_NEVER;
            bad = skv_replace_all(d->cur.buf, d->cur.len, enc, (size_t)el, " ", drop ? 0 : 1, &d->tmp) ||
                  swap_in(d);
            break;
        }
        case DEC_REPLACE:
            bad = skv_replace_all(d->cur.buf, d->cur.len, st->pat, st->pat_len, st->content,
                                  st->content_len, &d->tmp) || swap_in(d);
            break;
        case DEC_BYTEFALLBACK:
            if (raw == RAW_NONE) {
                int b = skv_byte_token(d->cur.buf, d->cur.len);
                if (b >= 0) {
                    d->cur.buf[0] = (char)b;
                    d->cur.len = 1;
                    raw = RAW_PER_BYTE;
                }
            }
            break;
        case DEC_FUSE:
            fused = 1;
            break;
        case DEC_STRIP: {
            el = skv_utf8_encode(st->strip_char, enc);
            size_t a = 0, e = d->cur.len;
            int *left = fused ? &d->strip_left[k] : NULL, start = fused ? *left : st->strip_start;
            int done = 0;
            while (done < start && e - a >= (size_t)el && memcmp(d->cur.buf + a, enc, (size_t)el) == 0) {
                a += (size_t)el;
                done++;
            }
            if (left) *left = (a < e) ? 0 : *left - done; /* stream level: only the leading chars */
            for (int j = 0; !fused && j < st->strip_stop && e - a >= (size_t)el &&
                            memcmp(d->cur.buf + e - el, enc, (size_t)el) == 0; j++)
                e -= (size_t)el;
            bad = skv_buf_append(&d->tmp, d->cur.buf + a, e - a) || swap_in(d);
            break;
        }
        }
    }
    d->n_seen++;
    if (bad) return skv_tok_nomem();
    if (raw != RAW_NONE) {
        for (size_t i = 0; i < d->cur.len; i++)
            if (feed_byte(d, (unsigned char)d->cur.buf[i], raw)) return skv_tok_nomem();
        return SKV_OK;
    }
    if (resolve_pending(d) || skv_buf_append(&d->out, d->cur.buf, d->cur.len)) return skv_tok_nomem();
    return SKV_OK;
}

/* Hand up to cap-1 bytes of decoded text to the caller, cut at a character boundary; the rest
 * waits for the next call. */
static int deliver(skv_detok *d, char *out, size_t cap) {
    size_t n = d->out.len < cap - 1 ? d->out.len : cap - 1;
    while (n > 0 && n < d->out.len && ((unsigned char)d->out.buf[n] & 0xc0) == 0x80) n--;
    memcpy(out, d->out.buf, n);
    out[n] = 0;
    memmove(d->out.buf, d->out.buf + n, d->out.len - n);
    d->out.len -= n;
    return (int)n;
}

int skv_detok_push(skv_detok *d, int32_t id, char *out, size_t cap) {
    if (!d || !out || cap == 0) return skv_set_error(SKV_ERR_ARG, "skv_detok_push: NULL argument or cap 0");
    if (cap > INT32_MAX) cap = INT32_MAX;
    const skv_tokenizer *t = d->tok;
    if (id < 0 || id >= t->n_vocab) {
        out[0] = 0;
        return skv_set_error(SKV_ERR_ARG, "skv_detok_push: id %d is out of range [0, %d)", (int)id,
                             (int)t->n_vocab);
    }
    if (t->id_str[id]) {
        skv_status st = decode_one(d, t->id_str[id], t->id_len[id]);
        if (st) {
            out[0] = 0;
            return st;
        }
    }
    return deliver(d, out, cap);
}

int skv_detok_flush(skv_detok *d, char *out, size_t cap) {
    if (!d || !out || cap == 0) return skv_set_error(SKV_ERR_ARG, "skv_detok_flush: NULL argument or cap 0");
    if (cap > INT32_MAX) cap = INT32_MAX;
    if (resolve_pending(d)) {
        out[0] = 0;
        return skv_tok_nomem();
    }
    return deliver(d, out, cap);
}
