#!/usr/bin/env python3
"""bshuf.py split|join IN OUT: split a bf16 file's bytes into the low then the high byte of each
2-byte word (xz compresses the exponent bytes well apart from the mantissa bytes), or join back."""
import sys
mode, src, dst = sys.argv[1:4]
b = open(src, 'rb').read()
if mode == 'split':
    odd = len(b) % 2
    out = bytes([odd]) + b[0::2] + b[1::2] if not odd else bytes([odd]) + (b + b'\0')[0::2] + (b + b'\0')[1::2]
else:
    odd, b = b[0], b[1:]
    h = len(b) // 2
    out = bytearray(len(b))
    out[0::2], out[1::2] = b[:h], b[h:]
    out = bytes(out[:len(out) - odd])
open(dst, 'wb').write(out)
