// Expert placement across the R expert-parallel ranks (DESIGN.md §4).
//
//   all-size        rank r owns expert i of every group for i in [r·n/R, (r+1)·n/R): the
//                   paper's All-size Group-decoupling Allocation; equal expert parameters on
//                   every rank (needs n % R == 0).
//   group-per-rank  whole groups on one rank, as naive heterogeneous MoE does (G % R == 0).
//   contiguous      global expert ids split in R blocks (E % R == 0).
// A uniform MoE has no groups: every placement is the contiguous split of its E experts.
#pragma once

#include <string>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"

namespace mohge {

struct ExpertPlacement {
  std::string kind;                       // "all-size", "group-per-rank", "contiguous"
  int world = 1;                          // R
  std::vector<int> owner;                 // (E) rank owning routed expert e
  std::vector<std::vector<int>> experts;  // (R) routed experts of each rank, ascending
  std::vector<int64_t> expert_params;     // (R) routed expert parameters per rank, all layers
};

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
