#!/usr/bin/env bash
# deps.sh — install the Debian 12 packages slimkv builds and runs with, if any are missing.
set -euo pipefail
pkgs=(gcc make pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev libutf8proc-dev
      liblzma-dev libzstd-dev gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
