// Parameter structs of every op behind the Backend interface (kernels/backend.hpp).
//
// Shape legend (used in every shape comment of kernels/ and worker/model/):
//   B batch (sequences), T tokens per sequence, N = B·T tokens, D model width, V vocab,
//   H heads, hd = D/H head width, G groups, n experts per group, E routed experts (G·n for
//   MoHGE, `experts` for uniform MoE), K experts kept per token (top_experts), Kg groups kept
//   per token, M = N·K token-expert assignments, W an expert's hidden width.
// All tensors are fp32, row-major, contiguous unless a leading dimension (ld*) says otherwise.
// Pointers marked "in" are read, "out" overwritten, "acc" accumulated into (+=).
// This header stays light: the CUDA backend's .cu files include it.
#pragma once

#include <cstdint>
#include <vector>

namespace mohge {

/// The arithmetic of a backend's GEMMs (`train.precision`). Everything else — weights,
/// gradients, optimizer state, activations between ops, reductions — is fp32 in both.
enum class Precision : int32_t {
  kFp32 = 0,  // fp32 inputs, fp32 accumulation
  kBf16 = 1,  // inputs rounded to bf16 (nearest even), fp32 accumulation and output
};

/// C(m,n) = alpha · op(A) · op(B) + beta · C, row-major. op(X) = X or Xᵀ.
struct GemmParams {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;  // in: (m,k) or (k,m) if trans_a
  int64_t lda = 0;
  const float* b = nullptr;  // in: (k,n) or (n,k) if trans_b
  int64_t ldb = 0;
  float beta = 0.0f;
  float* c = nullptr;  // in/out: (m,n)
  int64_t ldc = 0;
};

struct EmbeddingParams {
  int64_t num_tokens = 0;           // N
  int64_t dim = 0;                  // D
  int64_t vocab = 0;                // V
  const int32_t* tokens = nullptr;  // in: (N)
  const float* table = nullptr;     // in: (V, D)            forward
  float* out = nullptr;             // out: (N, D)           forward
  const float* d_out = nullptr;     // in: (N, D)            backward
  float* d_table = nullptr;         // acc: (V, D)           backward
};

/// y = x / sqrt(mean(x²) + eps) · w, per row.
struct RmsNormParams {
  int64_t rows = 0;  // N
  int64_t dim = 0;   // D
  float eps = 1e-5f;
  const float* x = nullptr;       // in: (N, D)
  const float* weight = nullptr;  // in: (D)
  float* y = nullptr;             // out: (N, D)             forward
  float* rstd = nullptr;          // out (forward) / in (backward): (N)
  const float* d_y = nullptr;     // in: (N, D)              backward
  float* d_x = nullptr;           // acc: (N, D)             backward (adds: residual stream)
  float* d_weight = nullptr;      // acc: (D)                backward
};

/// Causal multi-head attention with Hugging Face Llama RoPE applied to q and k.
/// qkv rows hold [q (D) | k (D) | v (D)]; head h owns columns [h·hd, (h+1)·hd) of each.
struct AttentionParams {
  int64_t batch = 0;     // B
  int64_t seq = 0;       // T
  int64_t heads = 0;     // H
  int64_t head_dim = 0;  // hd
  float rope_base = 10000.0f;
  float* qkv = nullptr;          // in/out: (N, 3D); forward rotates q,k in place (RoPE)
  float* probs = nullptr;        // out (fwd) / in (bwd): (B, H, T, T) softmax probabilities
  float* out = nullptr;          // out: (N, D)             forward
  const float* d_out = nullptr;  // in: (N, D)            backward
  float* d_qkv = nullptr;        // out: (N, 3D)            backward (w.r.t. the un-rotated q,k,v)
  float* scratch = nullptr;      // (threads, T, T)         backward scratch (dP per head)
};

/// h = silu(a[:, :W]) ⊙ a[:, W:], the SwiGLU gate on a fused gate|up activation.
struct SwigluParams {
  int64_t rows = 0;
  int64_t width = 0;                // W
  const float* act = nullptr;       // in: (rows, 2W)
  float* hidden = nullptr;          // out: (rows, W)          forward
  const float* d_hidden = nullptr;  // in: (rows, W)       backward
  float* d_act = nullptr;           // out: (rows, 2W)         backward
};

/// Mean next-token cross-entropy over rows whose target is >= 0.
struct CrossEntropyParams {
  int64_t rows = 0;                  // N
  int64_t vocab = 0;                 // V
  const int32_t* targets = nullptr;  // in: (N); -1 = ignored
  float* logits = nullptr;           // in (fwd); overwritten by d_logits (bwd): (N, V)
  float* lse = nullptr;              // out (fwd) / in (bwd): (N) log-sum-exp
  float* losses = nullptr;           // out: (N) per-token loss (0 for ignored rows)
  float grad_scale = 1.0f;           // bwd: d_logits = (softmax - onehot) · grad_scale
};

enum class RouterKind : int32_t {
  kMohgePaper = 0,      // DESIGN.md §4 "paper semantics"
  kMohgeReference = 1,  // DESIGN.md §4 "reference-code semantics"
  kMoeSoftmax = 2,      // uniform MoE: softmax over E, top-K, weights = kept probabilities
};

enum class GroupLossKind : int32_t {
  kPaper = 0,      // weights W_g/W_max, p from GS_g / Σ_j GS_j
  kReference = 1,  // weights (W_g - W_min + 1024)/1024, p from softmax over group logits
};

enum class ExpertLossKind : int32_t {
  kPaper = 0,      // intra-group (eqs. 11-14)
  kReference = 1,  // global switch loss over all E experts on the normalised scores
};

/// Routing of one MoE/MoHGE layer. For MoHGE the logits row is [G group logits | E expert
/// logits] with expert e = g·n + i; for uniform MoE it is [E expert logits] and G = 1.
struct RouterParams {
  RouterKind kind = RouterKind::kMohgePaper;
  int64_t num_tokens = 0;                // N (this rank's tokens)
  int32_t num_groups = 1;                // G
  int32_t experts_per_group = 1;         // n
  int32_t top_groups = 1;                // Kg
  int32_t top_experts = 1;               // K
  const float* logits = nullptr;         // in: (N, G+E) mohge, (N, E) moe
  const float* expert_bias = nullptr;    // in: (E) added to the experts' selection scores
                                         //   only, not to the weights (aux-loss-free
                                         //   balance); null: none
  int32_t* topk_index = nullptr;         // out (fwd) / in (bwd): (N, K) kept expert ids,
                                         //   descending score, ties to the lower id
  float* topk_weight = nullptr;          // out: (N, K) combine weights
  uint8_t* group_selected = nullptr;     // out (fwd) / in (bwd): (N, G) 1 if the group is kept
  const float* d_topk_weight = nullptr;  // in: (N, K)  backward
  float* d_logits = nullptr;             // out: (N, G+E) or (N, E)  backward (includes aux grads)
};

/// Auxiliary load losses of one layer. Counts are over `total_tokens` tokens (all ranks'
/// tokens of the step when distributed), so f_g and f_{g,i} are global constants.
struct RouterAuxParams {
  GroupLossKind group_loss = GroupLossKind::kPaper;
  ExpertLossKind expert_loss = ExpertLossKind::kPaper;
  float alpha_group = 0.0f;              // α_G (MoHGE; 0 disables L_G)
  float alpha_expert = 0.0f;             // α_E (MoHGE L_E) or α of the MoE switch loss
  float eps = 1e-6f;                     // ε of eq. 14
  double total_tokens = 0;               // T in eqs. 8-14
  const float* group_cost = nullptr;     // in: (G) W_g/W_max (paper) or the reference weights
  const double* group_count = nullptr;   // in: (G) #tokens that kept group g
  const double* expert_count = nullptr;  // in: (E) #tokens that kept expert e
};

/// Values of the auxiliary losses contributed by this rank's tokens (sum over ranks = loss).
struct RouterAuxValues {
  double group = 0.0;   // L_G
  double expert = 0.0;  // L_E (MoHGE) or the switch loss (MoE)
};

/// Where every token-expert assignment lands in the expert-sorted buffer (kernels/backend.hpp:
/// it owns backend memory).
struct DispatchPlan;

struct DispatchParams {
  int64_t dim = 0;  // D
  const DispatchPlan* plan = nullptr;
  const float* x = nullptr;           // in: (N, D)              dispatch forward
  float* x_sorted = nullptr;          // out: (M, D)             dispatch forward
  const float* d_x_sorted = nullptr;  // in: (M, D)            dispatch backward
  float* d_x = nullptr;               // acc: (N, D)             dispatch backward
};

struct CombineParams {
  int64_t dim = 0;  // D
  const DispatchPlan* plan = nullptr;
  const float* weight = nullptr;    // in: (N, K) combine weights
  const float* y_sorted = nullptr;  // in: (M, D) expert outputs
  float* y = nullptr;               // acc: (N, D)             combine forward
  const float* d_y = nullptr;       // in: (N, D)              combine backward
  float* d_y_sorted = nullptr;      // out: (M, D)             combine backward
  float* d_weight = nullptr;        // out: (N, K)             combine backward
};

/// One SwiGLU FFN applied to a contiguous slice of rows: y = down(silu(gate x) ⊙ up x).
/// gate_proj and up_proj are stored adjacently, so w_gate_up is the fused (2W, D) matrix.
struct ExpertSlice {
  int64_t rows = 0;                  // rows of this slice (tokens routed to the expert)
  int64_t width = 0;                 // W
  const float* x = nullptr;          // in: (rows, D)
  const float* w_gate_up = nullptr;  // in: (2W, D)
  const float* w_down = nullptr;     // in: (D, W)
  float* act = nullptr;              // out (fwd) / in (bwd): (rows, 2W) gate|up pre-activations
  float* hidden = nullptr;           // out (fwd) / in (bwd): (rows, W)
  float* y = nullptr;                // out: (rows, D)          forward
  const float* d_y = nullptr;        // in: (rows, D)           backward
  float* d_x = nullptr;              // out: (rows, D)          backward (overwritten)
  float* d_act = nullptr;            // scratch: (rows, 2W)     backward
  float* d_hidden = nullptr;         // scratch: (rows, W)      backward
  float* d_w_gate_up = nullptr;      // acc: (2W, D)            backward
  float* d_w_down = nullptr;         // acc: (D, W)             backward
};

/// Heterogeneous grouped experts: every slice (experts of different widths, shared experts,
/// a dense FFN) runs in one pass; the backend schedules the GEMMs of all slices together.
struct GroupedSwigluParams {
  int64_t dim = 0;  // D
  ExpertSlice* slices = nullptr;
  int64_t num_slices = 0;
};

/// AdamW on one flat parameter range (PyTorch semantics: decoupled weight decay).
struct AdamWParams {
  int64_t size = 0;
  float* param = nullptr;       // in/out
  const float* grad = nullptr;  // in
  float* exp_avg = nullptr;     // in/out
  float* exp_avg_sq = nullptr;  // in/out
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;         // 1-based step for bias correction
  float grad_scale = 1.0f;  // gradients are multiplied by this (clipping)
};

}  // namespace mohge
