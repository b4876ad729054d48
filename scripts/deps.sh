#!/usr/bin/env bash
# deps.sh — install the Debian 12 packages slimkv builds and runs with, if any are missing.
set -euo pipefail
pkgs=(gcc make pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev libutf8proc-dev
      liblzma-dev libzstd-dev libucx-dev gnuplot-nox libmicrohttpd-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# clang with the libFuzzer runtime, for `make fuzz-smoke` inside `make test`: installed when
# possible; where it cannot be, fuzz-smoke is skipped (the Makefile probes for it)
fuzz_pkgs=(clang libclang-rt-14-dev)
fuzz_missing=()
for p in "${fuzz_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || fuzz_missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && [ ${#fuzz_missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if [ ${#fuzz_missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${fuzz_missing[*]} (for make fuzz)" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${fuzz_missing[@]}" >&2 ||
    echo "deps.sh: could not install ${fuzz_missing[*]}: make fuzz-smoke will be skipped" >&2
fi
