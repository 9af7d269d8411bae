// Every dense op of the CPU backend: forward against a plain reference loop (in double),
// backward against central finite differences of a random projection of the output.
//
// Tolerances: forward results are fp32 computations compared with double references, so
// they agree to a few ulps times the reduction length (atol 1e-5, rtol 1e-4). Finite
// differences of fp32 functions with h = 1e-2 carry O(h²) truncation plus fp32 rounding
// noise of order 1e-7·|loss|/h, so gradients are compared with atol 2e-3, rtol 2e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/backend.hpp"
#include "kernels/check.hpp"
#include "kernels/linear.hpp"
#include "tests/test_util.hpp"

namespace mohge {
namespace {

using testing::all_close;
using testing::dot;
using testing::gradient_matches;
using testing::random_vector;

constexpr double kFwdAtol = 1e-5, kFwdRtol = 1e-4;
constexpr double kGradAtol = 2e-3, kGradRtol = 2e-2;
constexpr float kH = 1e-2f;

class OpsTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be_ = make_cpu_backend(2);
};

TEST_F(OpsTest, GemmMatchesNaiveForEveryTransposeAndLeadingDimension) {
  const int64_t m = 7, n = 5, k = 9;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
      auto a = random_vector((ta ? k : m) * lda, 1);
      auto b = random_vector((tb ? n : k) * ldb, 2);
      auto c = random_vector(m * ldc, 3);
      std::vector<float> expected = c;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double s = 0.0;
          for (int64_t p = 0; p < k; ++p) {
            const double av = ta ? a[p * lda + i] : a[i * lda + p];
            const double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
            s += av * bv;
          }
          expected[i * ldc + j] = static_cast<float>(0.5 * s + 2.0 * c[i * ldc + j]);
        }
      }
      be_->gemm({.trans_a = ta,
                 .trans_b = tb,
                 .m = m,
                 .n = n,
                 .k = k,
                 .alpha = 0.5f,
                 .a = a.data(),
                 .lda = lda,
                 .b = b.data(),
                 .ldb = ldb,
                 .beta = 2.0f,
                 .c = c.data(),
                 .ldc = ldc});
      EXPECT_TRUE(all_close(c, expected, kFwdAtol, kFwdRtol)) << "ta=" << ta << " tb=" << tb;
    }
  }
}

TEST_F(OpsTest, EmbeddingGathersRowsAndScattersGradients) {
  const int64_t V = 6, D = 20, N = 5;
  std::vector<int32_t> tokens = {3, 0, 3, 5, 1};
  auto table = random_vector(V * D, 4);
  std::vector<float> out(N * D);
  be_->embedding_forward({.num_tokens = N,
                          .dim = D,
                          .vocab = V,
                          .tokens = tokens.data(),
                          .table = table.data(),
                          .out = out.data()});
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < D; ++c) EXPECT_EQ(out[t * D + c], table[tokens[t] * D + c]);
  auto dout = random_vector(N * D, 5);
  std::vector<float> dtable(V * D, 0.0f), expected(V * D, 0.0f);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < D; ++c) expected[tokens[t] * D + c] += dout[t * D + c];
  be_->embedding_backward({.num_tokens = N,
                           .dim = D,
                           .vocab = V,
                           .tokens = tokens.data(),
                           .d_out = dout.data(),
                           .d_table = dtable.data()});
  EXPECT_TRUE(all_close(dtable, expected, 1e-6, 0));
}

TEST_F(OpsTest, OutOfVocabularyIdsAreReportedNotCrashing) {
  std::vector<int32_t> tokens = {1, 9};
  std::vector<float> table(6 * 4), out(2 * 4), logits(2 * 6), lse(2), losses(2);
  EXPECT_THROW(be_->embedding_forward({.num_tokens = 2,
                                       .dim = 4,
                                       .vocab = 6,
                                       .tokens = tokens.data(),
                                       .table = table.data(),
                                       .out = out.data()}),
               CheckError);
  EXPECT_THROW(be_->cross_entropy_forward({.rows = 2,
                                           .vocab = 6,
                                           .targets = tokens.data(),
                                           .logits = logits.data(),
                                           .lse = lse.data(),
                                           .losses = losses.data()}),
               CheckError);
}

TEST_F(OpsTest, RmsNormForwardAndBackward) {
  const int64_t N = 70, D = 12;  // 70 rows: more than one 64-row reduction chunk
  auto x = random_vector(N * D, 6);
  auto w = random_vector(D, 7);
  for (float& v : w) v += 1.0f;
  std::vector<float> y(N * D), rstd(N), expected(N * D);
  for (int64_t r = 0; r < N; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < D; ++c) ss += double{x[r * D + c]} * x[r * D + c];
    const double inv = 1.0 / std::sqrt(ss / D + 1e-5);
    for (int64_t c = 0; c < D; ++c)
      expected[r * D + c] = static_cast<float>(x[r * D + c] * inv * w[c]);
  }
  auto run = [&] {
    be_->rmsnorm_forward({.rows = N,
                          .dim = D,
                          .eps = 1e-5f,
                          .x = x.data(),
                          .weight = w.data(),
                          .y = y.data(),
                          .rstd = rstd.data()});
  };
  run();
  EXPECT_TRUE(all_close(y, expected, kFwdAtol, kFwdRtol));

  auto proj = random_vector(N * D, 8);
  std::vector<float> dx(N * D, 0.0f), dw(D, 0.0f);
  be_->rmsnorm_backward({.rows = N,
                         .dim = D,
                         .eps = 1e-5f,
                         .x = x.data(),
                         .weight = w.data(),
                         .rstd = rstd.data(),
                         .d_y = proj.data(),
                         .d_x = dx.data(),
                         .d_weight = dw.data()});
  auto loss = [&] {
    run();
    return dot(y, proj);
  };
  EXPECT_TRUE(gradient_matches(x, dx, kH, loss, kGradAtol, kGradRtol));
  EXPECT_TRUE(gradient_matches(w, dw, kH, loss, kGradAtol, kGradRtol));
}

// Plain causal attention with Hugging Face RoPE, in double.
std::vector<float> reference_attention(const std::vector<float>& qkv, int64_t B, int64_t T,
                                       int64_t H, int64_t hd) {
  const int64_t D = H * hd, half = hd / 2;
  std::vector<float> out(B * T * D);
  auto rot = [&](const float* v, int64_t pos, std::vector<double>& o) {
    o.resize(hd);
    for (int64_t i = 0; i < half; ++i) {
      const float inv = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / hd);
      const double th = static_cast<float>(pos) * inv;
      o[i] = v[i] * std::cos(th) - v[i + half] * std::sin(th);
      o[i + half] = v[i + half] * std::cos(th) + v[i] * std::sin(th);
    }
  };
  std::vector<double> q, k, s(T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        rot(&qkv[(b * T + i) * 3 * D + h * hd], i, q);
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          rot(&qkv[(b * T + j) * 3 * D + D + h * hd], j, k);
          double d = 0;
          for (int64_t c = 0; c < hd; ++c) d += q[c] * k[c];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j <= i; ++j) z += (s[j] = std::exp(s[j] - mx));
        for (int64_t c = 0; c < hd; ++c) {
          double o = 0;
          for (int64_t j = 0; j <= i; ++j)
            o += s[j] / z * qkv[(b * T + j) * 3 * D + 2 * D + h * hd + c];
          out[(b * T + i) * D + h * hd + c] = static_cast<float>(o);
        }
      }
    }
  }
  return out;
}

TEST_F(OpsTest, AttentionWithRopeForwardAndBackward) {
  const int64_t B = 2, T = 7, H = 2, hd = 4, D = H * hd;
  auto qkv0 = random_vector(B * T * 3 * D, 9);
  std::vector<float> qkv, probs(B * H * T * T), out(B * T * D);
  auto run = [&] {
    qkv = qkv0;  // forward rotates q,k in place
    be_->attention_forward({.batch = B,
                            .seq = T,
                            .heads = H,
                            .head_dim = hd,
                            .qkv = qkv.data(),
                            .probs = probs.data(),
                            .out = out.data()});
  };
  run();
  EXPECT_TRUE(all_close(out, reference_attention(qkv0, B, T, H, hd), kFwdAtol, kFwdRtol));

  auto proj = random_vector(B * T * D, 10);
  std::vector<float> dqkv(B * T * 3 * D), scratch(be_->num_threads() * T * T);
  be_->attention_backward({.batch = B,
                           .seq = T,
                           .heads = H,
                           .head_dim = hd,
                           .qkv = qkv.data(),
                           .probs = probs.data(),
                           .d_out = proj.data(),
                           .d_qkv = dqkv.data(),
                           .scratch = scratch.data()});
  auto loss = [&] {
    run();
    return dot(out, proj);
  };
  EXPECT_TRUE(gradient_matches(qkv0, dqkv, kH, loss, kGradAtol, kGradRtol));
}

TEST_F(OpsTest, SwigluForwardAndBackward) {
  const int64_t R = 5, W = 6;
  auto act = random_vector(R * 2 * W, 11, 2.0f);
  std::vector<float> h(R * W), expected(R * W);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < W; ++c) {
      const double g = act[r * 2 * W + c], u = act[r * 2 * W + W + c];
      expected[r * W + c] = static_cast<float>(g / (1 + std::exp(-g)) * u);
    }
  auto run = [&] {
    be_->swiglu_forward({.rows = R, .width = W, .act = act.data(), .hidden = h.data()});
  };
  run();
  EXPECT_TRUE(all_close(h, expected, kFwdAtol, kFwdRtol));
  auto proj = random_vector(R * W, 12);
  std::vector<float> dact(R * 2 * W);
  be_->swiglu_backward(
      {.rows = R, .width = W, .act = act.data(), .d_hidden = proj.data(), .d_act = dact.data()});
  EXPECT_TRUE(gradient_matches(
      act, dact, kH,
      [&] {
        run();
        return dot(h, proj);
      },
      kGradAtol, kGradRtol));
}

TEST_F(OpsTest, CrossEntropyForwardAndBackwardWithIgnoredRows) {
  const int64_t N = 4, V = 9;
  std::vector<int32_t> targets = {2, -1, 8, 0};
  auto logits0 = random_vector(N * V, 13, 3.0f);
  std::vector<float> logits, lse(N), losses(N);
  const float scale = 1.0f / 3.0f;  // three non-ignored rows
  auto run = [&] {
    logits = logits0;
    return be_->cross_entropy_forward({.rows = N,
                                       .vocab = V,
                                       .targets = targets.data(),
                                       .logits = logits.data(),
                                       .lse = lse.data(),
                                       .losses = losses.data()}) *
           scale;
  };
  const double mean = run();
  double expected = 0.0;
  for (int64_t r = 0; r < N; ++r) {
    if (targets[r] < 0) continue;
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double{logits0[r * V + v]});
    expected += (std::log(z) - logits0[r * V + targets[r]]) / 3.0;
  }
  EXPECT_NEAR(mean, expected, 1e-5);
  EXPECT_EQ(losses[1], 0.0f);
  be_->cross_entropy_backward({.rows = N,
                               .vocab = V,
                               .targets = targets.data(),
                               .logits = logits.data(),
                               .lse = lse.data(),
                               .grad_scale = scale});
  const std::vector<float> grad = logits;
  EXPECT_TRUE(gradient_matches(logits0, grad, kH, run, kGradAtol, kGradRtol));
}

TEST_F(OpsTest, LinearBackwardMatchesFiniteDifferences) {
  const int64_t N = 6, in = 5, out = 4;
  auto x = random_vector(N * in, 14);
  auto w = random_vector(out * in, 15);
  std::vector<float> y(N * out);
  auto proj = random_vector(N * out, 16);
  auto loss = [&] {
    linear_forward(*be_, x.data(), w.data(), y.data(), N, in, out);
    return dot(y, proj);
  };
  std::vector<float> dx(N * in, 0.0f), dw(out * in, 0.0f);
  linear_backward(*be_, x.data(), w.data(), proj.data(), dx.data(), dw.data(), N, in, out, 0.0f);
  EXPECT_TRUE(gradient_matches(x, dx, kH, loss, kGradAtol, kGradRtol));
  EXPECT_TRUE(gradient_matches(w, dw, kH, loss, kGradAtol, kGradRtol));
}

TEST_F(OpsTest, AdamWMatchesPyTorchFormula) {
  const int64_t n = 3;
  std::vector<float> p = {1.0f, -2.0f, 0.5f}, g = {0.1f, -0.3f, 2.0f};
  std::vector<float> m = {0.01f, 0.0f, -0.2f}, v = {0.001f, 0.0f, 0.5f};
  const float lr = 0.1f, wd = 0.1f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, gs = 0.5f;
  const int64_t step = 3;
  std::vector<float> ep(n), em(n), ev(n);
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g[i] * gs;
    em[i] = static_cast<float>(b1 * m[i] + (1 - b1) * gi);
    ev[i] = static_cast<float>(b2 * v[i] + (1 - b2) * gi * gi);
    const double mh = em[i] / (1 - std::pow(b1, step)), vh = ev[i] / (1 - std::pow(b2, step));
    ep[i] = static_cast<float>(p[i] * (1 - lr * wd) - lr * mh / (std::sqrt(vh) + eps));
  }
  be_->adamw_update({.size = n,
                     .param = p.data(),
                     .grad = g.data(),
                     .exp_avg = m.data(),
                     .exp_avg_sq = v.data(),
                     .lr = lr,
                     .beta1 = b1,
                     .beta2 = b2,
                     .eps = eps,
                     .weight_decay = wd,
                     .step = step,
                     .grad_scale = gs});
  EXPECT_TRUE(all_close(p, ep, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(m, em, 1e-7, 1e-6));
  EXPECT_TRUE(all_close(v, ev, 1e-7, 1e-6));
}

// train.precision "bf16" on the CPU: A and B are rounded to bf16 (nearest even) and the
// products accumulate in fp32. So the result equals a double-precision GEMM of the *rounded*
// inputs to fp32 accumulation error, and differs from the GEMM of the raw inputs by the
// rounding (which the test checks is really there).
TEST_F(OpsTest, Bf16GemmRoundsItsInputsAndAccumulatesInFp32) {
  std::string why;
  if (!cpu_bf16_available(&why)) GTEST_SKIP() << why;
  auto bf16 = make_cpu_backend(2, Precision::kBf16);
  EXPECT_EQ(bf16->precision(), Precision::kBf16);
  auto round_bf16 = [](float f) {  // the reference rounding, written separately
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t lsb = (u >> 16) & 1u;
    u = (u + 0x7fffu + lsb) & 0xffff0000u;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
  };
  EXPECT_EQ(round_bf16(1.0f + 1.0f / 256), 1.0f);               // a tie rounds to even
  EXPECT_EQ(round_bf16(1.0f + 3.0f / 256), 1.0f + 4.0f / 256);  // and away from odd
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      const int64_t m = 33, n = 21, k = 130, lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 3,
                    ldc = n + 1;
      const auto a = random_vector((ta ? k : m) * lda, 41),
                 b = random_vector((tb ? n : k) * ldb, 42);
      const auto c0 = random_vector(m * ldc, 43);
      auto at = [&](const std::vector<float>& x, int64_t ld, bool t, int64_t i, int64_t j) {
        return t ? x[j * ld + i] : x[i * ld + j];
      };
      std::vector<float> want_rounded(c0), want_raw(c0);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double sr = 0.0, sx = 0.0;
          for (int64_t l = 0; l < k; ++l) {
            const float x = at(a, lda, ta, i, l), y = at(b, ldb, tb, l, j);
            sr += double{round_bf16(x)} * round_bf16(y);
            sx += double{x} * y;
          }
          want_rounded[i * ldc + j] = static_cast<float>(0.5 * sr + 0.25 * c0[i * ldc + j]);
          want_raw[i * ldc + j] = static_cast<float>(0.5 * sx + 0.25 * c0[i * ldc + j]);
        }
      }
      std::vector<float> c(c0);
      bf16->gemm({.trans_a = ta,
                  .trans_b = tb,
                  .m = m,
                  .n = n,
                  .k = k,
                  .alpha = 0.5f,
                  .a = a.data(),
                  .lda = lda,
                  .b = b.data(),
                  .ldb = ldb,
                  .beta = 0.25f,
                  .c = c.data(),
                  .ldc = ldc});
      EXPECT_TRUE(all_close(c, want_rounded, 1e-4, 1e-5)) << ta << tb;
      EXPECT_FALSE(all_close(c, want_raw, 1e-4, 1e-5)) << "no bf16 rounding happened";
      EXPECT_TRUE(all_close(c, want_raw, 0.15, 2e-2)) << ta << tb;
    }
  }
}

TEST_F(OpsTest, SumSquaresIsIndependentOfThreadCount) {
  auto x = random_vector(100003, 17);
  auto one = make_cpu_backend(1);
  double expected = 0.0;
  for (float v : x) expected += double{v} * v;
  EXPECT_NEAR(be_->sum_squares(static_cast<int64_t>(x.size()), x.data()), expected,
              1e-9 * expected);
  EXPECT_EQ(be_->sum_squares(static_cast<int64_t>(x.size()), x.data()),
            one->sum_squares(static_cast<int64_t>(x.size()), x.data()));
}

}  // namespace
}  // namespace mohge
