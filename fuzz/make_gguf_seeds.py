#!/usr/bin/env python3
"""Seeds for fuzz_gguf (fuzz/corpus/gguf/): a small file with every metadata type, and, when
models/*.gguf are present (scripts/get-models.sh), each real file's metadata with arrays cut to 40
entries and its first three tensor infos pointing at small zero-filled tensors. Standard library only."""
import glob, os, struct, sys

out = os.path.join(os.path.dirname(__file__), "corpus", "gguf")
os.makedirs(out, exist_ok=True)
SZ = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}

def s(x): b = x.encode() if isinstance(x, str) else x; return struct.pack("<Q", len(b)) + b

def write(path, kvs, tensors, align=32):
    """kvs: (key, type, value) with value bytes already packed; tensors: (name, dims, type, nbytes)"""
    h = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs: h += s(k) + struct.pack("<I", t) + v
    off = 0; infos = b""; data = []
    for name, dims, ty, nb in tensors:
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, off); data.append((off, nb)); off += (nb + align - 1) // align * align
    h += infos
    h += b"\0" * ((-len(h)) % align)
    body = bytearray(off)
    for i, (o, nb) in enumerate(data): body[o:o + nb] = bytes((j * 7 + i) & 0x3f for j in range(nb))
    open(path, "wb").write(h + bytes(body))

kvs = [("t.u8", 0, struct.pack("<B", 7)), ("t.i64", 11, struct.pack("<q", -5)), ("t.f64", 12, struct.pack("<d", 0.5)),
       ("t.bool", 7, b"\1"), ("t.str", 8, s("héllo")), ("general.alignment", 4, struct.pack("<I", 64)),
       ("t.arr", 9, struct.pack("<IQ", 8, 2) + s("a") + s("▁b")), ("t.arrf", 9, struct.pack("<IQ", 6, 2) + struct.pack("<ff", 1, 2))]
write(os.path.join(out, "types.gguf"), kvs, [("vec", [4], 0, 16), ("q8", [64, 2], 8, 136), ("q4k", [256, 1], 12, 144)], 64)

def read_real(path):
    f = open(path, "rb"); b = f.read(64 << 20)
    at = [4]
    def u(fmt):
        v = struct.unpack_from(fmt, b, at[0]); at[0] += struct.calcsize(fmt); return v[0]
    def rs(): n = u("<Q"); v = b[at[0]:at[0] + n]; at[0] += n; return v
    ver = u("<I"); nt = u("<Q"); nk = u("<Q"); kvs = []
    for _ in range(nk):
        k = rs().decode(); t = u("<I")
        if t == 8: kvs.append((k, 8, s(rs())))
        elif t == 9:
            et = u("<I"); n = u("<Q"); keep = min(n, 40); vals = []
            for i in range(n):
                if et == 8: v = s(rs())
                else: v = b[at[0]:at[0] + SZ[et]]; at[0] += SZ[et]
                if i < keep: vals.append(v)
            kvs.append((k, 9, struct.pack("<IQ", et, keep) + b"".join(vals)))
        else: kvs.append((k, t, b[at[0]:at[0] + SZ[t]])); at[0] += SZ[t]
    tens = []
    for i in range(nt):
        name = rs().decode(); nd = u("<I"); dims = [u("<Q") for _ in range(nd)]; ty = u("<I"); u("<Q")
        if i < 3: tens.append((name, dims, ty))
    return kvs, tens

BLK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210), 30: (1, 2)}
for p in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "models", "*.gguf"))):
    kvs, tens = read_real(p)
    small = []
    for name, dims, ty in tens:
        blk, by = BLK.get(ty, (1, 4)); d0 = max(blk, 32 if blk == 1 else blk); dims = [d0] + [1] * (len(dims) - 1)
        small.append((name, dims, ty, d0 // blk * by))
    write(os.path.join(out, os.path.basename(p).replace(".gguf", ".meta.gguf")), kvs, small)
print("seeds in", out, sorted(os.listdir(out)))
