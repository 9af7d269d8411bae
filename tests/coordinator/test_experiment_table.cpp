// The experiment comparison table on hand-built jobs: rows per variant group in order, mean and
// sample standard deviation over finished seeds only, the windows each figure is taken over,
// validation curves over every job, difficulty tables averaged.
#include <gtest/gtest.h>

#include <cmath>

#include "coordinator/experiment_table.hpp"

namespace mohge::coord {
namespace {

using nlohmann::json;

ExperimentJobData job(int64_t id, const std::string& group, int seed, const std::string& state,
                      double val, double tps) {
  ExperimentJobData j;
  j.id = id;
  j.state = state;
  j.variant = group;
  j.group = group;
  j.coords = {{"train.seed", seed}};
  j.steps = 100;
  j.params = ParamCounts{1000, 600, 500};
  j.series["val_loss"] = {{50, val + 1.0}, {100, val}};
  // Steps 1..10 are warm-up (excluded): a huge value there must not move the mean.
  for (int64_t s = 1; s <= 100; ++s) j.series["tokens_per_s"].push_back({s, s <= 10 ? 1e9 : tps});
  for (int64_t s = 1; s <= 100; ++s) j.series["imbalance"].push_back({s, s <= 10 ? 9.0 : 1.25});
  // Activated FFN parameters: 400 before the last 10 % of steps, 300 in it.
  for (int64_t s = 1; s <= 100; ++s)
    j.series["activated_expert_params"].push_back({s, s <= 90 ? 400.0 : 300.0});
  return j;
}

TEST(ExperimentTable, GroupsAverageFinishedSeedsWithSampleStd) {
  std::vector<ExperimentJobData> jobs = {
      job(1, "mohge", 1, "SUCCEEDED", 5.0, 100), job(2, "mohge", 2, "SUCCEEDED", 5.2, 120),
      job(3, "mohge", 3, "RUNNING", 9.0, 999), job(4, "dense", 1, "SUCCEEDED", 6.0, 200),
      job(5, "dense", 2, "FAILED", 7.0, 300)};
  jobs[0].series["difficulty.frequency.0.0"] = {{100, 0.75}};
  jobs[0].series["difficulty.frequency.0.1"] = {{100, 0.25}};
  jobs[1].series["difficulty.frequency.0.0"] = {{100, 0.25}};
  jobs[1].series["difficulty.frequency.0.1"] = {{100, 0.75}};
  const json t = experiment_table(jobs);
  ASSERT_EQ(t["groups"].size(), 2u);
  const json& m = t["groups"][0];
  EXPECT_EQ(m["group"], "mohge");
  EXPECT_EQ(m["seeds"], 3);
  EXPECT_EQ(m["seeds_finished"], 2);
  EXPECT_EQ(m["jobs"], json::array({1, 2, 3}));
  EXPECT_EQ(m["coords"], json::object());  // the seed axis is not a coordinate of the group
  EXPECT_NEAR(m["val_loss"]["mean"].get<double>(), 5.1, 1e-12);
  EXPECT_NEAR(m["val_loss"]["std"].get<double>(), std::sqrt(0.02), 1e-12);  // n − 1
  EXPECT_EQ(m["val_loss"]["n"], 2);
  EXPECT_NEAR(m["tokens_per_s"]["mean"].get<double>(), 110.0, 1e-9);
  EXPECT_NEAR(m["imbalance"]["mean"].get<double>(), 1.25, 1e-12);
  EXPECT_NEAR(m["activated_expert_params"]["mean"].get<double>(), 300.0, 1e-12);
  // total − FFN + activated FFN.
  EXPECT_NEAR(m["activated_params"]["mean"].get<double>(), 1000 - 600 + 300, 1e-12);
  EXPECT_EQ(m["params_total"]["mean"], 1000.0);
  EXPECT_EQ(m["params_routed"]["mean"], 500.0);
  // The curve averages every job with that evaluation, running ones included.
  EXPECT_EQ(m["val_curve"]["steps"], json::array({50, 100}));
  EXPECT_EQ(m["val_curve"]["n"], json::array({3, 3}));
  EXPECT_NEAR(m["val_curve"]["mean"][1].get<double>(), (5.0 + 5.2 + 9.0) / 3, 1e-12);
  EXPECT_EQ(m["difficulty"]["frequency"], json::parse("[[0.5, 0.5]]"));

  const json& d = t["groups"][1];
  EXPECT_EQ(d["seeds_finished"], 1);
  EXPECT_EQ(d["val_loss"]["mean"], 6.0);
  EXPECT_TRUE(d["val_loss"]["std"].is_null());  // one seed: no spread to report
  EXPECT_FALSE(d.contains("difficulty"));

  ASSERT_EQ(t["jobs"].size(), 5u);
  EXPECT_EQ(t["jobs"][2]["val_loss"], 9.0);  // per-job figures for every state
}

TEST(ExperimentTable, AGroupWithoutFinishedSeedsHasNullFigures) {
  std::vector<ExperimentJobData> jobs = {job(1, "moe", 1, "QUEUED", 0, 0)};
  jobs[0].series.clear();
  const json t = experiment_table(jobs);
  const json& g = t["groups"][0];
  EXPECT_EQ(g["seeds_finished"], 0);
  EXPECT_TRUE(g["val_loss"]["mean"].is_null());
  EXPECT_EQ(g["val_loss"]["n"], 0);
  EXPECT_EQ(g["val_curve"]["steps"], json::array());
}

TEST(ExperimentTable, MalformedDifficultyNamesAreIgnored) {
  std::vector<ExperimentJobData> jobs = {job(1, "mohge", 1, "SUCCEEDED", 5.0, 100)};
  jobs[0].series["difficulty.frequency.x.0"] = {{100, 1.0}};
  jobs[0].series["difficulty.other.0.0"] = {{100, 1.0}};
  jobs[0].series["difficulty.frequency.0.99999999999"] = {{100, 1.0}};
  jobs[0].series["difficulty.token_loss.1.2"] = {{100, 0.5}};
  const json t = experiment_table(jobs);
  // Only the well-formed one; groups before it in its bucket are zeros.
  EXPECT_EQ(t["groups"][0]["difficulty"], json::parse(R"({"token_loss": [[0.0, 0.0, 0.5]]})"));
}

}  // namespace
}  // namespace mohge::coord
