"""Ship a cache-augmentation coprocessor's model.safetensors to the GPU machine as a small file:
each tensor XORed (as 16-bit words) with kvt-l's tensor of the same name, high and low bytes in
separate planes, xz-compressed (N_L = 16: 37.8 MB -> 19 MB; kvt-l itself travels anyway).

  python3 scripts/aug_delta.py pack   AUG.safetensors BASE_DIR OUT.delta
  python3 scripts/aug_delta.py unpack OUT.delta       BASE_DIR AUG.safetensors   (byte-identical)

BASE_DIR holds the base's safetensors (single or sharded). Only numpy and the standard library."""
import glob
import hashlib
import json
import lzma
import os
import struct
import sys

import numpy as np


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return b, n, json.loads(b[8:8 + n])


def base_tensors(base_dir):
    out = {}
    for p in sorted(glob.glob(os.path.join(base_dir, "*.safetensors"))):
        b, n, h = read_st(p)
        for k, v in h.items():
            if k != "__metadata__":
                o = v["data_offsets"]
                out[k] = b[8 + n + o[0]:8 + n + o[1]]
    return out


def planes(aug_bytes, n, h, base, sign):
    """The XOR of every 2-byte-dtype tensor with the base's (same name and size), as two planes."""
    hi, lo = [], []
    for k in sorted(x for x in h if x != "__metadata__"):
        o = h[k]["data_offsets"]
        a = np.frombuffer(aug_bytes[8 + n + o[0]:8 + n + o[1]], np.uint16)
        b = base.get(k)
        x = a ^ np.frombuffer(b, np.uint16) if b is not None and len(b) == 2 * a.size else a
        hi.append((x >> 8).astype(np.uint8)), lo.append((x & 255).astype(np.uint8))
    return np.concatenate(hi), np.concatenate(lo)


def pack(aug, base_dir, out):
    b, n, h = read_st(aug)
    for k, v in h.items():
        if k != "__metadata__" and v["dtype"] not in ("BF16", "F16"):
            sys.exit(f"{aug}: tensor {k} is {v['dtype']} (only 2-byte dtypes are packed)")
    hi, lo = planes(b, n, h, base_tensors(base_dir), 1)
    body = lzma.compress(hi.tobytes() + lo.tobytes(), preset=6)
    head = json.dumps({"header": b[:8 + n].hex(), "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + body)
    print(f"{out}: {os.path.getsize(out)} bytes for {len(b)}")


def unpack(delta, base_dir, out):
    d = open(delta, "rb").read()
    hn = struct.unpack("<Q", d[:8])[0]
    meta = json.loads(d[8:8 + hn])
    body = lzma.decompress(d[8 + hn:])
    header = bytes.fromhex(meta["header"])
    n = struct.unpack("<Q", header[:8])[0]
    h = json.loads(header[8:])
    base = base_tensors(base_dir)
    half = len(body) // 2
    hi, lo = np.frombuffer(body[:half], np.uint8), np.frombuffer(body[half:], np.uint8)
    data = bytearray(meta["size"] - len(header))
    pos = 0
    for k in sorted(x for x in h if x != "__metadata__"):
        o = h[k]["data_offsets"]
        cnt = (o[1] - o[0]) // 2
        x = (hi[pos:pos + cnt].astype(np.uint16) << 8) | lo[pos:pos + cnt]
        b = base.get(k)
        a = x ^ np.frombuffer(b, np.uint16) if b is not None and len(b) == 2 * cnt else x
        data[o[0]:o[1]] = a.astype("<u2").tobytes()
        pos += cnt
    full = header + bytes(data)
    if hashlib.sha256(full).hexdigest() != meta["sha256"]:
        sys.exit(f"{delta}: the unpacked file's sha256 differs (another base?)")
    with open(out, "wb") as f:
        f.write(full)
    print(f"{out}: {len(full)} bytes, sha256 {meta['sha256']}")


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(*sys.argv[2:])
