// Peer timing for the kernels benchmark: one y = x @ W^T through ggml's CPU backend (llama.cpp's own kernels),
// W in a ggml type filled from random values, x f32. Prints one JSON line with the best seconds per product.
//   usage: ggml_matmul <q4_0|q8_0|mxfp4|tq1_0|tq2_0|bf16|f16|f32> M K N threads [budget_seconds]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s <q4_0|q8_0|mxfp4|tq1_0|tq2_0|bf16|f16|f32> M K N threads [budget_seconds]\n", argv[0]);
    return 2;
  }
  const char *tname = argv[1];
  ggml_type type;
  if (!strcmp(tname, "q4_0")) type = GGML_TYPE_Q4_0;
  else if (!strcmp(tname, "q8_0")) type = GGML_TYPE_Q8_0;
  else if (!strcmp(tname, "mxfp4")) type = GGML_TYPE_MXFP4;
  else if (!strcmp(tname, "tq1_0")) type = GGML_TYPE_TQ1_0;
  else if (!strcmp(tname, "tq2_0")) type = GGML_TYPE_TQ2_0;
  else if (!strcmp(tname, "bf16")) type = GGML_TYPE_BF16;
  else if (!strcmp(tname, "f16")) type = GGML_TYPE_F16;
  else if (!strcmp(tname, "f32")) type = GGML_TYPE_F32;
  else {
    fprintf(stderr, "unknown type %s\n", tname);
    return 2;
  }
  const int64_t M = atoll(argv[2]), K = atoll(argv[3]), N = atoll(argv[4]);
  const int threads = atoi(argv[5]);
  const double budget = argc > 6 ? atof(argv[6]) : 1.0;

  const size_t wbytes = ggml_row_size(type, K) * N;
  ggml_init_params params = {wbytes + (size_t)(M * K + M * N) * 4 * 2 + (256u << 20), nullptr, false};
  ggml_context *ctx = ggml_init(params);
  ggml_tensor *a = ggml_new_tensor_2d(ctx, type, K, N);
  ggml_tensor *b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, M);
  ggml_tensor *c = ggml_mul_mat(ctx, a, b);
  ggml_cgraph *gf = ggml_new_graph(ctx);
  ggml_build_forward_expand(gf, c);

  std::mt19937 gen(1);
  std::normal_distribution<float> dist(0.f, 0.02f);
  {
    std::vector<float> src((size_t)(N * K));
    for (auto &v : src) v = dist(gen);
    // ggml_quantize_chunk converts to every type but f32, which is a plain copy.
    if (type == GGML_TYPE_F32) memcpy(a->data, src.data(), src.size() * sizeof(float));
    else ggml_quantize_chunk(type, src.data(), a->data, 0, N, K, nullptr);
  }
  float *bd = (float *)b->data;
  for (int64_t i = 0; i < M * K; i++) bd[i] = dist(gen) * 50.f;

  ggml_graph_compute_with_ctx(ctx, gf, threads);  // warm-up
  double best = 1e30, total = 0;
  int iters = 0;
  while (iters < 3 || (total < budget && iters < 1000)) {
    auto t0 = std::chrono::steady_clock::now();
    ggml_graph_compute_with_ctx(ctx, gf, threads);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = dt < best ? dt : best;
    total += dt;
    iters++;
  }
  printf("{\"type\":\"%s\",\"M\":%lld,\"K\":%lld,\"N\":%lld,\"seconds\":%.9f,\"weight_bytes\":%zu,\"iters\":%d}\n", tname,
         (long long)M, (long long)K, (long long)N, best, wbytes, iters);
  ggml_free(ctx);
  return 0;
}
