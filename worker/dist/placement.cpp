#include "worker/dist/placement.hpp"

#include <algorithm>
#include <numeric>

namespace mohge {

Result<ExpertPlacement> placement_plan(const ModelSpec& model, const std::string& kind, int world) {
  const FfnSpec& f = model.ffn;
  if (world < 1) return invalid_argument("resources.workers", "must be at least 1");
  ExpertPlacement p;
  p.kind = kind;
  p.world = world;
  const int E = f.num_experts();
  p.owner.assign(static_cast<size_t>(E), 0);
  p.experts.assign(static_cast<size_t>(world), {});
  const std::string R = std::to_string(world);
  if (kind != "all-size" && kind != "group-per-rank" && kind != "contiguous") {
    return invalid_argument("placement",
                            "must be one of \"all-size\", \"group-per-rank\", "
                            "\"contiguous\", got \"" +
                                kind + "\"");
  }
  if (f.kind == "mohge" && kind == "all-size") {
    const int n = f.experts_per_group;
    if (n % world != 0) {
      return invalid_argument("model.ffn.experts_per_group",
                              "must be divisible by resources.workers (" + R +
                                  ") for all-size placement, got " + std::to_string(n));
    }
    for (int e = 0; e < E; ++e) p.owner[static_cast<size_t>(e)] = (e % n) / (n / world);
  } else if (f.kind == "mohge" && kind == "group-per-rank") {
    if (f.groups % world != 0) {
      return invalid_argument("model.ffn.groups", "must be divisible by resources.workers (" + R +
                                                      ") for group-per-rank placement, got " +
                                                      std::to_string(f.groups));
    }
    for (int e = 0; e < E; ++e)
      p.owner[static_cast<size_t>(e)] = (e / f.experts_per_group) / (f.groups / world);
  } else if (E > 0) {  // contiguous, and every placement of a uniform MoE
    if (E % world != 0) {
      return invalid_argument(f.kind == "moe" ? "model.ffn.experts" : "model.ffn.experts_per_group",
                              "the " + std::to_string(E) +
                                  " routed experts must split evenly over "
                                  "resources.workers (" +
                                  R + ")");
    }
    for (int e = 0; e < E; ++e) p.owner[static_cast<size_t>(e)] = e / (E / world);
  }
  p.expert_params.assign(static_cast<size_t>(world), 0);
  for (int e = 0; e < E; ++e) {
    const int r = p.owner[static_cast<size_t>(e)];
    p.experts[static_cast<size_t>(r)].push_back(e);
    p.expert_params[static_cast<size_t>(r)] +=
        int64_t{3} * model.d_model * f.expert_hidden_width(e) * model.layers;
  }
  return p;
}

std::vector<double> placement_rank_flops(const ExpertPlacement& p, const ModelSpec& model,
                                         const std::vector<double>& expert_assignments) {
  std::vector<double> flops(static_cast<size_t>(p.world), 0.0);
  for (size_t e = 0; e < expert_assignments.size() && e < p.owner.size(); ++e) {
    flops[static_cast<size_t>(p.owner[e])] += expert_assignments[e] * 6.0 * model.d_model *
                                              model.ffn.expert_hidden_width(static_cast<int>(e));
  }
  return flops;
}

double load_imbalance(const std::vector<double>& per_rank) {
  if (per_rank.empty()) return 1.0;
  const double mean = std::accumulate(per_rank.begin(), per_rank.end(), 0.0) / per_rank.size();
  if (mean <= 0.0) return 1.0;
  return *std::max_element(per_rank.begin(), per_rank.end()) / mean;
}

}  // namespace mohge
