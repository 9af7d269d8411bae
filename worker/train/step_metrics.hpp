// Per-step figures across the ranks of a job (DESIGN.md §7). Collective: every rank calls
// these with its own figures; every rank gets the totals (rank 0 writes them).
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "worker/dist/parallel.hpp"
#include "worker/model/transformer.hpp"

namespace mohge {

/// Loss totals of the step over all ranks.
struct StepLosses {
  double ce_loss = 0.0;    // mean over every rank's targets
  double targets = 0.0;    // all ranks' targets
  double aux_group = 0.0;  // Σ layers, all ranks' shares
  double aux_expert = 0.0;
  std::vector<double> layer_aux;  // (layers, 2) per routed layer: L_G, L_E (or switch)
};

/// Sums `local` (this rank's forward) and the per-layer aux shares over the ranks.
StepLosses step_losses_reduce(const ParallelContext& parallel, const Transformer& model,
                              const ForwardResult& local);

/// The per-layer routing record of the last forward+backward: group shares, expert
/// assignments, activated expert parameters, aux losses, and per rank the token-expert
/// assignments by group, expert FLOPs, compute_ms, comm_ms and comm_bytes; with the rank
/// imbalance (max/mean expert FLOPs) of this placement and what group-per-rank placement would
/// give for the same routing. Throws CollectiveError when the gather fails.
nlohmann::json step_layer_metrics(const ParallelContext& parallel, const Transformer& model,
                                  const StepLosses& losses);

}  // namespace mohge
