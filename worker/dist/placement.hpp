// Expert placement across the R expert-parallel ranks (DESIGN.md §4).
//
//   all-size        rank r owns expert i of every group for i in [r·n/R, (r+1)·n/R): the
//                   paper's All-size Group-decoupling Allocation; equal expert parameters on
//                   every rank (needs n % R == 0).
//   group-per-rank  whole groups on one rank, as naive heterogeneous MoE does (G % R == 0).
//   contiguous      global expert ids split in R blocks (E % R == 0).
//   all-size-adaptive
//                   All-size (every rank owns n/R experts of every group, so equal expert
//                   parameters and the same local layout on every rank), but which experts of
//                   a group each rank owns is chosen per layer from measured loads
//                   (placement_adaptive) and re-chosen while training (DESIGN.md §15). It
//                   starts as all-size.
// A uniform MoE has no groups: every placement is the contiguous split of its E experts.
#pragma once

#include <string>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"

namespace mohge {

struct ExpertPlacement {
  std::string kind;                       // "all-size", "group-per-rank", "contiguous", …
  int world = 1;                          // R
  std::vector<int> owner;                 // (E) rank owning routed expert e
  std::vector<std::vector<int>> experts;  // (R) routed experts of each rank, ascending
  std::vector<int64_t> expert_params;     // (R) routed expert parameters per rank, all layers
  /// Per-layer placements (all-size-adaptive once re-planned); empty: this one in every layer.
  std::vector<ExpertPlacement> layers;
  const ExpertPlacement& layer(int l) const {
    return layers.empty() ? *this : layers[static_cast<size_t>(l)];
  }
};

/// Fills `experts` and `expert_params` from `owner` (and `world`).
void placement_index(const ModelSpec& model, ExpertPlacement& p);

/// One layer's All-size placement that minimises the largest rank load for `load` (E: the
/// work of each expert, e.g. an average of its tokens times 6·D·W): each rank gets n/R
/// experts of every group. Exact (branch and bound) when the choices are few, else greedy by
/// decreasing load with pairwise swaps off the most loaded rank; never worse on `load` than
/// static all-size. Deterministic: the same loads give the same placement. Needs a MoHGE
/// spec with n % R == 0. With `current` (the layer's placement now), the ranks of the plan are
/// renamed so that as many expert parameters as possible stay where they are (renaming ranks
/// changes no rank's load), which keeps the bytes a re-placement moves down.
Result<ExpertPlacement> placement_adaptive_layer(const ModelSpec& model, int world,
                                                 const std::vector<double>& load,
                                                 const ExpertPlacement* current = nullptr);

/// Folds one step's expert token counts (E, summed over ranks) into their moving average
/// (weight 0.1 for the newest step; the first step starts it).
void placement_average_loads(std::vector<double>& average, const std::vector<double>& counts);

/// A re-plan of every layer of an all-size-adaptive placement, as the trainer makes it and
/// `bench balance` replays it.
struct PlacementReplan {
  ExpertPlacement next;  // per-layer placements (`layers` filled)
  double before = 0.0;   // mean over layers of the predicted imbalance now
  double after = 0.0;    // and with `next`
  bool worth = false;    // after < before, by at least min_gain of before
};

/// Plans each layer on its expected FLOPs (average_counts: layers × E token averages × 6·D·W);
/// a layer keeps its placement unless the plan is strictly better for it.
Result<PlacementReplan> placement_replan(const ModelSpec& model, const ExpertPlacement& current,
                                         const std::vector<std::vector<double>>& average_counts,
                                         double min_gain);

/// Largest rank load over the mean for `load` (E) under placement `p`.
double placement_load_imbalance(const ExpertPlacement& p, const std::vector<double>& load);

/// Plans the placement of `spec.model.ffn`'s routed experts over `world` ranks. Errors name the
/// fields whose divisibility the placement needs.
Result<ExpertPlacement> placement_plan(const ModelSpec& model, const std::string& kind, int world);

/// Forward expert FLOPs per rank (R) for one layer, from the global number of tokens routed
/// to each expert (E): Σ_{e on r} count_e · 6·D·W_e.
std::vector<double> placement_rank_flops(const ExpertPlacement& p, const ModelSpec& model,
                                         const std::vector<double>& expert_assignments);

/// max / mean of a per-rank load (1.0 = perfectly balanced; 1.0 for an all-zero load).
double load_imbalance(const std::vector<double>& per_rank);

}  // namespace mohge
