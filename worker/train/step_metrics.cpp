#include "worker/train/step_metrics.hpp"

#include "worker/dist/placement.hpp"

namespace mohge {

using nlohmann::json;

StepLosses step_losses_reduce(const ParallelContext& parallel, const Transformer& model,
                              const ForwardResult& local) {
  const auto routing = model.routing();
  // [ce sum, targets, then (L_G, L_E) per layer]
  std::vector<double> v = {local.ce_loss * static_cast<double>(local.num_targets),
                           static_cast<double>(local.num_targets)};
  for (const LayerRouting* r : routing) {
    v.push_back(r != nullptr ? r->aux_group : 0.0);
    v.push_back(r != nullptr ? r->aux_expert : 0.0);
  }
  if (parallel.distributed())
    collective_check(
        parallel.comm->all_reduce(v.data(), static_cast<int64_t>(v.size()), ReduceOp::kSum));
  StepLosses s;
  s.targets = v[1];
  s.ce_loss = v[1] > 0 ? v[0] / v[1] : 0.0;
  s.layer_aux.assign(v.begin() + 2, v.end());
  for (size_t l = 0; l < routing.size(); ++l) {
    s.aux_group += s.layer_aux[2 * l];
    s.aux_expert += s.layer_aux[2 * l + 1];
  }
  return s;
}

json step_layer_metrics(const ParallelContext& parallel, const Transformer& model,
                        const StepLosses& losses) {
  const ModelSpec& spec = model.spec();
  const auto routing = model.routing();
  const int R = parallel.world(), me = parallel.rank();
  const int64_t L = static_cast<int64_t>(routing.size());

  // Gather every rank's timings: (R, L, 3) with this rank's slots filled.
  std::vector<double> times(static_cast<size_t>(R * L * 3), 0.0);
  for (int64_t l = 0; l < L; ++l) {
    if (const LayerTimes* t = model.ffn(static_cast<int>(l)).times()) {
      double* slot = times.data() + (me * L + l) * 3;
      slot[0] = t->compute_ms;
      slot[1] = t->comm_ms;
      slot[2] = static_cast<double>(t->comm_bytes);
    }
  }
  if (parallel.distributed())
    collective_check(parallel.comm->all_reduce(times.data(), static_cast<int64_t>(times.size()),
                                               ReduceOp::kSum));

  // This run's placement and the group-per-rank counterfactual, for the same routing.
  Result<ExpertPlacement> own = parallel.placement != nullptr
                                    ? Result<ExpertPlacement>(*parallel.placement)
                                    : placement_plan(spec, "contiguous", 1);
  Result<ExpertPlacement> naive = placement_plan(spec, "group-per-rank", R);
  Result<ExpertPlacement> fixed = placement_plan(spec, "all-size", R);

  json layers = json::array();
  for (int64_t l = 0; l < L; ++l) {
    const LayerRouting* r = routing[static_cast<size_t>(l)];
    if (r == nullptr) continue;
    double total = 0.0;
    for (double v : r->group_assignments) total += v;
    std::vector<double> share;
    for (double v : r->group_assignments) share.push_back(total > 0 ? v / total : 0.0);
    json rec = {{"layer", l},
                {"group_share", share},
                {"expert_assignments", r->expert_assignments},
                {"activated_expert_params", r->activated_expert_params},
                {"aux_group", losses.layer_aux[static_cast<size_t>(2 * l)]},
                {"aux_expert", losses.layer_aux[static_cast<size_t>(2 * l + 1)]}};
    if (own.ok()) {
      const ExpertPlacement& here = own.value().layer(static_cast<int>(l));
      const std::vector<double> flops = placement_rank_flops(here, spec, r->expert_assignments);
      const size_t G = r->group_assignments.size();
      const int n = spec.ffn.kind == "mohge" ? spec.ffn.experts_per_group : spec.ffn.num_experts();
      json ranks = json::array();
      for (int k = 0; k < R; ++k) {
        std::vector<double> by_group(G, 0.0);
        for (int e : here.experts[static_cast<size_t>(k)])
          by_group[static_cast<size_t>(e / n)] += r->expert_assignments[static_cast<size_t>(e)];
        const double* t = times.data() + (k * L + l) * 3;
        ranks.push_back({{"rank", k},
                         {"experts", here.experts[static_cast<size_t>(k)]},
                         {"tokens", by_group},
                         {"flops", flops[static_cast<size_t>(k)]},
                         {"compute_ms", t[0]},
                         {"comm_ms", t[1]},
                         {"comm_bytes", static_cast<int64_t>(t[2])}});
      }
      rec["ranks"] = ranks;
      rec["imbalance"] = load_imbalance(flops);
    }
    // An adaptive run also shows what static All-size would give for the same routing.
    if (own.ok() && own.value().kind == "all-size-adaptive" && fixed.ok()) {
      rec["imbalance_all_size"] =
          load_imbalance(placement_rank_flops(fixed.value(), spec, r->expert_assignments));
    }
    rec["imbalance_group_per_rank"] =
        naive.ok()
            ? json(load_imbalance(placement_rank_flops(naive.value(), spec, r->expert_assignments)))
            : json(nullptr);
    layers.push_back(rec);
  }
  return layers;
}

}  // namespace mohge
