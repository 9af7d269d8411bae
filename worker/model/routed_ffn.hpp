// RoutedFfn: the MoHGE and uniform-MoE feed-forward block (see routed_ffn.cpp).
#pragma once

#include <vector>

#include "worker/model/ffn.hpp"

namespace mohge {

class RoutedFfn final : public FeedForward {
 public:
  RoutedFfn(const ModelSpec& spec, int layer, Backend& backend, ParamStore& params);

  void forward(const float* x, float* y, int64_t num_tokens, const FfnStepOptions& opt) override;
  void backward(const float* x, const float* dy, float* dx, int64_t num_tokens,
                FfnWorkspace& ws) override;
  const LayerRouting* routing() const override { return &routing_; }
  bool routing_decisions(std::vector<int32_t>* index, std::vector<float>* weight) const override;
  int64_t expert_params() const override;

 private:
  struct ExpertParams {
    int gate_up = -1;  // gate_proj (W, D) followed by up_proj (W, D): the fused (2W, D)
    int down = -1;     // (D, W)
    int64_t width = 0;
  };

  RouterParams router_params(int64_t num_tokens);
  // Points one ExpertSlice per routed expert (rows from the dispatch plan) and per shared
  // expert (all rows) at this step's activation storage.
  void build_slices(int64_t num_tokens, const float* x);

  Backend& be_;
  ParamStore& ps_;
  FfnSpec f_;
  int64_t dim_;  // D
  bool mohge_ = false;
  int router_param_ = -1;              // (G+E, D) mohge: group_gate then expert_gate; (E, D) moe
  int64_t logits_width_ = 0;           // G+E or E
  std::vector<ExpertParams> experts_;  // (E)
  std::vector<ExpertParams> shared_;   // (S)
  std::vector<float> group_cost_;      // (G) weights of L_G

  // Forward state kept for backward.
  Buffer<float> logits_;            // (N, G+E)
  Buffer<int32_t> topk_index_;      // (N, K)
  Buffer<float> topk_weight_;       // (N, K)
  Buffer<uint8_t> group_selected_;  // (N, G)
  DispatchPlan plan_;
  Buffer<float> x_sorted_;              // (M, D)
  Buffer<float> y_sorted_;              // (M, D)
  Buffer<float> act_;                   // (Σ rows·2W) routed then shared
  Buffer<float> hidden_;                // (Σ rows·W)
  Buffer<float> shared_y_;              // (S, N, D)
  std::vector<ExpertSlice> slices_;     // (E + S)
  std::vector<int64_t> act_offset_;     // (E + S)
  std::vector<int64_t> hidden_offset_;  // (E + S)
  std::vector<double> group_count_;     // (G)
  std::vector<double> expert_count_;    // (E)
  RouterAuxParams aux_;
  LayerRouting routing_;
  int64_t last_tokens_ = 0;  // N of the last forward
};

}  // namespace mohge
