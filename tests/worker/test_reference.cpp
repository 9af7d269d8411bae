// The whole model against an independent PyTorch implementation (tests/reference/
// make_reference.py, float64): logits, losses, routing decisions and the gradient of the total
// loss w.r.t. every parameter, for every ffn.kind and both MoHGE router variants.
//
// Tolerances. Our model runs in fp32; the reference in fp64. fp32 rounding (2^-24 ≈ 6e-8 per
// operation) through ~30 chained ops and reductions of up to 64 terms stays below 1e-6 of a
// tensor's largest magnitude plus 1e-5 relative (measured: every tensor passes at those
// bounds, some fail at 2e-7 / 1e-6). We allow 10× that: 1e-5 of the largest magnitude plus
// 1e-4 relative per element; a wrong formula gives O(1) errors. Routing decisions must match
// exactly: the generator ensures every top-k choice has a margin > 1e-4, far above fp32 noise.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "storage/safetensors.hpp"
#include "tests/test_util.hpp"
#include "worker/model/transformer.hpp"

namespace mohge {
namespace {

constexpr double kScaleAtol = 1e-5;
constexpr double kRtol = 1e-4;

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  if (e == nullptr) return {};
  int64_t n = 1;
  for (int64_t d : e->shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  EXPECT_TRUE(f.read_f32(name, e->shape, v.data()).ok()) << name;
  return v;
}

std::vector<int64_t> read_i64(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  if (e == nullptr) return {};
  int64_t n = 1;
  for (int64_t d : e->shape) n *= d;
  std::vector<int64_t> v(static_cast<size_t>(n));
  EXPECT_TRUE(f.read_i64(name, e->shape, v.data()).ok()) << name;
  return v;
}

// Compares with atol = kScaleAtol·max|expected| and rtol = kRtol.
::testing::AssertionResult close_to_reference(const std::vector<float>& actual,
                                              const std::vector<float>& expected) {
  double scale = 0.0;
  for (float v : expected) scale = std::max(scale, std::abs(static_cast<double>(v)));
  return testing::all_close(actual, expected, kScaleAtol * std::max(scale, 1e-6), kRtol);
}

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTest, MatchesPyTorch) {
  const std::string path =
      std::string(MOHGE_SOURCE_DIR) + "/tests/reference/reference-" + GetParam() + ".safetensors";
  Result<SafetensorsFile> opened = SafetensorsFile::open(path);
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  const SafetensorsFile& f = opened.value();
  ASSERT_EQ(f.metadata().at("format"), "mohge-reference");
  ASSERT_EQ(f.metadata().at("version"), "1") << "regenerate with make_reference.py";
  Result<JobSpec> spec = parse_job_spec(nlohmann::json::parse(f.metadata().at("mohge_spec")));
  ASSERT_TRUE(spec.ok()) << spec.error().to_string();
  const ModelSpec& m = spec.value().model;

  auto be = make_cpu_backend(2);
  Transformer model(m, *be);
  ParamStore& ps = model.params();
  for (const ParamInfo& p : ps.all()) {
    const std::vector<float> v = read_f32(f, p.name);
    ASSERT_EQ(static_cast<int64_t>(v.size()), p.size) << p.name;
    std::copy(v.begin(), v.end(), ps.data(static_cast<int>(&p - ps.all().data())));
  }

  const std::vector<int64_t> tokens = read_i64(f, "input.tokens");
  const int64_t B = 2, T = m.seq_len;
  ASSERT_EQ(static_cast<int64_t>(tokens.size()), B * (T + 1));
  std::vector<int32_t> inputs, targets;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      inputs.push_back(static_cast<int32_t>(tokens[b * (T + 1) + t]));
      targets.push_back(static_cast<int32_t>(tokens[b * (T + 1) + t + 1]));
    }
  }
  const ForwardResult r = model.forward(inputs.data(), targets.data(), B, T);
  const std::vector<float> logits(model.logits(), model.logits() + B * T * m.vocab_size);
  EXPECT_TRUE(close_to_reference(logits, read_f32(f, "output.logits"))) << "logits";
  EXPECT_NEAR(r.ce_loss, read_f32(f, "output.ce_loss")[0], 1e-5);
  EXPECT_NEAR(r.aux_group, read_f32(f, "output.aux_group")[0], 1e-6);
  EXPECT_NEAR(r.aux_expert, read_f32(f, "output.aux_expert")[0], 1e-6);
  EXPECT_NEAR(r.total_loss(), read_f32(f, "output.total_loss")[0], 1e-5);

  // Routing: the same experts in the same order, the same weights.
  const auto routing = model.routing();
  for (size_t l = 0; l < routing.size(); ++l) {
    const std::string prefix = "output.layers." + std::to_string(l);
    if (routing[l] == nullptr) {
      EXPECT_FALSE(f.contains(prefix + ".topk_index"));
      continue;
    }
    const std::vector<int64_t> idx = read_i64(f, prefix + ".topk_index");
    std::vector<int32_t> index;
    std::vector<float> weight;
    ASSERT_TRUE(model.ffn(static_cast<int>(l)).routing_decisions(&index, &weight));
    EXPECT_EQ(std::vector<int64_t>(index.begin(), index.end()), idx) << "layer " << l;
    EXPECT_TRUE(close_to_reference(weight, read_f32(f, prefix + ".topk_weight"))) << "layer " << l;
  }

  model.params().zero_grad();
  model.backward();
  for (const ParamInfo& p : ps.all()) {
    const float* g = ps.grad_arena() + p.offset;
    EXPECT_TRUE(
        close_to_reference(std::vector<float>(g, g + p.size), read_f32(f, "grad." + p.name)))
        << "gradient of " << p.name;
  }
}

INSTANTIATE_TEST_SUITE_P(AllKinds, ReferenceTest,
                         ::testing::Values("mohge", "mohge-reference", "moe", "dense"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (char& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

}  // namespace
}  // namespace mohge
