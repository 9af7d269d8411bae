// The comparison table of an experiment (DESIGN.md §16): one row per variant group (a grid
// point minus the seed axis), each figure as mean ± standard deviation over the group's
// finished seeds. A pure function of the jobs' states and figures, so tests build the input by
// hand and assert the exact table; the coordinator reads the figures from SQLite, keeping a
// running sum per job and windowed series so that each request reads only the rows added since
// the last one (a dashboard polls this while hundreds of long jobs run).
//
// Per job (the figures a row averages):
//   final val loss     the val_loss of the last evaluation, for SUCCEEDED jobs only;
//   tokens/s           the mean of tokens_per_s after the first 10 % of steps (warm-up and
//                      start-up are not the throughput a user plans with);
//   imbalance          the mean rank imbalance (max/mean expert FLOPs) after the first 10 %;
//   activated params   per token: total − FFN + the mean activated FFN parameters of the last
//                      10 % of steps (MoHGE's varies as L_G acts; dense: every parameter);
//                      (the windows: experiment_window_start);
//   params             total, FFN and routed-expert counts from the spec (model_param_counts).
// The standard deviation is the sample one (n − 1); with one finished seed it is null. A group
// with no finished seed has null figures and counts its seeds anyway.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/job_spec.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

/// The step after which a windowed figure is averaged ("tokens_per_s", "imbalance":
/// steps / 10; "activated_expert_params": 9 · steps / 10).
int64_t experiment_window_start(const std::string& metric, int64_t steps);
/// The series averaged over a window, in the order ExperimentJobData::windowed holds them.
const std::vector<std::string>& experiment_windowed_metrics();

/// Buckets of each difficulty kind (the trainer's DifficultyRouting::kBuckets: frequency
/// quartiles, loss ranges [0,2), [2,4), [4,6), [6,∞)).
inline constexpr int kDifficultyBuckets = 4;

struct ExperimentJobData {
  int64_t id = 0;
  std::string state;    // the job's lifecycle state
  std::string variant;  // the variant's name
  std::string group;    // the variant group (variant plus non-seed coordinates)
  nlohmann::json coords = nlohmann::json::object();
  int64_t steps = 0;                       // spec.train.steps
  ParamCounts params;                      // from the spec
  std::vector<db::MetricPoint> val_curve;  // validation loss (possibly downsampled)
  std::optional<double> val_loss;          // the last evaluation's, when finite
  // Window sums of experiment_windowed_metrics(), in that order (count 0: no data yet).
  std::vector<db::MetricWindow> windowed;
  // The last evaluation's difficulty.<kind>.<bucket>.<group> values by name; only buckets
  // below kDifficultyBuckets and groups below `groups` count (a worker reports these names,
  // and one out-of-range name must not blow up every row).
  std::map<std::string, double> difficulty;
  int groups = 0;  // model.ffn.groups of a MoHGE model, 0 otherwise
};

/// {"groups": [row per variant group, in first-appearance order], "jobs": [per-job figures]}.
/// A row: {"group", "variant", "coords", "jobs", "seeds", "seeds_finished", "val_loss",
/// "tokens_per_s", "imbalance", "activated_params", "activated_expert_params", "params_total",
/// "params_ffn", "params_routed" (each {"mean", "std", "n"}), "val_curve" ({"steps", "mean",
/// "std", "n"} over every job of the group with that evaluation), "difficulty" (mean of the
/// finished seeds' last tables: {"frequency": [[share per group] per bucket], "token_loss": …},
/// absent for models without groups)}.
nlohmann::json experiment_table(const std::vector<ExperimentJobData>& jobs);

}  // namespace mohge::coord
