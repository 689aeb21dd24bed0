#!/usr/bin/env bash
# Builds llama.cpp's ggml CPU backend, as shipped inside the npm package node-llama-cpp (a git bundle), into a
# cache directory outside the repository, plus ggml_matmul (our own timing program, beside this script) linked
# against it. The kernels benchmark runs that program as its peer. Nothing of llama.cpp enters the repository.
#   usage: scripts/bench/peer/build_llama.sh [cache_dir]    (default: $RMLX_PEER_DIR or ~/.cache/rmlx-peer)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-${RMLX_PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rmlx-peer}}"
jobs="${JOBS:-$(nproc)}"
mkdir -p "$dir"
cd "$dir"

if [ ! -f package/llama/gitRelease.bundle ]; then
  tarball="$(npm pack node-llama-cpp --silent | tail -n 1)"
  tar xzf "$tarball" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
fi
if [ ! -d llama.cpp/.git ]; then
  git clone --quiet package/llama/gitRelease.bundle llama.cpp
fi

cmake -S llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF >/dev/null
cmake --build build --target ggml-cpu ggml-base -j "$jobs" >/dev/null

libs="$(find build -name 'libggml-cpu.a' | head -n 1) $(find build -name 'libggml-base.a' | head -n 1)"
g++ -O2 -std=c++17 -o ggml_matmul "$here/ggml_matmul.cpp" -Illama.cpp/ggml/include $libs -lpthread -lm
echo "$dir/ggml_matmul"
