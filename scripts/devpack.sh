#!/bin/sh
# devpack.sh DIR — pack the CUDA build (build-cuda/slimkv, build-cuda/skv_tests) and the
# Debian shared libraries it links (not the CUDA ones, which the GPU machine has) into
# DIR/pack.tar.xz, for a `run` call that carries DIR. On the GPU machine:
#   mkdir -p DIR/p && tar xJf DIR/pack.tar.xz -C DIR/p && export LD_LIBRARY_PATH=$PWD/DIR/p/lib
#   DIR/p/bin/slimkv ...
set -e
dir=${1:?usage: devpack.sh DIR}
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
mkdir -p "$tmp/bin" "$tmp/lib" "$dir"
for b in build-cuda/slimkv build-cuda/skv_tests; do [ -x "$b" ] && cp "$b" "$tmp/bin/"; done
# (patterns anchored at the file name: "libc.so" alone would also drop libcjson.so)
ldd build-cuda/slimkv | awk '/=>/ {print $3}' | grep -v -e /usr/local/cuda -e '/libc\.so' -e '/libm\.so' \
    -e '/libstdc++' -e '/libgcc_s' -e '/libpthread' -e '/libdl\.so' -e '/librt\.so' -e '/libgomp' | while read -r l; do
    cp -L "$l" "$tmp/lib/"
done
tar cJf "$dir/pack.tar.xz" -C "$tmp" .
rm -rf "$tmp"
ls -la "$dir/pack.tar.xz"
