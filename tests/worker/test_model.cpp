// The whole transformer for every ffn.kind: finite-difference gradient check of
// CE + aux losses w.r.t. a sample of every parameter tensor, determinism, and the
// parameter accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "tests/test_util.hpp"
#include "tests/worker/tiny_spec.hpp"
#include "worker/model/transformer.hpp"

namespace mohge {
namespace {

std::vector<int32_t> random_tokens(int64_t n, int32_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return t;
}

class ModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelTest, GradientsMatchFiniteDifferences) {
  const JobSpec spec = testing::tiny_spec(GetParam());
  auto be = make_cpu_backend(2);
  Transformer model(spec.model, *be);
  model.initialize(5);
  const int64_t B = 2, T = spec.model.seq_len;
  const auto inputs = random_tokens(B * T, spec.model.vocab_size, 1);
  const auto targets = random_tokens(B * T, spec.model.vocab_size, 2);
  const ForwardResult f0 = model.forward(inputs.data(), targets.data(), B, T);
  if (GetParam() != "dense") {
    EXPECT_GT(f0.aux_expert, 0.0);
  }
  if (GetParam() == "mohge" || GetParam() == "mohge-reference") {
    EXPECT_GT(f0.aux_group, 0.0);
  }
  model.params().zero_grad();
  model.backward();

  ParamStore& ps = model.params();
  const std::vector<float> grad(ps.grad_arena(), ps.grad_arena() + ps.total_size());
  float* data = ps.data_arena();
  // fp32 model, h = 1e-3: rounding noise ~1e-7·loss/h ≈ 4e-4; truncation O(h²).
  constexpr float h = 1e-3f;
  int checked = 0;
  for (const ParamInfo& p : ps.all()) {
    for (int64_t j : {int64_t{0}, p.size / 3, p.size - 1}) {
      const int64_t i = p.offset + j;
      const float saved = data[i];
      data[i] = saved + h;
      const double plus = model.forward(inputs.data(), targets.data(), B, T).total_loss();
      data[i] = saved - h;
      const double minus = model.forward(inputs.data(), targets.data(), B, T).total_loss();
      data[i] = saved;
      const double num = (plus - minus) / (2.0 * h);
      EXPECT_NEAR(grad[static_cast<size_t>(i)], num, 1e-3 + 3e-2 * std::abs(num))
          << p.name << "[" << j << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3 * static_cast<int>(ps.all().size()));
}

TEST_P(ModelTest, ForwardIsDeterministic) {
  const JobSpec spec = testing::tiny_spec(GetParam());
  auto be = make_cpu_backend(2);
  Transformer a(spec.model, *be), b(spec.model, *be);
  a.initialize(9);
  b.initialize(9);
  const auto tokens = random_tokens(12, spec.model.vocab_size, 3);
  const double la = a.forward(tokens.data(), tokens.data(), 2, 6).total_loss();
  const double lb = b.forward(tokens.data(), tokens.data(), 2, 6).total_loss();
  EXPECT_EQ(la, lb);
}

INSTANTIATE_TEST_SUITE_P(AllKinds, ModelTest,
                         ::testing::Values("dense", "moe", "mohge", "mohge-reference"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (char& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

TEST(ModelAccounting, ParameterCountsAndActivatedExpertParameters) {
  const JobSpec spec = testing::tiny_spec("mohge");
  auto be = make_cpu_backend(1);
  Transformer model(spec.model, *be);
  model.initialize(1);
  const int64_t D = 16, V = 32, L = 2;
  // Experts: 2 per group of widths 6, 10, 14, 18 plus one shared of 8, each 3·D·W.
  const int64_t experts = L * 3 * D * (2 * (6 + 10 + 14 + 18) + 8);
  const int64_t router = L * D * (4 + 8);
  const int64_t attention = L * (4 * D * D + 2 * D);
  EXPECT_EQ(model.expert_params(), experts);
  EXPECT_EQ(model.total_params(), V * D + attention + router + experts + D);
  const auto tokens = random_tokens(12, 32, 4);
  model.forward(tokens.data(), nullptr, 2, 6);
  // Activated: per layer, mean over tokens of Σ kept 3·D·W_e plus the shared expert.
  double expected = 0.0;
  for (const LayerRouting* r : model.routing()) {
    ASSERT_NE(r, nullptr);
    double routed = 0.0;
    for (int e = 0; e < 8; ++e)
      routed += r->expert_assignments[e] * 3.0 * D * spec.model.ffn.widths[e / 2];
    expected += routed / 12.0 + 3.0 * D * 8;
    double assignments = 0.0;
    for (double a : r->expert_assignments) assignments += a;
    EXPECT_EQ(assignments, 12.0 * 3);
  }
  EXPECT_NEAR(model.activated_expert_params(), expected, 1e-6);
}

// The coordinator counts parameters from the spec alone (the experiment table): the count must
// be the model's own, for every kind, untied embeddings and the balance bias included.
TEST(ModelAccounting, TheSpecsParameterCountIsTheModels) {
  auto be = make_cpu_backend(1);
  for (const char* kind : {"dense", "moe", "mohge"}) {
    for (const bool tied : {true, false}) {
      for (const char* balance : {"aux", "bias"}) {
        JobSpec spec = testing::tiny_spec(kind);
        spec.model.tie_embeddings = tied;
        if (std::string(kind) != "dense") spec.model.ffn.balance = balance;
        Transformer model(spec.model, *be);
        const ParamCounts c = model_param_counts(spec.model);
        EXPECT_EQ(c.total, model.total_params()) << kind << " tied=" << tied << " " << balance;
        EXPECT_EQ(c.ffn, model.expert_params()) << kind << " tied=" << tied << " " << balance;
        if (std::string(kind) == "dense") EXPECT_EQ(c.routed, 0);
        if (std::string(kind) != "dense") {
          EXPECT_EQ(c.routed, c.ffn - spec.model.layers * 3LL * spec.model.d_model *
                                          spec.model.ffn.shared_experts *
                                          spec.model.ffn.shared_width);
        }
      }
    }
  }
}

}  // namespace
}  // namespace mohge
