// CpuBackend: causal multi-head attention with Hugging Face Llama RoPE.
//
// RoPE (rotate_half convention, all head dims, positions from 0): for i < hd/2,
//   inv_freq_i = 1 / base^(2i/hd),  θ = pos · inv_freq_i
//   q'[i]      = q[i]·cos θ - q[i+hd/2]·sin θ
//   q'[i+hd/2] = q[i+hd/2]·cos θ + q[i]·sin θ
// Scores use scale 1/sqrt(hd); each (batch, head) pair runs its GEMMs on one thread.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/cpu/cpu_backend.hpp"
#include "kernels/cpu/vec_math.hpp"

namespace mohge {

namespace {

struct RopeTable {
  std::vector<float> cos;  // (T, hd/2)
  std::vector<float> sin;  // (T, hd/2)
};

RopeTable rope_table(int64_t seq, int64_t head_dim, float base) {
  const int64_t half = head_dim / 2;
  RopeTable tab;
  tab.cos.resize(static_cast<size_t>(seq * half));
  tab.sin.resize(static_cast<size_t>(seq * half));
  for (int64_t i = 0; i < half; ++i) {
    // float32 arithmetic as in the Hugging Face implementation.
    const float inv_freq =
        1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    for (int64_t t = 0; t < seq; ++t) {
      const float theta = static_cast<float>(t) * inv_freq;
      tab.cos[static_cast<size_t>(t * half + i)] = static_cast<float>(std::cos(double{theta}));
      tab.sin[static_cast<size_t>(t * half + i)] = static_cast<float>(std::sin(double{theta}));
    }
  }
  return tab;
}

// Rotates the first 2·D columns (q and k) of every row by +θ (direction 1) or -θ (-1).
void rope_apply(float* rows, int64_t ld, const AttentionParams& p, const RopeTable& tab,
                float direction, int num_threads) {
  const int64_t N = p.batch * p.seq, hd = p.head_dim, half = hd / 2;
  const int64_t num_vecs = 2 * p.heads;  // q heads then k heads
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < N; ++r) {
    const int64_t pos = r % p.seq;
    const float* c = tab.cos.data() + pos * half;
    const float* s = tab.sin.data() + pos * half;
    float* row = rows + r * ld;
    for (int64_t v = 0; v < num_vecs; ++v) {
      float* x = row + v * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half], sn = direction * s[i];
        x[i] = x1 * c[i] - x2 * sn;
        x[i + half] = x2 * c[i] + x1 * sn;
      }
    }
  }
}

}  // namespace

void CpuBackend::attention_forward(const AttentionParams& p) {
  const int64_t T = p.seq, H = p.heads, hd = p.head_dim, D = H * hd, ld = 3 * D;
  MOHGE_CHECK(hd % 2 == 0, "head_dim " << hd << " must be even for RoPE");
  const RopeTable tab = rope_table(T, hd, p.rope_base);
  rope_apply(p.qkv, ld, p, tab, 1.0f, num_threads_);
  const Precision precision = precision_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
  for (int64_t bh = 0; bh < p.batch * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const float* q = p.qkv + b * T * ld + h * hd;
    const float* k = q + D;
    const float* v = q + 2 * D;
    float* P = p.probs + bh * T * T;
    cpu_gemm_serial({.trans_a = false,
                     .trans_b = true,
                     .m = T,
                     .n = T,
                     .k = hd,
                     .alpha = scale,
                     .a = q,
                     .lda = ld,
                     .b = k,
                     .ldb = ld,
                     .beta = 0.0f,
                     .c = P,
                     .ldc = T},
                    precision);
    for (int64_t i = 0; i < T; ++i) {
      float* row = P + i * T;
      float mx = row[0];
      for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j <= i; ++j) {
        row[j] = vexp(row[j] - mx);
        sum += row[j];
      }
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
      std::fill(row + i + 1, row + T, 0.0f);
    }
    cpu_gemm_serial({.trans_a = false,
                     .trans_b = false,
                     .m = T,
                     .n = hd,
                     .k = T,
                     .alpha = 1.0f,
                     .a = P,
                     .lda = T,
                     .b = v,
                     .ldb = ld,
                     .beta = 0.0f,
                     .c = p.out + b * T * D + h * hd,
                     .ldc = D},
                    precision);
  }
}

void CpuBackend::attention_backward(const AttentionParams& p) {
  const int64_t T = p.seq, H = p.heads, hd = p.head_dim, D = H * hd, ld = 3 * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const Precision precision = precision_;

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads_)
  for (int64_t bh = 0; bh < p.batch * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const float* q = p.qkv + b * T * ld + h * hd;
    const float* k = q + D;
    const float* v = q + 2 * D;
    float* dq = p.d_qkv + b * T * ld + h * hd;
    float* dk = dq + D;
    float* dv = dq + 2 * D;
    const float* P = p.probs + bh * T * T;
    const float* dO = p.d_out + b * T * D + h * hd;
    float* dS = p.scratch + static_cast<int64_t>(omp_get_thread_num()) * T * T;
    // dP = dO·Vᵀ ; dV = Pᵀ·dO
    cpu_gemm_serial({.trans_a = false,
                     .trans_b = true,
                     .m = T,
                     .n = T,
                     .k = hd,
                     .alpha = 1.0f,
                     .a = dO,
                     .lda = D,
                     .b = v,
                     .ldb = ld,
                     .beta = 0.0f,
                     .c = dS,
                     .ldc = T},
                    precision);
    cpu_gemm_serial({.trans_a = true,
                     .trans_b = false,
                     .m = T,
                     .n = hd,
                     .k = T,
                     .alpha = 1.0f,
                     .a = P,
                     .lda = T,
                     .b = dO,
                     .ldb = D,
                     .beta = 0.0f,
                     .c = dv,
                     .ldc = ld},
                    precision);
    // dS = P ⊙ (dP - rowsum(dP ⊙ P))
    for (int64_t i = 0; i < T; ++i) {
      float* row = dS + i * T;
      const float* prow = P + i * T;
      float dot = 0.0f;
      for (int64_t j = 0; j <= i; ++j) dot += row[j] * prow[j];
      for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot);
      std::fill(row + i + 1, row + T, 0.0f);
    }
    // dQ = scale·dS·K ; dK = scale·dSᵀ·Q
    cpu_gemm_serial({.trans_a = false,
                     .trans_b = false,
                     .m = T,
                     .n = hd,
                     .k = T,
                     .alpha = scale,
                     .a = dS,
                     .lda = T,
                     .b = k,
                     .ldb = ld,
                     .beta = 0.0f,
                     .c = dq,
                     .ldc = ld},
                    precision);
    cpu_gemm_serial({.trans_a = true,
                     .trans_b = false,
                     .m = T,
                     .n = hd,
                     .k = T,
                     .alpha = scale,
                     .a = dS,
                     .lda = T,
                     .b = q,
                     .ldb = ld,
                     .beta = 0.0f,
                     .c = dk,
                     .ldc = ld},
                    precision);
  }
  // Gradients w.r.t. the rotated q,k → w.r.t. the projections: rotate back by -θ.
  const RopeTable tab = rope_table(T, hd, p.rope_base);
  rope_apply(p.d_qkv, ld, p, tab, -1.0f, num_threads_);
}

}  // namespace mohge
