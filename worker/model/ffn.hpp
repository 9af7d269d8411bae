// Feed-forward blocks of the transformer: dense SwiGLU, uniform MoE, and MoHGE.
//
// Shape legend: N tokens, D model width, G groups, n experts per group, E routed experts,
// K experts kept per token, M = N·K assignments, W an expert's hidden width.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "api/job_spec.hpp"
#include "kernels/backend.hpp"
#include "worker/dist/parallel.hpp"
#include "worker/model/params.hpp"

namespace mohge {

/// What one MoE/MoHGE layer's router did on the last forward pass.
struct LayerRouting {
  std::vector<double> group_tokens;        // (G) tokens that kept group g (MoHGE)
  std::vector<double> expert_assignments;  // (E) tokens routed to expert e
  std::vector<double> group_assignments;   // (G) assignments landing in group g (MoE: G = 1)
  double num_tokens = 0;
  double activated_expert_params = 0;  // per token: routed (measured) + shared
  double aux_group = 0;                // L_G of this layer (0 for MoE)
  double aux_expert = 0;               // L_E (MoHGE) or the switch loss (MoE)
};

/// Where the last forward+backward of a layer spent its time on this rank.
struct LayerTimes {
  double compute_ms = 0;   // router, experts, dispatch/combine copies
  double comm_ms = 0;      // token exchange with the other ranks
  int64_t comm_bytes = 0;  // bytes this rank sent in those exchanges
};

/// Per-step switches of the FFN.
struct FfnStepOptions {
  bool group_loss_on = true;  // L_G on (off before model.ffn.group_loss_start)
};

/// Gradient scratch shared by all layers (backward runs one layer at a time).
struct FfnWorkspace {
  Buffer<float> d_y_sorted;  // (M, D)
  Buffer<float> d_x_sorted;  // (M, D)
  Buffer<float> d_act;       // (Σ rows·2W)
  Buffer<float> d_hidden;    // (Σ rows·W)
  Buffer<float> d_x;         // (S+1, N, D) data gradients of shared experts / dense FFN
  Buffer<float> d_logits;    // (N, G+E)
  Buffer<float> d_weight;    // (N, K)
  Buffer<float> d_y_local;   // (L, D) output gradients at the experts' owner (distributed)
  Buffer<float> d_x_local;   // (L, D)
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  /// y (N, D) += ffn(x (N, D)). Keeps what backward() needs until the next forward.
  virtual void forward(const float* x, float* y, int64_t num_tokens, const FfnStepOptions& opt) = 0;
  /// dx (N, D) += ∂(y·dy)/∂x; parameter gradients accumulate into the ParamStore.
  /// Includes the gradients of this layer's auxiliary losses.
  virtual void backward(const float* x, const float* dy, float* dx, int64_t num_tokens,
                        FfnWorkspace& ws) = 0;
  /// nullptr for dense layers.
  virtual const LayerRouting* routing() const { return nullptr; }
  /// Host copies of the last forward's kept experts (N, K) and combine weights (N, K);
  /// false for dense layers.
  virtual bool routing_decisions(std::vector<int32_t>* index, std::vector<float>* weight) const {
    return false;
  }
  /// Expert parameters held by this layer on this rank (owned routed + shared; the whole
  /// FFN for dense).
  virtual int64_t expert_params() const = 0;
  /// Timing of the last forward+backward; nullptr for dense layers.
  virtual const LayerTimes* times() const { return nullptr; }
  /// The placement this layer was built with changed (adaptive placement, between steps):
  /// each owned slot takes the name of the expert it holds now and the token exchange
  /// follows the new owners. Moving the values is the caller's (worker/dist/replace.hpp).
  virtual void placement_changed() {}
};

/// Name prefix of routed expert `expert` of layer `layer` (storage/FORMAT.md):
/// "model.layers.{l}.mlp.experts.{g}.{i}" (MoHGE, expert = g·n + i) or "….experts.{e}" (MoE).
std::string ffn_expert_name(const FfnSpec& ffn, int layer, int expert);

/// Registers the layer's parameters in `params` (names per storage/FORMAT.md) and returns
/// the block. Parameters must be allocated before the first forward. With a distributed
/// `parallel`, routed FFNs hold only this rank's experts and exchange tokens with the others.
std::unique_ptr<FeedForward> ffn_create(const ModelSpec& spec, int layer, Backend& backend,
                                        ParamStore& params, const ParallelContext& parallel = {});

}  // namespace mohge
