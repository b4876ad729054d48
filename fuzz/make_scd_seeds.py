#!/usr/bin/env python3
"""make_scd_seeds.py — seed frames for fuzz_scd_frame (net/frame.h layout), one of each
encoding, written to fuzz/corpus/scd_frame/. Run from the repository root."""
import os
import struct

import numpy as np

POLY = 0xC96C5795D7870F42  # CRC-64/XZ, reflected


def crc64(data):
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ POLY if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def frame(ftype, enc, layer, part, group, rows, cols, payload):
    h = struct.pack('<IHBBiHHIIQ', 0x46564B53, 1, ftype, enc, layer, part, group, rows, cols, len(payload))
    body = h + payload
    return body + struct.pack('<Q', crc64(body))


def main():
    out = 'fuzz/corpus/scd_frame'
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    bf = (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    i8 = b''.join(struct.pack('<f', 0.02) + bytes((int(v) & 0xFF for v in rng.integers(-127, 128, 6))) for _ in range(5))
    # KIVI4, one head of 32 channels, 3 rows: one 32-row block; K params 2*32 f32, V 2*32*(32/32) f32
    kb = np.concatenate([np.full(32, 0.1, np.float32), np.zeros(32, np.float32)]).tobytes() + bytes(32 * 32 // 2)
    vb = np.concatenate([np.full(32, 0.1, np.float32), np.zeros(32, np.float32)]).tobytes() + bytes(32 * 32 // 2)
    seeds = {
        'hello': frame(1, 0, -1, 0, 0, 13, 1, b'{"method":"x"}'[:13]),
        'ids': frame(2, 1, -1, 0, 0, 3, 1, struct.pack('<3i', 5, 6, 7)),
        'f32': frame(3, 2, 0, 1, 0, 5, 6, x.tobytes()),
        'bf16': frame(3, 3, 1, 2, 0, 5, 6, bf),
        'int8': frame(3, 4, 2, 3, 0, 5, 6, i8),
        'kivi4_k': frame(3, 5, 0, 4, 32, 3, 32, kb),
        'kivi4_v': frame(3, 5, 0, 5, 32, 3, 32, vb),
        'end': frame(4, 0, -1, 0, 0, 2, 1, b'{}'),
    }
    for k, v in seeds.items():  # first byte: the harness's mode (0 as is, 1 CRC recomputed)
        with open(os.path.join(out, k), 'wb') as f:
            f.write(b'\x00' + v)
        with open(os.path.join(out, k + '_fixcrc'), 'wb') as f:
            f.write(b'\x01' + v)
    print(f'{2 * len(seeds)} seeds in {out}')


if __name__ == '__main__':
    main()
