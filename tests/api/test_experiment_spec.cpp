// Experiment requests: the grid expands in a fixed order into validated job specs with names,
// coordinates and variant groups; a bad point is refused before anything exists, named by its
// coordinates; the request's own fields are checked with their paths.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "api/experiment_spec.hpp"

namespace mohge {
namespace {

using nlohmann::json;

json base_spec() {
  return json::parse(R"({ "name": "ignored",
    "model": { "vocab_size": 64, "seq_len": 16, "layers": 2, "d_model": 16, "heads": 2,
               "ffn": { "kind": "mohge", "groups": 2, "experts_per_group": 2, "widths": [8, 16],
                        "top_groups": 1, "top_experts": 2 } },
    "data": { "train": "d/train.bin", "val": "d/val.bin" },
    "train": { "steps": 10, "batch_size": 2, "lr": 0.001 } })");
}

json request() {
  return {{"name", "cmp"},
          {"base", base_spec()},
          {"variants",
           {{{"name", "mohge"}},
            {{"name", "no-lg"}, {"set", {{"model.ffn.alpha_group", 0}}}},
            {{"name", "dense"}, {"set", {{"model.ffn", {{"kind", "dense"}, {"width", 24}}}}}}}},
          {"grid", {{"train.seed", {1, 2}}, {"train.lr", {0.001, 0.002}}}},
          {"max_parallel", 2}};
}

TEST(ExperimentSpec, ExpandsVariantsTimesTheGridInOrderWithNamesAndGroups) {
  Result<ExperimentPlan> plan = parse_experiment(request());
  ASSERT_TRUE(plan.ok()) << plan.error().to_string();
  const ExperimentPlan& p = plan.value();
  ASSERT_EQ(p.points.size(), 3u * 2u * 2u);
  EXPECT_EQ(p.max_parallel, 2);
  // Variant-major, then axes in path order (train.lr, train.seed), the last fastest.
  EXPECT_EQ(p.points[0].spec.name, "cmp/mohge,train.lr=0.001/seed=1");
  EXPECT_EQ(p.points[1].spec.name, "cmp/mohge,train.lr=0.001/seed=2");
  EXPECT_EQ(p.points[2].spec.name, "cmp/mohge,train.lr=0.002/seed=1");
  EXPECT_EQ(p.points[4].variant, "no-lg");
  EXPECT_EQ(p.points[0].group, "mohge,train.lr=0.001");
  EXPECT_EQ(p.points[1].group, p.points[0].group);  // seeds share the group
  EXPECT_EQ(p.points[3].coords, (json{{"train.lr", 0.002}, {"train.seed", 2}}));
  for (const ExperimentPoint& pt : p.points) {
    EXPECT_EQ(pt.spec.train.seed, pt.coords["train.seed"].get<uint64_t>());
    EXPECT_DOUBLE_EQ(pt.spec.train.lr, pt.coords["train.lr"].get<double>());
  }
  EXPECT_DOUBLE_EQ(p.points[0].spec.model.ffn.alpha_group, 1e-4);  // the default
  EXPECT_DOUBLE_EQ(p.points[4].spec.model.ffn.alpha_group, 0.0);
  EXPECT_EQ(p.points[8].spec.model.ffn.kind, "dense");
  EXPECT_EQ(p.points[8].spec.model.ffn.width, 24);
  EXPECT_EQ(p.request["variants"].size(), 3u);
  EXPECT_EQ(p.request["max_parallel"], 2);
}

TEST(ExperimentSpec, WithoutVariantsOrGridItIsOneJobNamedBase) {
  Result<ExperimentPlan> plan = parse_experiment({{"name", "one"}, {"base", base_spec()}});
  ASSERT_TRUE(plan.ok()) << plan.error().to_string();
  ASSERT_EQ(plan.value().points.size(), 1u);
  EXPECT_EQ(plan.value().points[0].spec.name, "one/base");
  EXPECT_EQ(plan.value().points[0].group, "base");
}

TEST(ExperimentSpec, ABadPointIsNamedByItsCoordinatesAndTheSpecField) {
  json r = request();
  r["variants"][1]["set"]["model.ffn.top_groups"] = 5;  // more than groups
  Result<ExperimentPlan> plan = parse_experiment(r);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().field, "model.ffn.top_groups");
  EXPECT_NE(plan.error().message.find("variant \"no-lg\", train.lr=0.001, train.seed=1"),
            std::string::npos)
      << plan.error().message;

  json g = request();
  g["grid"]["train.batch_size"] = {2, -1};
  plan = parse_experiment(g);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().field, "train.batch_size");
  EXPECT_NE(plan.error().message.find("train.batch_size=-1"), std::string::npos)
      << plan.error().message;

  json unknown = request();
  unknown["grid"]["train.sead"] = {1};  // a typo is an unknown spec field
  plan = parse_experiment(unknown);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().field, "train.sead");
}

TEST(ExperimentSpec, TheRequestsOwnFieldsAreCheckedWithTheirPaths) {
  auto field_of = [](const json& r) {
    Result<ExperimentPlan> p = parse_experiment(r);
    return p.ok() ? std::string("ok") : p.error().field;
  };
  json r = request();
  r.erase("name");
  EXPECT_EQ(field_of(r), "name");
  r = request();
  r["name"] = "Has Spaces";
  EXPECT_EQ(field_of(r), "name");
  r = request();
  r.erase("base");
  EXPECT_EQ(field_of(r), "base");
  r = request();
  r["variants"][2]["name"] = "mohge";
  EXPECT_EQ(field_of(r), "variants[2].name");
  r = request();
  r["variants"][0]["sett"] = json::object();
  EXPECT_EQ(field_of(r), "variants[0].sett");
  r = request();
  r["variants"][0]["set"] = {{"model..ffn", 1}};
  EXPECT_EQ(field_of(r), "variants[0].set.model..ffn");
  r = request();
  r["grid"]["train.seed"] = json::array();
  EXPECT_EQ(field_of(r), "grid.train.seed");
  r = request();
  r["grid"]["train.seed"] = {1, 1};
  EXPECT_EQ(field_of(r), "grid.train.seed");
  r = request();
  r["grid"]["name"] = {"x"};
  EXPECT_EQ(field_of(r), "grid.name");
  r = request();
  r["max_parallel"] = -1;
  EXPECT_EQ(field_of(r), "max_parallel");
  r = request();
  r["extra"] = 1;
  EXPECT_EQ(field_of(r), "extra");
  // 3 variants × 100 × 2 seeds × 2 rates > 256 jobs.
  r = request();
  json many = json::array();
  for (int i = 0; i < 100; ++i) many.push_back(i + 1);
  r["grid"]["train.steps"] = many;
  Result<ExperimentPlan> big = parse_experiment(r);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().field, "grid");
  EXPECT_NE(big.error().message.find("1200 jobs"), std::string::npos) << big.error().message;
  // A path through a value that is not an object.
  r = request();
  r["variants"][1]["set"] = {{"train.steps.x", 1}};
  Result<ExperimentPlan> through = parse_experiment(r);
  ASSERT_FALSE(through.ok());
  EXPECT_NE(through.error().message.find("variant \"no-lg\""), std::string::npos);
}

// Long values are cut for the job names at a character boundary (names stay valid UTF-8), and
// points whose names would collide are refused instead of being averaged as one setting.
TEST(ExperimentSpec, LongValuesAreCutAtACharacterAndCollidingNamesAreRefused) {
  json r = request();
  r["grid"] = {{"data.train", {"d/" + std::string(34, 'a') + "\u00e9\u00e9.bin"}}};
  r["variants"] = {{{"name", "v"}}};
  Result<ExperimentPlan> plan = parse_experiment(r);
  ASSERT_TRUE(plan.ok()) << plan.error().to_string();
  const std::string name = plan.value().points[0].spec.name;
  EXPECT_EQ(name, "cmp/v,data.train=d/" + std::string(34, 'a') + "...");
  EXPECT_NO_THROW((void)json(name).dump());  // strict UTF-8 check
  // Two values that differ only past the cut, and a string and a number with the same text.
  r["grid"] = {{"data.train",
                {"d/" + std::string(40, 'a') + "1.bin", "d/" + std::string(40, 'a') + "2.bin"}}};
  plan = parse_experiment(r);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().field, "grid");
  EXPECT_NE(plan.error().message.find("points 0 and 1"), std::string::npos) << plan.error().message;
  r["grid"] = {{"train.batch_size", {2, "2"}}};
  plan = parse_experiment(r);
  ASSERT_FALSE(plan.ok());  // "2" is no integer either: refused, whichever check sees it first
}

TEST(ExperimentSpec, SetPathCreatesObjectsAndRefusesToWalkThroughValues) {
  json doc = {{"a", {{"b", 1}}}};
  ASSERT_TRUE(json_set_path(doc, "a.c.d", 2).ok());
  EXPECT_EQ(doc["a"]["c"]["d"], 2);
  ASSERT_TRUE(json_set_path(doc, "a.b", json::array({1})).ok());
  EXPECT_EQ(doc["a"]["b"], json::array({1}));
  EXPECT_FALSE(json_set_path(doc, "a.b.c", 1).ok());
}

// The shipped reproduction experiment parses and expands to 4 variants × 3 seeds.
TEST(ExperimentSpec, ThePaperMiniatureExperimentExpands) {
  std::ifstream in(std::string(MOHGE_SOURCE_DIR) + "/deploy/experiments/paper-miniature.json");
  ASSERT_TRUE(in);
  const json r = json::parse(in);
  Result<ExperimentPlan> plan = parse_experiment(r);
  ASSERT_TRUE(plan.ok()) << plan.error().to_string();
  EXPECT_EQ(plan.value().points.size(), 12u);
  EXPECT_EQ(plan.value().variants.size(), 4u);
}

}  // namespace
}  // namespace mohge
