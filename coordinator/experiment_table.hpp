// The comparison table of an experiment (DESIGN.md §16): one row per variant group (a grid
// point minus the seed axis), each figure as mean ± standard deviation over the group's
// finished seeds. A pure function of the jobs' states and metric series, so tests build the
// input by hand and assert the exact table; the coordinator reads the series from SQLite.
//
// Per job (the figures a row averages):
//   final val loss     the val_loss of the last evaluation, for SUCCEEDED jobs only;
//   tokens/s           the mean of tokens_per_s after the first 10 % of steps (warm-up and
//                      start-up are not the throughput a user plans with);
//   imbalance          the mean rank imbalance (max/mean expert FLOPs) after the first 10 %;
//   activated params   per token: total − FFN + the mean activated FFN parameters of the last
//                      10 % of steps (MoHGE's varies as L_G acts; dense: every parameter);
//   params             total, FFN and routed-expert counts from the spec (model_param_counts).
// The standard deviation is the sample one (n − 1); with one finished seed it is null. A group
// with no finished seed has null figures and counts its seeds anyway.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/job_spec.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

struct ExperimentJobData {
  int64_t id = 0;
  std::string state;    // the job's lifecycle state
  std::string variant;  // the variant's name
  std::string group;    // the variant group (variant plus non-seed coordinates)
  nlohmann::json coords = nlohmann::json::object();
  int64_t steps = 0;   // spec.train.steps
  ParamCounts params;  // from the spec
  // Series by metric name: val_loss, tokens_per_s, imbalance, activated_expert_params; and the
  // last evaluation's difficulty.<kind>.<bucket>.<group> values (one point each).
  std::map<std::string, std::vector<db::MetricPoint>> series;
};

/// The metric names (and "difficulty." prefix) the table reads for each job.
const std::vector<std::string>& experiment_table_metrics();

/// {"groups": [row per variant group, in first-appearance order], "jobs": [per-job figures]}.
/// A row: {"group", "variant", "coords", "jobs", "seeds", "seeds_finished", "val_loss",
/// "tokens_per_s", "imbalance", "activated_params", "activated_expert_params", "params_total",
/// "params_ffn", "params_routed" (each {"mean", "std", "n"}), "val_curve" ({"steps", "mean",
/// "std", "n"} over every job of the group with that evaluation), "difficulty" (mean of the
/// finished seeds' last tables: {"frequency": [[share per group] per bucket], "token_loss": …},
/// absent for models without groups)}.
nlohmann::json experiment_table(const std::vector<ExperimentJobData>& jobs);

}  // namespace mohge::coord
