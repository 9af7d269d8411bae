// The CUDA kernels' index math (kernels/cuda/router_math.hpp, dispatch_math.hpp) run on the
// host against the CPU backend, the independent reference: router selections and weights,
// aux terms and gradients per token, the three-step dispatch plan, blocked log-sum-exp. This
// part of every GPU kernel is thereby tested on every machine, with or without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/backend.hpp"
#include "kernels/cuda/dispatch_math.hpp"
#include "kernels/cuda/router_math.hpp"
#include "tests/test_util.hpp"

namespace mohge {
namespace {

using testing::random_vector;

struct Case {
  RouterKind kind;
  GroupLossKind group_loss;
  ExpertLossKind expert_loss;
  int32_t G, n, Kg, K;
};

class RouterMath : public ::testing::TestWithParam<Case> {};

TEST_P(RouterMath, PerTokenFunctionsEqualTheCpuBackend) {
  const Case c = GetParam();
  const int64_t N = 600;  // more than two aux chunks of 256 tokens
  const bool mohge = c.kind != RouterKind::kMoeSoftmax;
  const int32_t G = c.G, n = c.n, K = c.K, E = G * n;
  const int64_t L = mohge ? G + E : E;
  const auto logits = testing::tied_router_logits(N, G, n, mohge, 7);
  const auto d_w = random_vector(N * K, 8);
  std::vector<float> cost(static_cast<size_t>(G));
  for (int32_t g = 0; g < G; ++g) cost[g] = static_cast<float>(g + 1) / static_cast<float>(G);

  auto cpu = make_cpu_backend(2);
  std::vector<int32_t> idx(N * K);
  std::vector<float> w(N * K), dl(N * L);
  std::vector<uint8_t> gsel(N * G);
  RouterParams p{.kind = c.kind,
                 .num_tokens = N,
                 .num_groups = G,
                 .experts_per_group = n,
                 .top_groups = c.Kg,
                 .top_experts = K,
                 .logits = logits.data(),
                 .topk_index = idx.data(),
                 .topk_weight = w.data(),
                 .group_selected = mohge ? gsel.data() : nullptr,
                 .d_topk_weight = d_w.data(),
                 .d_logits = dl.data()};
  cpu->router_forward(p);
  std::vector<double> gc(G, 0.0), ec(E, 0.0);
  cpu->router_count(p, gc.data(), ec.data());
  const RouterAuxParams aux{.group_loss = c.group_loss,
                            .expert_loss = c.expert_loss,
                            .alpha_group = mohge ? 0.3f : 0.0f,
                            .alpha_expert = 0.2f,
                            .eps = 1e-6f,
                            .total_tokens = static_cast<double>(N),
                            .group_cost = cost.data(),
                            .group_count = gc.data(),
                            .expert_count = ec.data()};
  const RouterAuxValues want_aux = cpu->router_aux_forward(p, aux);
  cpu->router_backward(p, aux);

  const device::RouterShape s = device::router_shape(p);
  std::vector<float> scratch(static_cast<size_t>(device::router_scratch_floats(s)));
  std::vector<uint8_t> flags(static_cast<size_t>(device::router_scratch_flags(s)));
  std::vector<float> ag(G), be(E);
  device::router_aux_constants(s, aux, ag.data(), be.data());
  // Aux p-terms in chunks of 256 tokens summed in order, as the CPU backend (and the kernel).
  std::vector<double> psum_g(G, 0.0), psum_e(E, 0.0);
  for (int64_t c0 = 0; c0 < N; c0 += 256) {
    std::vector<double> pg(G, 0.0), pe(E, 0.0);
    for (int64_t t = c0; t < std::min(N, c0 + 256); ++t)
      device::router_token_aux_terms(s, c.group_loss, c.expert_loss, aux.eps, &logits[t * L],
                                     mohge ? &gsel[t * G] : nullptr, scratch.data(), flags.data(),
                                     pg.data(), pe.data());
    for (int32_t g = 0; g < G; ++g) psum_g[g] += pg[g];
    for (int32_t e = 0; e < E; ++e) psum_e[e] += pe[e];
  }
  const RouterAuxValues got_aux = device::router_aux_values(s, aux, psum_g.data(), psum_e.data());
  EXPECT_NEAR(got_aux.group, want_aux.group, 1e-12 * std::abs(want_aux.group));
  EXPECT_NEAR(got_aux.expert, want_aux.expert, 1e-12 * std::abs(want_aux.expert));

  int ties_seen = 0;
  for (int64_t t = 0; t < N; ++t) {
    std::vector<int32_t> i(K);
    std::vector<float> wt(K), d(L);
    std::vector<uint8_t> gs(G, 0);
    ASSERT_TRUE(device::router_token_forward(s, &logits[t * L], scratch.data(), flags.data(),
                                             i.data(), wt.data(), gs.data()));
    for (int32_t k = 0; k < K; ++k) {
      ASSERT_EQ(i[k], idx[t * K + k]) << "token " << t << " k " << k;
      EXPECT_NEAR(wt[k], w[t * K + k], 1e-6f * std::abs(w[t * K + k])) << t;
      if (k > 0 && wt[k] == wt[k - 1]) ++ties_seen;
    }
    if (mohge) {
      for (int32_t g = 0; g < G; ++g) ASSERT_EQ(gs[g], gsel[t * G + g]) << t;
    }
    device::router_token_backward(s, c.group_loss, c.expert_loss, aux.eps, &logits[t * L],
                                  mohge ? &gsel[t * G] : nullptr, &idx[t * K], &w[t * K],
                                  &d_w[t * K], ag.data(), be.data(), scratch.data(), flags.data(),
                                  d.data());
    for (int64_t j = 0; j < L; ++j)
      EXPECT_NEAR(d[j], dl[t * L + j], 1e-6f + 1e-5f * std::abs(dl[t * L + j])) << t << "," << j;
  }
  EXPECT_GT(ties_seen, 0) << "the inputs did not exercise the tie rule";
}

// Aux-loss-free balance: a per-expert bias moves the selection (the same on the device and
// the CPU backend) but never the weights; a zero bias changes nothing.
TEST_P(RouterMath, BiasMovesTheSelectionNotTheWeights) {
  const Case c = GetParam();
  const int64_t N = 300;
  const bool mohge = c.kind != RouterKind::kMoeSoftmax;
  const int32_t G = c.G, n = c.n, K = c.K, E = G * n;
  const int64_t L = mohge ? G + E : E;
  const auto logits = testing::tied_router_logits(N, G, n, mohge, 9);
  std::vector<float> bias(static_cast<size_t>(E));
  for (int32_t e = 0; e < E; ++e) bias[e] = e % 3 == 0 ? 0.5f : e % 3 == 1 ? -0.5f : 0.0f;
  const std::vector<float> zero(static_cast<size_t>(E), 0.0f);

  auto cpu = make_cpu_backend(2);
  auto run = [&](const float* b, std::vector<int32_t>& idx, std::vector<float>& w) {
    idx.assign(static_cast<size_t>(N * K), 0);
    w.assign(static_cast<size_t>(N * K), 0.0f);
    std::vector<uint8_t> gsel(static_cast<size_t>(N * G));
    RouterParams p{.kind = c.kind,
                   .num_tokens = N,
                   .num_groups = G,
                   .experts_per_group = n,
                   .top_groups = c.Kg,
                   .top_experts = K,
                   .logits = logits.data(),
                   .expert_bias = b,
                   .topk_index = idx.data(),
                   .topk_weight = w.data(),
                   .group_selected = mohge ? gsel.data() : nullptr};
    cpu->router_forward(p);
  };
  std::vector<int32_t> idx0, idxz, idxb;
  std::vector<float> w0, wz, wb;
  run(nullptr, idx0, w0);
  run(zero.data(), idxz, wz);
  run(bias.data(), idxb, wb);
  EXPECT_EQ(idxz, idx0);
  EXPECT_EQ(wz, w0);
  EXPECT_NE(idxb, idx0) << "the bias changed no selection";

  const device::RouterShape s = device::router_shape({.kind = c.kind,
                                                      .num_groups = G,
                                                      .experts_per_group = n,
                                                      .top_groups = c.Kg,
                                                      .top_experts = K});
  std::vector<float> scratch(static_cast<size_t>(device::router_scratch_floats(s)));
  std::vector<uint8_t> flags(static_cast<size_t>(device::router_scratch_flags(s)));
  int changed = 0;
  for (int64_t t = 0; t < N; ++t) {
    std::vector<int32_t> i(K);
    std::vector<float> wt(K);
    ASSERT_TRUE(device::router_token_forward(s, &logits[t * L], scratch.data(), flags.data(),
                                             i.data(), wt.data(), nullptr, bias.data()));
    bool same_as_unbiased = true;
    for (int32_t k = 0; k < K; ++k) {
      ASSERT_EQ(i[k], idxb[t * K + k]) << "token " << t;
      EXPECT_NEAR(wt[k], wb[t * K + k], 1e-6f * std::abs(wb[t * K + k])) << t;
      same_as_unbiased = same_as_unbiased && idxb[t * K + k] == idx0[t * K + k];
    }
    // Where the bias kept the same experts in the same order, the weights are the unbiased ones.
    if (same_as_unbiased) {
      for (int32_t k = 0; k < K; ++k) EXPECT_EQ(wb[t * K + k], w0[t * K + k]) << t;
    } else {
      ++changed;
    }
  }
  EXPECT_GT(changed, 0);
}

std::string case_name(const ::testing::TestParamInfo<Case>& p) {
  static const char* const kinds[] = {"mohge_paper", "mohge_reference", "moe"};
  return std::string(kinds[static_cast<int>(p.param.kind)]) + "_" + std::to_string(p.index);
}

INSTANTIATE_TEST_SUITE_P(Kinds, RouterMath,
                         ::testing::Values(Case{RouterKind::kMohgePaper, GroupLossKind::kPaper,
                                                ExpertLossKind::kPaper, 8, 4, 3, 6},
                                           Case{RouterKind::kMohgeReference,
                                                GroupLossKind::kReference,
                                                ExpertLossKind::kReference, 8, 4, 3, 6},
                                           Case{RouterKind::kMohgePaper, GroupLossKind::kReference,
                                                ExpertLossKind::kPaper, 5, 3, 2, 4},
                                           Case{RouterKind::kMoeSoftmax, GroupLossKind::kPaper,
                                                ExpertLossKind::kPaper, 1, 9, 1, 2}),
                         case_name);

TEST(DispatchMath, ThreeStepCountingSortEqualsTheCpuPlan) {
  const int64_t N = 203;
  const int32_t K = 3, E = 7;
  std::vector<int32_t> idx(N * K);
  for (int64_t a = 0; a < N * K; ++a) {
    const auto e = static_cast<int32_t>((a * 5 + a / 7) % E);
    idx[a] = e == 4 ? 6 : e;  // expert 4 gets no rows
  }
  auto cpu = make_cpu_backend(1);  // outlives the plan, whose maps it owns
  DispatchPlan want;
  cpu->dispatch_plan(idx.data(), N, K, E, &want);
  for (const int64_t chunk : {int64_t{1}, int64_t{7}, device::kDispatchChunk, N * K}) {
    const int64_t M = N * K, C = device::dispatch_chunks(M, chunk);
    std::vector<int64_t> counts(C * E, 0), base(C * E), offsets(E + 1), position(M);
    std::vector<int32_t> sorted(M, -1);
    for (int64_t c = 0; c < C; ++c)
      ASSERT_TRUE(device::dispatch_count(idx.data(), c * chunk, std::min(M, (c + 1) * chunk), E,
                                         &counts[c * E]));
    device::dispatch_scan(counts.data(), C, E, base.data(), offsets.data());
    for (int64_t c = C - 1; c >= 0; --c)  // any chunk order gives the same plan
      device::dispatch_place(idx.data(), c * chunk, std::min(M, (c + 1) * chunk), K, &base[c * E],
                             position.data(), sorted.data());
    EXPECT_EQ(offsets, want.expert_offsets) << "chunk " << chunk;
    EXPECT_EQ(position, std::vector<int64_t>(want.position.data(), want.position.data() + M))
        << "chunk " << chunk;  // (the CPU backend's memory is the host's)
    EXPECT_EQ(sorted, std::vector<int32_t>(want.sorted_token.data(), want.sorted_token.data() + M))
        << "chunk " << chunk;
  }
  std::vector<int64_t> counts(E, 0);
  idx[5] = E;
  EXPECT_FALSE(device::dispatch_count(idx.data(), 0, N * K, E, counts.data()));
}

TEST(DispatchMath, BlockedLogSumExpMatchesTheDirectSumInAnyGrouping) {
  const int64_t V = 1031;
  const auto z = random_vector(V, 9, 6.0f);
  double mx = -INFINITY, sum = 0.0;
  for (float v : z) mx = std::max(mx, double{v});
  for (float v : z) sum += std::exp(double{v} - mx);
  const double want = mx + std::log(sum);
  for (const int64_t block : {int64_t{1}, int64_t{32}, int64_t{256}, V}) {
    device::MaxSum r;
    for (int64_t b = 0; b < V; b += block)
      r = device::lse_merge(r, device::lse_block(z.data(), b, std::min(block, V - b), 1));
    EXPECT_NEAR(device::lse_value(r), want, 2e-6 * std::abs(want)) << "block " << block;
  }
  // Strided blocks (a thread's share of a row) merged in another order.
  device::MaxSum a, b;
  auto share = [&](int64_t t) { return device::lse_block(z.data(), t, (V - t + 3) / 4, 4); };
  for (int64_t t = 0; t < 4; ++t) a = device::lse_merge(a, share(t));
  for (int64_t t = 3; t >= 0; --t) b = device::lse_merge(share(t), b);
  EXPECT_NEAR(device::lse_value(a), want, 2e-6 * std::abs(want));
  EXPECT_NEAR(device::lse_value(b), want, 2e-6 * std::abs(want));
  EXPECT_EQ(device::lse_merge(device::MaxSum{}, device::MaxSum{}).max, -INFINITY);
}

}  // namespace
}  // namespace mohge
