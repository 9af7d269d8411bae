// The decoder-only transformer of DESIGN.md §5 (conventions in storage/FORMAT.md):
//   x = embed(tokens);  per layer: h = x + attn(rmsnorm(x)),  x = h + ffn(rmsnorm(h));
//   logits = rmsnorm(x) · Wᵀ (W = embedding when tied, else lm_head);  loss = mean CE.
// The FFN is dense, uniform MoE or MoHGE (model.ffn.kind).
//
// Shape legend: B batch, T tokens per sequence (<= seq_len), N = B·T, D model width,
// V vocab, H heads, hd = D/H.
#pragma once

#include <memory>
#include <vector>

#include "api/job_spec.hpp"
#include "kernels/backend.hpp"
#include "worker/model/ffn.hpp"
#include "worker/model/params.hpp"

namespace mohge {

// With several ranks, each rank's ForwardResult covers its own tokens: the CE mean over its
// targets, and its share of the aux losses (the shares of all ranks sum to the losses).
struct ForwardResult {
  double ce_loss = 0.0;     // mean next-token cross-entropy over the targets
  double aux_group = 0.0;   // Σ over layers of L_G
  double aux_expert = 0.0;  // Σ over layers of L_E (MoHGE) or the switch loss (MoE)
  int64_t num_targets = 0;
  double total_loss() const { return ce_loss + aux_group + aux_expert; }
};

class Transformer {
 public:
  /// Registers and allocates every parameter (zero-valued; call initialize() or load them).
  /// With a distributed `parallel`, routed experts are those this rank owns.
  Transformer(const ModelSpec& spec, Backend& backend, const ParallelContext& parallel = {});
  ~Transformer();

  const ModelSpec& spec() const { return spec_; }
  ParamStore& params() { return params_; }
  Backend& backend() { return be_; }
  void initialize(uint64_t seed) { params_.initialize(seed); }

  /// tokens: (B, T) host int32 inputs; targets: (B, T) host int32 or nullptr (no loss).
  /// T may be shorter than seq_len (generation). Keeps activations for backward().
  ForwardResult forward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                        const FfnStepOptions& opt = {});
  /// Accumulates ∂(CE + aux)/∂θ into params().grad (zero them first). Requires a forward
  /// with targets; consumes the logits. The CE is averaged over `loss_tokens` targets (all
  /// ranks' targets when distributed; default: this forward's), so per-rank gradients sum to
  /// the gradient of the global loss.
  void backward(double loss_tokens = 0.0);

  /// (N, V) logits of the last forward; invalid after backward().
  const float* logits() const { return logits_.data(); }
  /// (N) per-token losses of the last forward with targets, copied to the host.
  std::vector<float> token_losses() const;
  /// Routing of each MoE/MoHGE layer in the last forward (nullptr for dense layers).
  std::vector<const LayerRouting*> routing() const;
  /// Layer `layer`'s FFN (routing_decisions() and the like).
  const FeedForward& ffn(int layer) const { return *layers_[static_cast<size_t>(layer)].ffn; }
  /// The placement's experts moved: every routed layer renames its slots and re-plans its
  /// exchange (FeedForward::placement_changed).
  void placement_changed() {
    for (auto& l : layers_) l.ffn->placement_changed();
  }

  int64_t total_params() const { return params_.total_size(); }
  /// Parameters of the FFN experts held on this rank (routed + shared), or of the dense FFNs.
  int64_t expert_params() const;
  /// Σ over layers of activated expert parameters per token in the last forward.
  double activated_expert_params() const;
  /// Model FLOPs per token of one forward+backward (3× the forward matmul FLOPs at the
  /// routing of the last forward; attention counted causally).
  double flops_per_token(int64_t seq) const;

 private:
  struct Layer {
    int ln1 = -1;  // input_layernorm (D)
    int qkv = -1;  // q_proj, k_proj, v_proj: the fused (3D, D)
    int o = -1;    // o_proj (D, D)
    int ln2 = -1;  // post_attention_layernorm (D)
    std::unique_ptr<FeedForward> ffn;
    // Activations, (N, D) unless noted.
    Buffer<float> x;  // residual stream entering the layer
    Buffer<float> ln1_out;
    Buffer<float> rstd1;    // (N)
    Buffer<float> qkv_out;  // (N, 3D), q and k rotated by RoPE
    Buffer<float> probs;    // (B, H, T, T)
    Buffer<float> attn;     // heads concatenated, before o_proj
    Buffer<float> h;        // residual after attention
    Buffer<float> ln2_out;
    Buffer<float> rstd2;  // (N)
  };

  void reserve(int64_t batch, int64_t seq);

  ModelSpec spec_;
  Backend& be_;
  ParamStore params_;
  int embed_ = -1;    // (V, D)
  int norm_ = -1;     // (D)
  int lm_head_ = -1;  // (V, D); == embed_ when tied
  std::vector<Layer> layers_;

  int64_t batch_ = 0, seq_ = 0;
  bool has_targets_ = false;
  Buffer<int32_t> tokens_;   // (N)
  Buffer<int32_t> targets_;  // (N)
  Buffer<float> x_final_;    // (N, D) residual stream after the last layer
  Buffer<float> lnf_out_;    // (N, D)
  Buffer<float> rstdf_;      // (N)
  Buffer<float> logits_;     // (N, V)
  Buffer<float> lse_;        // (N)
  Buffer<float> losses_;     // (N)
  // Backward scratch.
  Buffer<float> d_res_;     // (N, D) gradient of the residual stream
  Buffer<float> d_a_;       // (N, D)
  Buffer<float> d_b_;       // (N, D)
  Buffer<float> d_qkv_;     // (N, 3D)
  Buffer<float> d_scores_;  // (threads, T, T)
  FfnWorkspace ffn_ws_;
};

}  // namespace mohge
