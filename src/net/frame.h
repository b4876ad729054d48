/*
 * frame.h — SCD's wire format: versioned frames with lengths and a CRC-64 each, and the
 * encodings of their float payloads. The parser trusts nothing: every field is checked against
 * fixed limits and against the others before a byte of payload is read, and the checksum before
 * a payload is used.
 *
 * Frame, little-endian:
 *   0  u32 magic "SKVF"        4  u16 version (1)      6  u8 type (skv_frame_type)
 *   7  u8  encoding            8  i32 layer (-1: none) 12 u16 part (skv_frame_part)
 *  14  u16 group (KIVI4: head_dim; else 0)           16 u32 rows   20 u32 cols
 *  24  u64 payload bytes      32  payload              then u64 CRC-64 (xz) of bytes 0..end of payload
 * Payload by encoding: BYTES rows bytes (cols 1); I32 and F32 rows x cols 4-byte values; BF16
 * rows x cols 2-byte values; I8ROW per row an f32 scale then cols int8 (value = scale * q);
 * KIVI4 per head (cols / group) per 32-row block one kv/quant.h int4 block (keys per channel,
 * values per token: part K or V says which), the last block padded by repeating its last row.
 */
#ifndef SKV_NET_FRAME_H
#define SKV_NET_FRAME_H

#include "internal.h"

#define SKV_FRAME_MAGIC 0x46564b53u /* "SKVF" */
#define SKV_FRAME_VERSION 1
#define SKV_FRAME_HDR 32
#define SKV_FRAME_TAIL 8
#define SKV_FRAME_MAX_ROWS (1u << 24)
#define SKV_FRAME_MAX_COLS (1u << 20)

typedef enum { SKV_FT_HELLO = 1, SKV_FT_IDS = 2, SKV_FT_LAYER = 3, SKV_FT_END = 4, SKV_FT_RESULT = 5,
               SKV_FT_COUNT } skv_frame_type;
typedef enum { SKV_ENC_BYTES = 0, SKV_ENC_I32 = 1, SKV_ENC_F32 = 2, SKV_ENC_BF16 = 3, SKV_ENC_I8ROW = 4,
               SKV_ENC_KIVI4 = 5, SKV_ENC_COUNT } skv_wire_enc;
typedef enum { SKV_PART_NONE = 0, SKV_PART_ZK = 1, SKV_PART_ZV = 2, SKV_PART_ZH = 3, SKV_PART_K = 4,
               SKV_PART_V = 5, SKV_PART_RESID = 6, SKV_PART_COUNT } skv_frame_part;

typedef struct skv_frame {
    uint8_t type, enc;
    int32_t layer;
    uint16_t part, group;
    uint32_t rows, cols;
    uint64_t len;           /* payload bytes */
    const uint8_t *payload; /* after skv_frame_check: into the checked buffer */
} skv_frame;

/* Payload bytes of an encoding for (rows, cols, group, part); SKV_ERR_FORMAT naming the field
 * when the combination is invalid or too large. */
skv_status skv_wire_payload_bytes(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, uint64_t *bytes);
/* Floats (rows, cols) to a payload (dst: skv_wire_payload_bytes bytes) and back. unpack refuses
 * (naming row and column) a non-finite value or scale. */
skv_status skv_wire_pack(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, const float *x, uint8_t *dst);
skv_status skv_wire_unpack(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, const uint8_t *src, float *x);
/* A bf16 payload of rows x cols checked as skv_wire_unpack checks it (every value finite),
 * without unpacking: for a consumer that decodes bf16 codes on its device. */
skv_status skv_wire_bf16_check(const uint8_t *src, uint32_t rows, uint32_t cols);
/* x rounded through an encoding (pack then unpack): what the receiver will hold. */
skv_status skv_wire_round(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, float *x);

/* A whole frame (header, payload, CRC) into a malloc'd buffer. */
skv_status skv_frame_build(const skv_frame *f, const void *payload, uint8_t **out, size_t *len);
/* Check a 32-byte header: magic, version, type, encoding, part, sizes (the payload length must
 * be what the encoding of rows x cols takes, and at most max_payload). */
skv_status skv_frame_parse_header(const uint8_t *hdr, uint64_t max_payload, skv_frame *f);
/* Check a whole frame of exactly len bytes: header, length, then the CRC; f->payload points
 * into buf. */
skv_status skv_frame_check(const uint8_t *buf, size_t len, uint64_t max_payload, skv_frame *f);

const char *skv_frame_type_name(int t);
const char *skv_wire_enc_name(int e);
int skv_wire_enc_parse(const char *name); /* -1 if unknown */

#endif
