/*
 * fuzz_scd_frame.c — bytes as an SCD wire frame (net/frame.h) through skv_frame_check with a
 * 1 MiB payload limit; an accepted frame's float payload is decoded with skv_wire_unpack. An
 * accepted frame must have exactly the length its header states, a payload inside the input,
 * and decoded values that are all finite. The first byte selects the mode: even, the rest as it
 * is; odd, the rest with its last 8 bytes replaced by the right CRC-64, so that the fuzzer
 * reaches the checks behind the checksum.
 */
#include "fuzz.h"
#include "net/frame.h"

#include <lzma.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>

static int check(const uint8_t *data, size_t size) {
    skv_frame f;
    if (skv_frame_check(data, size, 1u << 20, &f) != SKV_OK) return 0;
    if (SKV_FRAME_HDR + f.len + SKV_FRAME_TAIL != size || f.payload != data + SKV_FRAME_HDR) return 1;
    if (f.enc == SKV_ENC_BYTES || f.enc == SKV_ENC_I32) return 0;
    const uint64_t n = (uint64_t)f.rows * f.cols;
    if (n > (1u << 20)) return 0; /* a valid huge-but-cheap header: nothing more to check */
    float *x = malloc(sizeof(float) * (n ? n : 1));
    if (!x) return 0;
    int bad = 0;
    if (skv_wire_unpack(f.enc, f.part, f.rows, f.cols, f.group, f.payload, x) == SKV_OK)
        for (uint64_t i = 0; i < n; i++) bad |= !isfinite(x[i]);
    free(x);
    return bad;
}

int skv_fuzz_scd_frame(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!(data[0] & 1) || size < 1 + SKV_FRAME_TAIL) return check(data + 1, size - 1);
    uint8_t *b = malloc(size - 1);
    if (!b) return 0;
    memcpy(b, data + 1, size - 1);
    const uint64_t crc = lzma_crc64(b, size - 1 - SKV_FRAME_TAIL, 0);
    for (int i = 0; i < 8; i++) b[size - 1 - SKV_FRAME_TAIL + (size_t)i] = (uint8_t)(crc >> (8 * i));
    const int r = check(b, size - 1);
    free(b);
    return r;
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_scd_frame)
#endif
