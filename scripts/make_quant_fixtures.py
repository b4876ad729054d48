#!/usr/bin/env python3
"""Reference dequantisation fixtures for tests/test_quant.c, from gguf-py (PyPI `gguf`, numpy
dequantisers written independently of ggml's C code): for each type, random blocks (scales drawn as
finite f16 values, codes as random bytes) and gguf-py's dequantised floats.
File tests/data/quant/<TYPE>.bin: u32 n_blocks, u32 block_bytes, the blocks, then n_blocks*block f32.
    pip install gguf==0.19.0 && python3 scripts/make_quant_fixtures.py"""
import os, struct
import numpy as np
from gguf import quants, GGMLQuantizationType as T, GGML_QUANT_SIZES

out = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "quant")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(15)
# byte offsets of the f16 scale fields in each block (made finite and of a sane size)
F16_AT = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
for t, offs in F16_AT.items():
    blk, nbytes = GGML_QUANT_SIZES[t]
    nb = 8
    raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    for o in offs:
        v = (rng.standard_normal(nb) * 0.05).astype(np.float16)
        raw[:, o:o + 2] = v.view(np.uint8).reshape(nb, 2)
    ref = quants.dequantize(raw.reshape(-1), t).astype(np.float32).reshape(-1)
    assert ref.size == nb * blk and np.all(np.isfinite(ref))
    with open(os.path.join(out, t.name + ".bin"), "wb") as f:
        f.write(struct.pack("<II", nb, nbytes) + raw.tobytes() + ref.tobytes())
    print(t.name, nb, "blocks", ref[:4])
