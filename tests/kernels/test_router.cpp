// The MoHGE and MoE routers and their auxiliary losses: hand-computed cases for both MoHGE
// variants, deterministic ties, aux-loss values against the formulas of DESIGN.md §4, and
// gradients (through the combine weights and the aux losses) against finite differences.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/backend.hpp"
#include "tests/test_util.hpp"

namespace mohge {
namespace {

using testing::random_vector;

double sig(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

struct RouterRun {
  std::vector<int32_t> index;
  std::vector<float> weight;
  std::vector<uint8_t> groups;
};

RouterRun route(Backend& be, RouterParams p, const std::vector<float>& logits) {
  RouterRun r;
  r.index.resize(static_cast<size_t>(p.num_tokens * p.top_experts));
  r.weight.resize(r.index.size());
  r.groups.resize(static_cast<size_t>(p.num_tokens * p.num_groups));
  p.logits = logits.data();
  p.topk_index = r.index.data();
  p.topk_weight = r.weight.data();
  p.group_selected = r.groups.data();
  be.router_forward(p);
  return r;
}

RouterParams two_by_two(RouterKind kind, int32_t top_groups, int32_t top_experts) {
  RouterParams p;
  p.kind = kind;
  p.num_tokens = 1;
  p.num_groups = 2;
  p.experts_per_group = 2;
  p.top_groups = top_groups;
  p.top_experts = top_experts;
  return p;
}

class RouterTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be_ = make_cpu_backend(2);
};

// logits = [group 0, group 1 | e(0,0), e(0,1), e(1,0), e(1,1)]
const std::vector<float> kLogits = {0.5f, -0.2f, 1.0f, 0.0f, 2.0f, 0.5f};

TEST_F(RouterTest, PaperVariantHandComputed) {
  const RouterRun r = route(*be_, two_by_two(RouterKind::kMohgePaper, 2, 2), kLogits);
  // GS = σ(0.5), σ(-0.2); ES' = softmax(1, 0), softmax(2, 0.5); ES'' = ES'·GS:
  //   e0 = 0.7311·0.6225 = 0.4551, e1 = 0.1674, e2 = 0.8176·0.4502 = 0.3681, e3 = 0.0821.
  // Top-2: e0, e2; weights 0.4551 / 0.8232 and 0.3681 / 0.8232.
  const double gs0 = sig(0.5), gs1 = sig(-0.2);
  const double u0 = std::exp(1.0) / (std::exp(1.0) + 1.0) * gs0;
  const double u2 = std::exp(2.0) / (std::exp(2.0) + std::exp(0.5)) * gs1;
  EXPECT_EQ(r.index, (std::vector<int32_t>{0, 2}));
  EXPECT_NEAR(r.weight[0], u0 / (u0 + u2), 1e-6);
  EXPECT_NEAR(r.weight[1], u2 / (u0 + u2), 1e-6);
  EXPECT_NEAR(r.weight[0], 0.5528, 1e-4);  // worked by hand above
  EXPECT_EQ(r.groups, (std::vector<uint8_t>{1, 1}));
}

TEST_F(RouterTest, PaperVariantDropsExpertsOfUnselectedGroups) {
  // Only group 0 (σ(0.5) > σ(-0.2)) is kept, so both kept experts come from it even though
  // e(1,0) has the largest logit; the weights are ES' of group 0 (GS cancels).
  const RouterRun r = route(*be_, two_by_two(RouterKind::kMohgePaper, 1, 2), kLogits);
  EXPECT_EQ(r.index, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(r.groups, (std::vector<uint8_t>{1, 0}));
  EXPECT_NEAR(r.weight[0], std::exp(1.0) / (std::exp(1.0) + 1.0), 1e-6);
}

TEST_F(RouterTest, ReferenceVariantHandComputed) {
  const RouterRun r = route(*be_, two_by_two(RouterKind::kMohgeReference, 2, 2), kLogits);
  // GS renormalised over kept groups: 0.5803, 0.4197; q = ES'·GSn / Σ = 0.4243, 0.1561,
  // 0.3431, 0.0765; kept e0, e2; weights softmax(0.4243, 0.3431) = 0.5203, 0.4797.
  const double gs0 = sig(0.5), gs1 = sig(-0.2);
  const double q0 = std::exp(1.0) / (std::exp(1.0) + 1.0) * gs0 / (gs0 + gs1);
  const double q2 = std::exp(2.0) / (std::exp(2.0) + std::exp(0.5)) * gs1 / (gs0 + gs1);
  EXPECT_EQ(r.index, (std::vector<int32_t>{0, 2}));
  EXPECT_NEAR(r.weight[0], std::exp(q0) / (std::exp(q0) + std::exp(q2)), 1e-6);
  EXPECT_NEAR(r.weight[0], 0.5203, 1e-4);
  EXPECT_NEAR(r.weight[0] + r.weight[1], 1.0, 1e-6);
}

TEST_F(RouterTest, TiesBreakToTheLowerIndex) {
  const std::vector<float> flat(6, 0.0f);
  const RouterRun a = route(*be_, two_by_two(RouterKind::kMohgePaper, 1, 1), flat);
  EXPECT_EQ(a.groups, (std::vector<uint8_t>{1, 0}));
  EXPECT_EQ(a.index, (std::vector<int32_t>{0}));
  const RouterRun b = route(*be_, two_by_two(RouterKind::kMohgeReference, 2, 3), flat);
  EXPECT_EQ(b.index, (std::vector<int32_t>{0, 1, 2}));

  RouterParams moe;
  moe.kind = RouterKind::kMoeSoftmax;
  moe.num_tokens = 1;
  moe.num_groups = 1;
  moe.experts_per_group = 4;
  moe.top_experts = 2;
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, 2.0f};
  const RouterRun c = route(*be_, moe, logits);
  EXPECT_EQ(c.index, (std::vector<int32_t>{1, 3}));
  // MoE weights are the kept softmax probabilities, not renormalised.
  const double z = std::exp(1.0) + 2 * std::exp(2.0) + std::exp(0.5);
  EXPECT_NEAR(c.weight[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(c.weight[1], std::exp(2.0) / z, 1e-6);
}

// A random multi-token setup for the aux-loss and gradient tests.
struct AuxCase {
  RouterParams p;
  RouterAuxParams aux;
  std::vector<float> logits;
  std::vector<float> cost;
  std::vector<double> group_count, expert_count;
  RouterRun run;
};

AuxCase make_case(Backend& be, RouterKind kind, GroupLossKind gl, ExpertLossKind el) {
  AuxCase c;
  const bool mohge = kind != RouterKind::kMoeSoftmax;
  c.p.kind = kind;
  c.p.num_tokens = 24;
  c.p.num_groups = mohge ? 4 : 1;
  c.p.experts_per_group = mohge ? 3 : 6;
  c.p.top_groups = mohge ? 2 : 1;
  c.p.top_experts = mohge ? 4 : 2;
  const int64_t E = c.p.num_groups * c.p.experts_per_group;
  const int64_t L = mohge ? c.p.num_groups + E : E;
  c.logits = random_vector(c.p.num_tokens * L, 42 + static_cast<int>(kind), 1.5f);
  c.cost = {0.25f, 0.5f, 0.75f, 1.0f};
  c.run = route(be, c.p, c.logits);
  c.group_count.assign(static_cast<size_t>(c.p.num_groups), 0.0);
  c.expert_count.assign(static_cast<size_t>(E), 0.0);
  RouterParams p = c.p;
  p.topk_index = c.run.index.data();
  p.group_selected = c.run.groups.data();
  be.router_count(p, c.group_count.data(), c.expert_count.data());
  c.aux.group_loss = gl;
  c.aux.expert_loss = el;
  c.aux.alpha_group = 0.3f;  // large, so the aux gradients are visible next to the combine's
  c.aux.alpha_expert = 0.2f;
  c.aux.total_tokens = static_cast<double>(c.p.num_tokens);
  c.aux.group_cost = c.cost.data();
  c.aux.group_count = c.group_count.data();
  c.aux.expert_count = c.expert_count.data();
  return c;
}

TEST_F(RouterTest, CountsMatchTheSelections) {
  AuxCase c =
      make_case(*be_, RouterKind::kMohgePaper, GroupLossKind::kPaper, ExpertLossKind::kPaper);
  double groups = 0, experts = 0;
  for (double v : c.group_count) groups += v;
  for (double v : c.expert_count) experts += v;
  EXPECT_EQ(groups, c.p.num_tokens * c.p.top_groups);
  EXPECT_EQ(experts, c.p.num_tokens * c.p.top_experts);
  // Every kept expert belongs to a kept group.
  for (int64_t t = 0; t < c.p.num_tokens; ++t)
    for (int k = 0; k < c.p.top_experts; ++k) {
      const int32_t e = c.run.index[t * c.p.top_experts + k];
      EXPECT_TRUE(c.run.groups[t * c.p.num_groups + e / c.p.experts_per_group]);
    }
}

TEST_F(RouterTest, PaperAuxLossValuesFollowTheFormulas) {
  AuxCase c =
      make_case(*be_, RouterKind::kMohgePaper, GroupLossKind::kPaper, ExpertLossKind::kPaper);
  RouterParams p = c.p;
  p.logits = c.logits.data();
  p.group_selected = c.run.groups.data();
  p.topk_index = c.run.index.data();
  const RouterAuxValues v = be_->router_aux_forward(p, c.aux);
  const int64_t G = 4, n = 3, E = 12, T = c.p.num_tokens, Kg = 2, K = 4;
  // L_G = α_G Σ_g c_g f_g p_g, f_g = G/(Kg·T)·count_g, p_g = mean_t GS_g / Σ_j GS_j.
  // L_E = α_E Σ_{g,i} f_{g,i} p_{g,i}, f = n/(K·T)·count, p = mean_t ES'/(Σ_j ES' + ε).
  double lg = 0, le = 0;
  for (int64_t g = 0; g < G; ++g) {
    double pg = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* l = &c.logits[t * (G + E)];
      double r = 0;
      for (int64_t j = 0; j < G; ++j) r += sig(l[j]);
      pg += sig(l[g]) / r / T;
    }
    lg += c.cost[g] * (double(G) / (Kg * T) * c.group_count[g]) * pg;
    for (int64_t i = 0; i < n; ++i) {
      double pe = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (!c.run.groups[t * G + g]) continue;
        const float* l = &c.logits[t * (G + E) + G + g * n];
        double z = 0;
        for (int64_t j = 0; j < n; ++j) z += std::exp(double{l[j]});
        pe += std::exp(double{l[i]}) / z / (1.0 + 1e-6) / T;
      }
      le += double(n) / (K * T) * c.expert_count[g * n + i] * pe;
    }
  }
  EXPECT_NEAR(v.group, 0.3 * lg, 1e-6);
  EXPECT_NEAR(v.expert, 0.2 * le, 1e-6);
}

TEST_F(RouterTest, MoeSwitchLossValue) {
  AuxCase c =
      make_case(*be_, RouterKind::kMoeSoftmax, GroupLossKind::kPaper, ExpertLossKind::kPaper);
  RouterParams p = c.p;
  p.logits = c.logits.data();
  p.topk_index = c.run.index.data();
  const RouterAuxValues v = be_->router_aux_forward(p, c.aux);
  const int64_t E = 6, T = c.p.num_tokens, K = 2;
  double expected = 0;
  for (int64_t e = 0; e < E; ++e) {
    double pe = 0;
    for (int64_t t = 0; t < T; ++t) {
      double z = 0;
      for (int64_t j = 0; j < E; ++j) z += std::exp(double{c.logits[t * E + j]});
      pe += std::exp(double{c.logits[t * E + e]}) / z / T;
    }
    expected += double(E) / (K * T) * c.expert_count[e] * pe;
  }
  EXPECT_EQ(v.group, 0.0);
  EXPECT_NEAR(v.expert, 0.2 * expected, 1e-6);
}

// d(Σ w·R + L_G + L_E)/d logits against central differences, with the selection and the
// counts held fixed (as in training: top-k choices and f are constants). Checked twice:
// through the combine weights alone (α = 0), then through the aux losses alone (R = 0, large
// α so their gradients are well above the finite-difference noise of ~1e-4).
void check_router_gradient(Backend& be, RouterKind kind, GroupLossKind gl, ExpertLossKind el,
                           bool aux_only) {
  AuxCase c = make_case(be, kind, gl, el);
  auto proj = random_vector(static_cast<int64_t>(c.run.weight.size()), 77);
  if (aux_only) {
    std::fill(proj.begin(), proj.end(), 0.0f);
    c.aux.alpha_group = 40.0f;
    c.aux.alpha_expert = 25.0f;
  } else {
    c.aux.alpha_group = 0.0f;
    c.aux.alpha_expert = 0.0f;
  }
  std::vector<float> d_logits(c.logits.size());
  RouterParams p = c.p;
  p.logits = c.logits.data();
  p.topk_index = c.run.index.data();
  p.topk_weight = c.run.weight.data();
  p.group_selected = c.run.groups.data();
  p.d_topk_weight = proj.data();
  p.d_logits = d_logits.data();
  be.router_backward(p, c.aux);

  int checked = 0, skipped = 0;
  for (size_t i = 0; i < c.logits.size(); ++i) {
    double val[2];
    bool same = true;
    const float h = 1e-3f, saved = c.logits[i];
    for (int s = 0; s < 2; ++s) {
      c.logits[i] = saved + (s == 0 ? h : -h);
      RouterRun r = route(be, c.p, c.logits);
      same = same && r.index == c.run.index && r.groups == c.run.groups;
      RouterParams q = c.p;
      q.logits = c.logits.data();
      q.topk_index = r.index.data();
      q.group_selected = r.groups.data();
      const RouterAuxValues v = be.router_aux_forward(q, c.aux);
      val[s] = testing::dot(r.weight, proj) + v.group + v.expert;
    }
    c.logits[i] = saved;
    if (!same) {  // a perturbation that flips a selection has no derivative to compare
      ++skipped;
      continue;
    }
    ++checked;
    const double num = (val[0] - val[1]) / (2.0 * h);
    EXPECT_NEAR(d_logits[i], num, 2e-3 + 2e-2 * std::abs(num))
        << "logit " << i << " kind " << static_cast<int>(kind);
  }
  EXPECT_GT(checked, static_cast<int>(c.logits.size()) * 9 / 10) << skipped << " skipped";
}

void check_router_gradient(Backend& be, RouterKind kind, GroupLossKind gl, ExpertLossKind el) {
  {
    SCOPED_TRACE("through the combine weights");
    check_router_gradient(be, kind, gl, el, false);
  }
  SCOPED_TRACE("through the aux losses");
  check_router_gradient(be, kind, gl, el, true);
}

TEST_F(RouterTest, PaperGradientsIncludingAuxLosses) {
  check_router_gradient(*be_, RouterKind::kMohgePaper, GroupLossKind::kPaper,
                        ExpertLossKind::kPaper);
}
TEST_F(RouterTest, ReferenceGradientsIncludingReferenceAuxLosses) {
  check_router_gradient(*be_, RouterKind::kMohgeReference, GroupLossKind::kReference,
                        ExpertLossKind::kReference);
}
TEST_F(RouterTest, PaperRouterWithReferenceLossesGradients) {
  check_router_gradient(*be_, RouterKind::kMohgePaper, GroupLossKind::kReference,
                        ExpertLossKind::kReference);
}
TEST_F(RouterTest, ReferenceRouterWithPaperLossesGradients) {
  check_router_gradient(*be_, RouterKind::kMohgeReference, GroupLossKind::kPaper,
                        ExpertLossKind::kPaper);
}
TEST_F(RouterTest, MoeGradientsIncludingSwitchLoss) {
  check_router_gradient(*be_, RouterKind::kMoeSoftmax, GroupLossKind::kPaper,
                        ExpertLossKind::kPaper);
}

}  // namespace
}  // namespace mohge
