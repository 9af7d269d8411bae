// Token permute/unpermute and the heterogeneous grouped SwiGLU experts.
// Routing is checked exactly with rows that encode their source token (STYLE.md: comms
// tests); numbers separately with tolerances (see test_ops.cpp for how they were chosen).
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/backend.hpp"
#include "tests/test_util.hpp"

namespace mohge {
namespace {

using testing::all_close;
using testing::dot;
using testing::gradient_matches;
using testing::random_vector;

class ExpertsTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be_ = make_cpu_backend(2);
};

TEST_F(ExpertsTest, DispatchSortsAssignmentsByExpertStablyAndCombineUndoesIt) {
  const int64_t N = 5, D = 3;
  const int32_t K = 2, E = 4;
  // Expert 2 gets nothing; expert 3 gets tokens 0, 1, 4.
  const std::vector<int32_t> index = {3, 0, 1, 3, 0, 1, 0, 1, 3, 1};
  DispatchPlan plan;
  be_->dispatch_plan(index.data(), N, K, E, &plan);
  EXPECT_EQ(plan.expert_offsets, (std::vector<int64_t>{0, 3, 7, 7, 10}));
  const int32_t* sorted_token = plan.sorted_token.data();  // CPU backend: host memory
  EXPECT_EQ(std::vector<int32_t>(sorted_token, sorted_token + plan.rows()),
            (std::vector<int32_t>{0, 2, 3, 1, 2, 3, 4, 0, 1, 4}));
  std::vector<float> x(N * D);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < D; ++c) x[t * D + c] = static_cast<float>(100 * t + c);
  std::vector<float> xs(N * K * D);
  be_->dispatch_forward({.dim = D, .plan = &plan, .x = x.data(), .x_sorted = xs.data()});
  for (int64_t r = 0; r < N * K; ++r)
    for (int64_t c = 0; c < D; ++c)
      EXPECT_EQ(xs[r * D + c], static_cast<float>(100 * sorted_token[r] + c)) << r;

  // Combine with identity experts: y[t] = Σ_k w_{t,k} x[t].
  const std::vector<float> w = {0.25f, 0.75f, 1.0f, 2.0f, 0.5f, 0.5f, 3.0f, 1.0f, 0.1f, 0.2f};
  std::vector<float> y(N * D, 0.0f);
  be_->combine_forward(
      {.dim = D, .plan = &plan, .weight = w.data(), .y_sorted = xs.data(), .y = y.data()});
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < D; ++c)
      EXPECT_FLOAT_EQ(y[t * D + c], (w[2 * t] + w[2 * t + 1]) * x[t * D + c]);

  // Backward of dispatch sums the K copies of each token.
  std::vector<float> dx(N * D, 0.0f);
  be_->dispatch_backward({.dim = D, .plan = &plan, .d_x_sorted = xs.data(), .d_x = dx.data()});
  for (int64_t i = 0; i < N * D; ++i) EXPECT_EQ(dx[i], 2.0f * x[i]);
}

TEST_F(ExpertsTest, CombineBackwardMatchesFiniteDifferences) {
  const int64_t N = 6, D = 4;
  const int32_t K = 2, E = 3;
  const std::vector<int32_t> index = {0, 1, 2, 0, 1, 2, 0, 2, 1, 0, 2, 1};
  DispatchPlan plan;
  be_->dispatch_plan(index.data(), N, K, E, &plan);
  auto ys = random_vector(N * K * D, 1);
  auto w = random_vector(N * K, 2);
  auto proj = random_vector(N * D, 3);
  std::vector<float> y(N * D);
  auto loss = [&] {
    std::fill(y.begin(), y.end(), 0.0f);
    be_->combine_forward(
        {.dim = D, .plan = &plan, .weight = w.data(), .y_sorted = ys.data(), .y = y.data()});
    return dot(y, proj);
  };
  std::vector<float> dys(N * K * D), dw(N * K);
  be_->combine_backward({.dim = D,
                         .plan = &plan,
                         .weight = w.data(),
                         .y_sorted = ys.data(),
                         .d_y = proj.data(),
                         .d_y_sorted = dys.data(),
                         .d_weight = dw.data()});
  EXPECT_TRUE(gradient_matches(ys, dys, 1e-2f, loss, 1e-3, 1e-2));
  EXPECT_TRUE(gradient_matches(w, dw, 1e-2f, loss, 1e-3, 1e-2));
}

// Experts of widths 3, 8 and 5 with 0, 7 and 40 rows, plus one "shared" slice over other rows.
struct GroupedCase {
  int64_t D = 6;
  std::vector<int64_t> rows = {0, 7, 40, 12};
  std::vector<int64_t> widths = {3, 8, 5, 4};
  std::vector<std::vector<float>> x, wgu, wd, act, hid, y;
  std::vector<ExpertSlice> slices;

  GroupedCase() {
    for (size_t i = 0; i < rows.size(); ++i) {
      x.push_back(random_vector(rows[i] * D, 10 + i));
      wgu.push_back(random_vector(2 * widths[i] * D, 20 + i, 0.5f));
      wd.push_back(random_vector(D * widths[i], 30 + i, 0.5f));
      act.emplace_back(rows[i] * 2 * widths[i]);
      hid.emplace_back(rows[i] * widths[i]);
      y.emplace_back(rows[i] * D);
    }
  }
  void run(Backend& be) {
    slices.clear();
    for (size_t i = 0; i < rows.size(); ++i) {
      ExpertSlice s;
      s.rows = rows[i];
      s.width = widths[i];
      s.x = x[i].data();
      s.w_gate_up = wgu[i].data();
      s.w_down = wd[i].data();
      s.act = act[i].data();
      s.hidden = hid[i].data();
      s.y = y[i].data();
      slices.push_back(s);
    }
    be.grouped_swiglu_forward(
        {.dim = D, .slices = slices.data(), .num_slices = static_cast<int64_t>(slices.size())});
  }
};

TEST_F(ExpertsTest, GroupedSwigluForwardMatchesPerRowReference) {
  GroupedCase c;
  c.run(*be_);
  for (size_t i = 0; i < c.rows.size(); ++i) {
    const int64_t W = c.widths[i], D = c.D;
    std::vector<float> expected(c.rows[i] * D);
    for (int64_t r = 0; r < c.rows[i]; ++r) {
      std::vector<double> h(W);
      for (int64_t j = 0; j < W; ++j) {
        double g = 0, u = 0;
        for (int64_t k = 0; k < D; ++k) {
          g += double{c.wgu[i][j * D + k]} * c.x[i][r * D + k];
          u += double{c.wgu[i][(W + j) * D + k]} * c.x[i][r * D + k];
        }
        h[j] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t k = 0; k < D; ++k) {
        double s = 0;
        for (int64_t j = 0; j < W; ++j) s += h[j] * c.wd[i][k * W + j];
        expected[r * D + k] = static_cast<float>(s);
      }
    }
    EXPECT_TRUE(all_close(c.y[i], expected, 1e-5, 1e-4)) << "slice " << i;
  }
}

TEST_F(ExpertsTest, GroupedSwigluBackwardMatchesFiniteDifferences) {
  GroupedCase c;
  c.run(*be_);
  std::vector<std::vector<float>> proj, dx, dact, dhid, dwgu, dwd;
  for (size_t i = 0; i < c.rows.size(); ++i) {
    proj.push_back(random_vector(c.rows[i] * c.D, 40 + i));
    dx.emplace_back(c.rows[i] * c.D);
    dact.emplace_back(c.rows[i] * 2 * c.widths[i]);
    dhid.emplace_back(c.rows[i] * c.widths[i]);
    dwgu.emplace_back(2 * c.widths[i] * c.D, 0.0f);
    dwd.emplace_back(c.D * c.widths[i], 0.0f);
    ExpertSlice& s = c.slices[i];
    s.d_y = proj[i].data();
    s.d_x = dx[i].data();
    s.d_act = dact[i].data();
    s.d_hidden = dhid[i].data();
    s.d_w_gate_up = dwgu[i].data();
    s.d_w_down = dwd[i].data();
  }
  be_->grouped_swiglu_backward(
      {.dim = c.D, .slices = c.slices.data(), .num_slices = static_cast<int64_t>(c.slices.size())});
  auto loss = [&] {
    c.run(*be_);
    double s = 0;
    for (size_t i = 0; i < c.rows.size(); ++i) s += dot(c.y[i], proj[i]);
    return s;
  };
  for (size_t i = 1; i < c.rows.size(); ++i) {
    EXPECT_TRUE(gradient_matches(c.x[i], dx[i], 1e-2f, loss, 2e-3, 2e-2)) << "dx slice " << i;
    EXPECT_TRUE(gradient_matches(c.wgu[i], dwgu[i], 1e-2f, loss, 2e-3, 2e-2)) << "dWgu " << i;
    EXPECT_TRUE(gradient_matches(c.wd[i], dwd[i], 1e-2f, loss, 2e-3, 2e-2)) << "dWd " << i;
  }
}

TEST_F(ExpertsTest, GroupedSwigluIsDeterministicAcrossRuns) {
  GroupedCase a, b;
  a.run(*be_);
  b.run(*be_);
  for (size_t i = 0; i < a.rows.size(); ++i) EXPECT_EQ(a.y[i], b.y[i]);
}

}  // namespace
}  // namespace mohge
