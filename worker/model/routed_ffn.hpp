// RoutedFfn: the MoHGE and uniform-MoE feed-forward block (see routed_ffn.cpp).
#pragma once

#include <memory>
#include <vector>

#include "worker/dist/parallel.hpp"
#include "worker/dist/token_exchange.hpp"
#include "worker/model/ffn.hpp"

namespace mohge {

class RoutedFfn final : public FeedForward {
 public:
  /// Registers the router, the shared experts (replicated) and the routed experts this rank
  /// owns under `parallel` (all of them in a single process).
  RoutedFfn(const ModelSpec& spec, int layer, Backend& backend, ParamStore& params,
            const ParallelContext& parallel);

  void forward(const float* x, float* y, int64_t num_tokens, const FfnStepOptions& opt) override;
  void backward(const float* x, const float* dy, float* dx, int64_t num_tokens,
                FfnWorkspace& ws) override;
  const LayerRouting* routing() const override { return &routing_; }
  bool routing_decisions(std::vector<int32_t>* index, std::vector<float>* weight) const override;
  int64_t expert_params() const override;
  const LayerTimes* times() const override { return &times_; }
  void placement_changed() override;

 private:
  struct ExpertParams {
    int gate_up = -1;  // gate_proj (W, D) followed by up_proj (W, D): the fused (2W, D)
    int down = -1;     // (D, W)
    int64_t width = 0;
  };

  RouterParams router_params(int64_t num_tokens);
  // Points one ExpertSlice per owned expert (its rows in `rows_in`/`rows_out`, offsets
  // `offsets`) and per shared expert (all N rows of x) at this step's activation storage.
  void build_slices(int64_t num_tokens, const float* x, const float* rows_in, float* rows_out,
                    const std::vector<int64_t>& offsets);
  // Router counts summed over ranks (+ the global token count) and the aux-loss constants.
  void reduce_counts(int64_t num_tokens, const FfnStepOptions& opt);
  void record_routing();
  // balance "bias": moves each expert's selection bias by bias_rate against its load error
  // (group mean − its count; MoE: mean over all experts) of the last forward.
  void update_bias();

  Backend& be_;
  ParamStore& ps_;
  ParallelContext parallel_;
  int layer_ = 0;
  FfnSpec f_;
  int64_t dim_;  // D
  bool mohge_ = false;
  int router_param_ = -1;              // (G+E, D) mohge: group_gate then expert_gate; (E, D) moe
  int bias_param_ = -1;                // (E) balance "bias": selection bias (not trained)
  int64_t logits_width_ = 0;           // G+E or E
  std::vector<int> owned_;             // global ids of the routed experts held here
  std::vector<ExpertParams> experts_;  // (owned) parameters of the owned experts
  std::vector<ExpertParams> shared_;   // (S)
  std::vector<float> group_cost_;      // (G) weights of L_G
  std::unique_ptr<TokenExchange> exchange_;  // null in a single process

  // Forward state kept for backward.
  Buffer<float> logits_;                // (N, G+E)
  Buffer<int32_t> topk_index_;          // (N, K) global expert ids
  Buffer<int32_t> slot_of_expert_;      // (E) exchange slot of each expert (distributed only)
  Buffer<int32_t> slot_index_;          // (N, K) owner-major slots (distributed only)
  Buffer<float> topk_weight_;           // (N, K)
  Buffer<uint8_t> group_selected_;      // (N, G)
  DispatchPlan plan_;                   // over experts (single process) or slots (distributed)
  Buffer<float> x_sorted_;              // (M, D) this rank's rows in dispatch order
  Buffer<float> y_sorted_;              // (M, D)
  Buffer<float> x_local_;               // (L, D) rows this rank's experts compute (distributed)
  Buffer<float> y_local_;               // (L, D)
  Buffer<float> act_;                   // (Σ rows·2W) owned experts then shared
  Buffer<float> hidden_;                // (Σ rows·W)
  Buffer<float> shared_y_;              // (S, N, D)
  std::vector<ExpertSlice> slices_;     // (owned + S)
  std::vector<int64_t> act_offset_;     // (owned + S)
  std::vector<int64_t> hidden_offset_;  // (owned + S)
  std::vector<double> group_count_;     // (G) global
  std::vector<double> expert_count_;    // (E) global
  double global_tokens_ = 0;            // tokens of the step over all ranks
  RouterAuxParams aux_;
  LayerRouting routing_;
  LayerTimes times_;
  int64_t last_tokens_ = 0;  // N of the last forward
};

}  // namespace mohge
