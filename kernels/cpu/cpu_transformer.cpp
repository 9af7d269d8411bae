// CpuBackend: embedding, RMSNorm, SwiGLU gate and cross-entropy.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/cpu/cpu_backend.hpp"
#include "kernels/cpu/vec_math.hpp"

namespace mohge {

namespace {
// Rows reduced per partial sum in weight-gradient reductions. Partials are summed in chunk
// order, so results do not depend on the thread count.
constexpr int64_t kRowChunk = 64;
}  // namespace

void CpuBackend::embedding_forward(const EmbeddingParams& p) {
  const int64_t D = p.dim;
  // Checked before the parallel loop: an exception cannot leave an OpenMP region.
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    MOHGE_CHECK(p.tokens[t] >= 0 && p.tokens[t] < p.vocab,
                "token " << p.tokens[t] << " outside vocab " << p.vocab);
  }
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t t = 0; t < p.num_tokens; ++t)
    std::copy_n(p.table + static_cast<int64_t>(p.tokens[t]) * D, D, p.out + t * D);
}

void CpuBackend::embedding_backward(const EmbeddingParams& p) {
  // Each thread owns a range of columns and walks all tokens in order: deterministic.
  const int64_t D = p.dim;
  constexpr int64_t kCols = 16;
  const int64_t num_blocks = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t c0 = b * kCols, c1 = std::min(D, c0 + kCols);
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      float* dst = p.d_table + static_cast<int64_t>(p.tokens[t]) * D;
      const float* src = p.d_out + t * D;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

void CpuBackend::rmsnorm_forward(const RmsNormParams& p) {
  const int64_t D = p.dim;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * D;
    float* y = p.y + r * D;
    float ss = 0.0f;
    for (int64_t c = 0; c < D; ++c) ss += x[c] * x[c];
    const float rstd = 1.0f / std::sqrt(ss / static_cast<float>(D) + p.eps);
    p.rstd[r] = rstd;
    for (int64_t c = 0; c < D; ++c) y[c] = x[c] * rstd * p.weight[c];
  }
}

void CpuBackend::rmsnorm_backward(const RmsNormParams& p) {
  const int64_t D = p.dim;
  const int64_t num_chunks = (p.rows + kRowChunk - 1) / kRowChunk;
  std::vector<float> partial(static_cast<size_t>(num_chunks * D), 0.0f);
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t ch = 0; ch < num_chunks; ++ch) {
    float* dw = partial.data() + ch * D;
    const int64_t r1 = std::min(p.rows, (ch + 1) * kRowChunk);
    for (int64_t r = ch * kRowChunk; r < r1; ++r) {
      const float* x = p.x + r * D;
      const float* dy = p.d_y + r * D;
      float* dx = p.d_x + r * D;
      const float rstd = p.rstd[r];
      // y = x·rstd·w;  dx = rstd·g - x·rstd³·mean(g·x),  g = dy·w
      float dot = 0.0f;
      for (int64_t c = 0; c < D; ++c) dot += dy[c] * p.weight[c] * x[c];
      const float k = dot * rstd * rstd * rstd / static_cast<float>(D);
      for (int64_t c = 0; c < D; ++c) {
        dx[c] += rstd * dy[c] * p.weight[c] - x[c] * k;
        dw[c] += dy[c] * x[c] * rstd;
      }
    }
  }
  for (int64_t ch = 0; ch < num_chunks; ++ch)
    for (int64_t c = 0; c < D; ++c) p.d_weight[c] += partial[static_cast<size_t>(ch * D + c)];
}

void CpuBackend::swiglu_forward(const SwigluParams& p) {
  const int64_t W = p.width;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* a = p.act + r * 2 * W;
    float* h = p.hidden + r * W;
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) h[c] = a[c] * vsigmoid(a[c]) * a[W + c];
  }
}

void CpuBackend::swiglu_backward(const SwigluParams& p) {
  const int64_t W = p.width;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* a = p.act + r * 2 * W;
    const float* dh = p.d_hidden + r * W;
    float* da = p.d_act + r * 2 * W;
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) {
      const float g = a[c], u = a[W + c];
      const float s = vsigmoid(g);
      da[c] = dh[c] * u * s * (1.0f + g * (1.0f - s));
      da[W + c] = dh[c] * g * s;
    }
  }
}

double CpuBackend::cross_entropy_forward(const CrossEntropyParams& p) {
  const int64_t V = p.vocab;
  for (int64_t r = 0; r < p.rows; ++r)  // before the parallel loop (no throwing inside it)
    MOHGE_CHECK(p.targets[r] < V, "target " << p.targets[r] << " outside vocab " << V);
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* z = p.logits + r * V;
    float mx = z[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, z[v]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) sum += vexp(z[v] - mx);
    const float lse = mx + std::log(sum);
    p.lse[r] = lse;
    const int32_t tgt = p.targets[r];
    p.losses[r] = tgt < 0 ? 0.0f : lse - z[tgt];
  }
  double total = 0.0;
  for (int64_t r = 0; r < p.rows; ++r) total += p.losses[r];
  return total;
}

void CpuBackend::cross_entropy_backward(const CrossEntropyParams& p) {
  const int64_t V = p.vocab;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t r = 0; r < p.rows; ++r) {
    float* z = p.logits + r * V;
    const int32_t tgt = p.targets[r];
    if (tgt < 0) {
      std::fill_n(z, V, 0.0f);
      continue;
    }
    const float lse = p.lse[r];
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) z[v] = vexp(z[v] - lse) * p.grad_scale;
    z[tgt] -= p.grad_scale;
  }
}

}  // namespace mohge
