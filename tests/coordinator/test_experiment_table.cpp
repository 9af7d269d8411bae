// The experiment comparison table on hand-built jobs: rows per variant group in order, mean and
// sample standard deviation over finished seeds only, the windows each figure is taken over,
// validation curves over every job, difficulty tables averaged.
#include <gtest/gtest.h>

#include <cmath>

#include "coordinator/experiment_table.hpp"

namespace mohge::coord {
namespace {

using nlohmann::json;

/// A job whose windows hold the given means: tokens/s `tps`, imbalance 1.25, activated FFN
/// parameters 300 (what the coordinator's running sums would give).
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
  j.val_curve = {{50, val + 1.0}, {100, val}};
  j.val_loss = val;
  j.windowed = {{tps * 90, 90, 100}, {1.25 * 90, 90, 100}, {300.0 * 10, 10, 100}};
  j.groups = 4;
  return j;
}

TEST(ExperimentTable, WindowsStartAfterTheFirstTenthAndInTheLastTenthOfSteps) {
  EXPECT_EQ(experiment_window_start("tokens_per_s", 300), 30);
  EXPECT_EQ(experiment_window_start("imbalance", 300), 30);
  EXPECT_EQ(experiment_window_start("activated_expert_params", 300), 270);
  EXPECT_EQ(experiment_windowed_metrics(),
            (std::vector<std::string>{"tokens_per_s", "imbalance", "activated_expert_params"}));
}

TEST(ExperimentTable, GroupsAverageFinishedSeedsWithSampleStd) {
  std::vector<ExperimentJobData> jobs = {
      job(1, "mohge", 1, "SUCCEEDED", 5.0, 100), job(2, "mohge", 2, "SUCCEEDED", 5.2, 120),
      job(3, "mohge", 3, "RUNNING", 9.0, 999), job(4, "dense", 1, "SUCCEEDED", 6.0, 200),
      job(5, "dense", 2, "FAILED", 7.0, 300)};
  jobs[0].difficulty["difficulty.frequency.0.0"] = 0.75;
  jobs[0].difficulty["difficulty.frequency.0.1"] = 0.25;
  jobs[1].difficulty["difficulty.frequency.0.0"] = 0.25;
  jobs[1].difficulty["difficulty.frequency.0.1"] = 0.75;
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
  jobs[0].val_curve.clear();
  jobs[0].val_loss.reset();
  jobs[0].windowed = {{0, 0, 10}, {0, 0, 10}, {0, 0, 90}};
  const json t = experiment_table(jobs);
  const json& g = t["groups"][0];
  EXPECT_EQ(g["seeds_finished"], 0);
  EXPECT_TRUE(g["val_loss"]["mean"].is_null());
  EXPECT_EQ(g["val_loss"]["n"], 0);
  EXPECT_EQ(g["val_curve"]["steps"], json::array());
}

TEST(ExperimentTable, MalformedDifficultyNamesAreIgnored) {
  std::vector<ExperimentJobData> jobs = {job(1, "mohge", 1, "SUCCEEDED", 5.0, 100)};
  jobs[0].difficulty["difficulty.frequency.x.0"] = 1.0;
  jobs[0].difficulty["difficulty.other.0.0"] = 1.0;
  jobs[0].difficulty["difficulty.frequency.0.99999999999"] = 1.0;
  jobs[0].difficulty["difficulty.token_loss.1.2"] = 0.5;
  // Out of range for the model (4 buckets, 4 groups): a worker's report cannot grow the rows.
  jobs[0].difficulty["difficulty.frequency.64.1024"] = 1.0;
  jobs[0].difficulty["difficulty.frequency.4.0"] = 1.0;
  jobs[0].difficulty["difficulty.frequency.0.4"] = 1.0;
  const json t = experiment_table(jobs);
  // Only the well-formed one; the bucket and groups before it are zeros, so every row stays
  // under its own bucket's label.
  EXPECT_EQ(t["groups"][0]["difficulty"],
            json::parse(R"({"token_loss": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]})"));
}

}  // namespace
}  // namespace mohge::coord
