// Job spec validation: the DESIGN.md §8 example parses as is; every bad field is reported
// with its dotted path and the rule; to_json round-trips.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "api/job_spec.hpp"

namespace mohge {
namespace {

using nlohmann::json;

// The example of DESIGN.md §8, verbatim.
const char* kDesignExample = R"({ "name": "brown-mohge-small",
  "model": { "vocab_size": 4096, "seq_len": 256, "layers": 4, "d_model": 256, "heads": 8,
             "tie_embeddings": true,
             "ffn": { "kind": "mohge",
                      "groups": 8, "experts_per_group": 4,
                      "widths": [128, 160, 192, 256, 320, 384, 416, 448],
                      "top_groups": 3, "top_experts": 6,
                      "shared_experts": 2, "shared_width": 288,
                      "alpha_group": 1e-4, "alpha_expert": 2.5e-3,
                      "router_variant": "paper" } },
  "data": { "train": "datasets/brown/train.bin", "val": "datasets/brown/val.bin" },
  "train": { "steps": 2000, "batch_size": 16, "lr": 3e-4, "lr_min": 3e-5, "warmup_steps": 100,
             "weight_decay": 0.1, "grad_clip": 1.0, "seed": 1,
             "eval_every": 100, "eval_batches": 20 },
  "resources": { "workers": 2, "device": "cpu" },
  "placement": "all-size",
  "checkpoint": { "every": 500, "keep": 3 },
  "priority": 50 })";

json example() {
  return json::parse(kDesignExample);
}

TEST(JobSpec, DesignExampleParses) {
  Result<JobSpec> s = parse_job_spec(example());
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  const JobSpec& j = s.value();
  EXPECT_EQ(j.model.ffn.num_experts(), 32);
  EXPECT_EQ(j.model.ffn.expert_hidden_width(31), 448);
  EXPECT_EQ(j.model.ffn.expert_hidden_width(4), 160);
  EXPECT_EQ(j.resources.workers, 2);
  EXPECT_EQ(j.placement, "all-size");
}

TEST(JobSpec, RoundTripsThroughJson) {
  const JobSpec s = parse_job_spec(example()).value();
  const json again = job_spec_to_json(s);
  const JobSpec t = parse_job_spec(again).value();
  EXPECT_EQ(job_spec_to_json(t), again);
}

TEST(JobSpec, BaseWidthAndStepFollowEquationOne) {
  json j = example();
  j["model"]["ffn"].erase("widths");
  j["model"]["ffn"]["base_width"] = 576;
  j["model"]["ffn"]["width_step"] = 64;
  const JobSpec s = parse_job_spec(j).value();
  ASSERT_EQ(s.model.ffn.widths.size(), 8u);
  for (int g = 0; g < 8; ++g) EXPECT_EQ(s.model.ffn.widths[g] + s.model.ffn.widths[7 - g], 2 * 576);
  EXPECT_EQ(s.model.ffn.widths.front(), 352);
}

struct BadCase {
  const char* what;
  std::function<void(json&)> edit;
  const char* field;
  const char* message_part;
};

TEST(JobSpec, BadFieldsNameTheFieldAndTheRule) {
  const std::vector<BadCase> cases = {
      {"not divisible", [](json& j) { j["model"]["ffn"]["experts_per_group"] = 3; },
       "model.ffn.experts_per_group", "divisible by resources.workers"},
      {"too many experts", [](json& j) { j["model"]["ffn"]["top_experts"] = 13; },
       "model.ffn.top_experts", "top_groups"},
      {"heads", [](json& j) { j["model"]["heads"] = 7; }, "model.d_model",
       "divisible by model.heads"},
      {"odd head dim", [](json& j) { j["model"]["heads"] = 256; }, "model.heads", "even head_dim"},
      {"unknown", [](json& j) { j["train"]["learning_rate"] = 1; }, "train.learning_rate",
       "not a known field"},
      {"descending", [](json& j) { j["model"]["ffn"]["widths"][0] = 999; }, "model.ffn.widths",
       "ascending"},
      {"widths count", [](json& j) { j["model"]["ffn"]["widths"].erase(0); }, "model.ffn.widths",
       "one width per group"},
      {"missing", [](json& j) { j["model"].erase("d_model"); }, "model.d_model", "required"},
      {"type", [](json& j) { j["train"]["steps"] = "many"; }, "train.steps", "integer"},
      {"range", [](json& j) { j["train"]["batch_size"] = 0; }, "train.batch_size", "must be in"},
      {"kind", [](json& j) { j["model"]["ffn"]["kind"] = "sparse"; }, "model.ffn.kind", "one of"},
      {"variant", [](json& j) { j["model"]["ffn"]["router_variant"] = "megatron"; },
       "model.ffn.router_variant", "\"paper\", \"reference\""},
      {"placement", [](json& j) { j["placement"] = "random"; }, "placement", "all-size"},
      {"lr_min", [](json& j) { j["train"]["lr_min"] = 1.0; }, "train.lr_min", "train.lr"},
      {"top_groups", [](json& j) { j["model"]["ffn"]["top_groups"] = 9; }, "model.ffn.top_groups",
       "groups"},
      {"device", [](json& j) { j["resources"]["device"] = "tpu"; }, "resources.device", "one of"},
      {"moe divisible",
       [](json& j) {
         j["model"]["ffn"] = {
             {"kind", "moe"}, {"experts", 5}, {"expert_width", 64}, {"top_experts", 2}};
       },
       "model.ffn.experts", "divisible by resources.workers"},
  };
  for (const BadCase& c : cases) {
    json j = example();
    c.edit(j);
    Result<JobSpec> s = parse_job_spec(j);
    ASSERT_FALSE(s.ok()) << c.what;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument) << c.what;
    EXPECT_EQ(s.error().field, c.field) << c.what << ": " << s.error().to_string();
    EXPECT_NE(s.error().message.find(c.message_part), std::string::npos)
        << c.what << ": " << s.error().to_string();
  }
}

TEST(JobSpec, ListsEveryProblem) {
  json j = example();
  j["model"]["heads"] = 7;
  j["train"]["steps"] = -1;
  Result<JobSpec> s = parse_job_spec(j);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("2 problems"), std::string::npos) << s.error().message;
  EXPECT_NE(s.error().message.find("train.steps"), std::string::npos) << s.error().message;
}

TEST(JobSpec, ShippedJobsAreValid) {
  for (const char* f : {"brown-mohge.json", "brown-moe.json", "brown-dense.json"}) {
    Result<JobSpec> s = load_job_spec(std::string(MOHGE_SOURCE_DIR) + "/deploy/jobs/" + f);
    EXPECT_TRUE(s.ok()) << f << ": " << (s.ok() ? "" : s.error().to_string());
  }
  Result<JobSpec> bench =
      load_job_spec(std::string(MOHGE_SOURCE_DIR) + "/tests/bench/layer-mohge.json");
  EXPECT_TRUE(bench.ok()) << (bench.ok() ? "" : bench.error().to_string());
}

TEST(JobSpec, UnreadableFilesAreReported) {
  EXPECT_EQ(load_job_spec("/nonexistent/spec.json").error().code, ErrorCode::kNotFound);
  const std::string path = ::testing::TempDir() + "bad-spec.json";
  std::ofstream(path) << "{ not json";
  Result<JobSpec> s = load_job_spec(path);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("not valid JSON"), std::string::npos);
}

}  // namespace
}  // namespace mohge
