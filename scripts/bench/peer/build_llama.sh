#!/usr/bin/env bash
# Builds the benchmark peer: llama.cpp's CPU backend, from the llama.cpp source that the npm package node-llama-cpp
# carries as a git bundle, into a cache directory outside the repository. Targets: llama-bench, llama-quantize,
# test-backend-ops, and ggml_matmul (our own timing program, beside this script) linked against the same ggml.
# Nothing of llama.cpp enters the repository. Idempotent: a finished build is recognised by a stamp file.
#   usage: scripts/bench/peer/build_llama.sh [cache_dir]
#   cache_dir: $RMLX_PEER_DIR, else ~/.cache/rmlx/peer/llama.cpp      parallel jobs: $JOBS, else 2
#   RMLX_PEER_ISA=avx2: build for AVX2 + FMA only (no AVX-512), the peer for rmlx's avx2 variant on a CPU that has
#   more (compare with RMLX_ISA=avx2 on our side); unset: tuned for this CPU (-DGGML_NATIVE=ON)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-${RMLX_PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rmlx/peer/llama.cpp}}"
jobs="${JOBS:-2}"
targets=(llama-bench llama-quantize test-backend-ops)

# The stamp names the sources and build options, so a change to either rebuilds.
case "${RMLX_PEER_ISA:-native}" in
  native) isa=(-DGGML_NATIVE=ON) ;;
  avx2) isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF) ;;
  *) echo "build_llama.sh: RMLX_PEER_ISA must be native or avx2, not '$RMLX_PEER_ISA'" >&2; exit 2 ;;
esac
options=(-DCMAKE_BUILD_TYPE=Release "${isa[@]}" -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=ON
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DGGML_CCACHE=OFF)
stamp_of() {
  { git -C "$dir/src" rev-parse HEAD 2>/dev/null; echo "${options[*]}";
    cat "$here/ggml_matmul.cpp" "$here/build_llama.sh"; } | sha256sum | cut -c1-16
}

mkdir -p "$dir"
cd "$dir"
if [ -f .stamp ] && [ "$(cat .stamp)" = "$(stamp_of)" ] && [ -x ggml_matmul ]; then
  echo "$dir"
  exit 0
fi

if [ ! -f npm/package/llama/gitRelease.bundle ]; then
  rm -rf npm && mkdir npm
  tarball="$(cd npm && npm pack node-llama-cpp --silent 2>/dev/null | tail -n 1)"
  tar xzf "npm/$tarball" -C npm package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
  rm -f "npm/$tarball"
fi
if [ ! -d src/.git ]; then
  git -c advice.detachedHead=false clone --quiet npm/package/llama/gitRelease.bundle src
fi

cmake -S src -B build "${options[@]}" >build.log 2>&1 || { tail -n 30 build.log >&2; exit 1; }
cmake --build build --target "${targets[@]}" -j "$jobs" >>build.log 2>&1 || { tail -n 30 build.log >&2; exit 1; }
for t in "${targets[@]}"; do ln -sf "build/bin/$t" "$t"; done

# ggml_matmul links the static ggml libraries of this build; OpenMP because the build threads ggml with it.
libs=()
for l in ggml ggml-cpu ggml-base; do libs+=("$(find build -name "lib$l.a" | head -n 1)"); done
g++ -O2 -std=c++17 -o ggml_matmul "$here/ggml_matmul.cpp" -Isrc/ggml/include "${libs[@]}" -fopenmp -lpthread -lm

stamp_of >.stamp
echo "$dir"
