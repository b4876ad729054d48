/*
 * utf8.c — UTF-8 validation and lossy conversion, a few Unicode character classes, the GPT-2
 * byte-level alphabet, and the growable buffers every other tokenizer file uses.
 */
#include "tok_internal.h"

#include <utf8proc.h>

/* ------------------------------------------------------------------------------- buffers */

int skv_buf_reserve(skv_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + extra + 1) ncap *= 2;
    char *nb = realloc(b->buf, ncap);
    if (!nb) return -1;
    /* Zero the new tail: PCRE2's JIT may read a few bytes past a subject's end (harmless, but
     * memcheck would report it as a use of uninitialised memory). */
    memset(nb + b->cap, 0, ncap - b->cap);
    b->buf = nb;
    b->cap = ncap;
    return 0;
}

int skv_buf_append(skv_buf *b, const void *data, size_t n) {
    if (skv_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->buf + b->len, data, n);
    b->len += n;
    b->buf[b->len] = 0;
    return 0;
}

void skv_buf_free(skv_buf *b) {
    free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
}

int skv_ids_push(skv_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t ncap = a->cap ? 2 * a->cap : 64;
        int32_t *nv = realloc(a->v, ncap * sizeof *nv);
        if (!nv) return -1;
        a->v = nv;
        a->cap = ncap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* --------------------------------------------------------------------------------- UTF-8 */

/* Allowed range of the second byte for lead byte c (the later bytes are always 80..BF), and the
 * total length; 0 if c cannot start a sequence. */
static int lead_info(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xbf;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) {
        if (c == 0xe0) *lo = 0xa0;
        if (c == 0xed) *hi = 0x9f;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (c == 0xf0) *lo = 0x90;
        if (c == 0xf4) *hi = 0x8f;
        return 4;
    }
    return 0;
}

/* Number of leading bytes of s[0..n) that are consistent with a well-formed sequence (capped at
 * its full length), and the full length in *need (0 if s[0] cannot start one). */
static int prefix_ok(const unsigned char *s, size_t n, int *need) {
    unsigned char lo, hi;
    *need = n ? lead_info(s[0], &lo, &hi) : 0;
    if (*need == 0) return 0;
    int k = 1;
    while (k < *need && (size_t)k < n) {
        unsigned char c = s[k];
        if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf)) break;
        k++;
    }
    return k;
}

int skv_utf8_valid_len(const unsigned char *s, size_t n) {
    int need, k = prefix_ok(s, n, &need);
    return (need > 0 && k == need) ? need : 0;
}

int skv_utf8_maximal_subpart(const unsigned char *s, size_t n) {
    int need;
    return prefix_ok(s, n, &need);
}

int skv_utf8_decode(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    int l = skv_utf8_valid_len(u, n);
    if (l == 0) {
        *cp = 0xfffd;
        return 1;
    }
    uint32_t c = l == 1 ? u[0] : l == 2 ? (u[0] & 0x1fu) : l == 3 ? (u[0] & 0x0fu) : (u[0] & 0x07u);
    for (int i = 1; i < l; i++) c = (c << 6) | (u[i] & 0x3fu);
    *cp = c;
    return l;
}

int skv_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

int skv_utf8_is_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int l = skv_utf8_valid_len(u + i, n - i);
        if (!l) return 0;
        i += (size_t)l;
    }
    return 1;
}

int skv_utf8_append_lossy(skv_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid stretch */
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int l = skv_utf8_valid_len(u + i, n - i);
        if (l) {
            i += (size_t)l;
            continue;
        }
        if (skv_buf_append(out, s + run, i - run)) return -1;
        if (skv_buf_append(out, "\xef\xbf\xbd", 3)) return -1;
        int bad = skv_utf8_maximal_subpart(u + i, n - i);
        i += (size_t)(bad > 0 ? bad : 1);
        run = i;
    }
    return skv_buf_append(out, s + run, n - run);
}

int skv_is_whitespace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

int skv_is_numeric(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
           cat == UTF8PROC_CATEGORY_NO;
}

/* ----------------------------------------------------------------- GPT-2 byte-level alphabet */

/* Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) map to themselves; the other 68 bytes map,
 * in increasing order, to U+0100, U+0101, ... */
uint32_t skv_bytelevel_char(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae) return b;
    uint32_t k; /* rank of b among the non-printable bytes */
    if (b <= 0x20)
        k = b;
    else if (b <= 0xa0)
        k = 33u + (uint32_t)(b - 0x7f); /* 0x7f..0xa0 */
    else
        k = 33u + 34u;                  /* 0xad */
    return 0x100u + k;
}

int skv_bytelevel_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff))
        return (int)cp;
    if (cp < 0x100 || cp >= 0x100 + 68) return -1;
    uint32_t k = cp - 0x100;
    if (k <= 32) return (int)k;
    if (k <= 32 + 34) return (int)(0x7f + (k - 33));
    return 0xad;
}
