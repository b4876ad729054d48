/*
 * serve_text.c — stop strings across token boundaries and log-probabilities for the server.
 */
#include "serve.h"

#include <math.h>
#include <string.h>

size_t srv_stop_scan(const char *text, size_t len, size_t released, char *const *stop, int n_stop, int *hit) {
    *hit = 0;
    size_t first = len;
    for (int i = 0; i < n_stop; i++) { /* the earliest complete match */
        const size_t sl = strlen(stop[i]);
        if (!sl || sl > len) continue;
        for (size_t k = released; k + sl <= len && k < first; k++)
            if (!memcmp(text + k, stop[i], sl)) {
                first = k;
                *hit = 1;
                break;
            }
    }
    if (*hit) return first;
    size_t keep = len; /* hold back the longest suffix that is a proper prefix of a stop string */
    for (int i = 0; i < n_stop; i++) {
        const size_t sl = strlen(stop[i]);
        for (size_t l = sl > 0 ? sl - 1 : 0; l > 0; l--) {
            if (l > len - released) continue;
            if (!memcmp(text + len - l, stop[i], l)) {
                if (len - l < keep) keep = len - l;
                break;
            }
        }
    }
    return keep;
}

float srv_logprobs(const float *x, int32_t n, int32_t id, int k, int32_t *top_id, float *top_lp) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int32_t i = 0; i < n; i++) sum += exp((double)(x[i] - mx));
    const float lse = mx + (float)log(sum);
    for (int j = 0; j < k; j++) top_id[j] = -1;
    for (int32_t i = 0; i < n && k > 0; i++) { /* insertion into the k best */
        if (top_id[k - 1] >= 0 && x[i] <= x[top_id[k - 1]]) continue;
        int j = k - 1;
        while (j > 0 && (top_id[j - 1] < 0 || x[i] > x[top_id[j - 1]])) {
            top_id[j] = top_id[j - 1];
            j--;
        }
        top_id[j] = i;
    }
    for (int j = 0; j < k; j++) top_lp[j] = top_id[j] >= 0 ? x[top_id[j]] - lse : -INFINITY;
    return x[id] - lse;
}
