// Launches of the CUDA backend's kernels (kernels/cuda/*.cu), callable from host C++ that
// does not include CUDA headers: streams are passed as void* (a cudaStream_t). Every pointer
// is device memory unless its comment says host. Kernels only queue work; results that the
// host needs (a failure flag, counts, sums) are copied back by the caller, at a documented
// synchronisation point.
#pragma once

#include <cstdint>

#include "kernels/ops.hpp"

namespace mohge::cuda {

// ---- routers (cuda_router.cu) ------------------------------------------------------------
/// Scratch one router call needs for `tokens` tokens (floats, flag bytes).
int64_t router_scratch_floats(const RouterParams& p, int64_t tokens);
int64_t router_scratch_flags(const RouterParams& p, int64_t tokens);

/// topk_index, topk_weight and group_selected of every token; sets *failed to 1 when the
/// shape asks for more candidates than exist.
void launch_router_forward(const RouterParams& p, float* scratch, uint8_t* flags, int* failed,
                           void* stream);
/// Adds each token's kept groups (G) and experts (E) to the counts.
void launch_router_count(const RouterParams& p, unsigned long long* group_count,
                         unsigned long long* expert_count, void* stream);
/// Chunks of the aux-term partial sums for `tokens` tokens.
int64_t router_aux_chunks(int64_t tokens);
/// Σ over tokens of the aux p-terms into psum (G then E, double), through partial
/// (router_aux_chunks × (G + E) doubles) and scratch for one token per chunk.
void launch_router_aux_terms(const RouterParams& p, const RouterAuxParams& aux, float* scratch,
                             uint8_t* flags, double* partial, double* psum, void* stream);
/// d_logits of every token; ag (G) and be (E) are the aux constants (device copies).
void launch_router_backward(const RouterParams& p, const RouterAuxParams& aux, const float* ag,
                            const float* be, float* scratch, uint8_t* flags, void* stream);

// ---- dispatch plan (cuda_router.cu) ------------------------------------------------------
/// out[i] = table[in[i]], or -1 for an id outside [0, table_size).
void launch_remap_index(const int32_t* in, int64_t count, const int32_t* table, int32_t table_size,
                        int32_t* out, void* stream);
/// Chunks of the counting sort for `assignments` (N·K) assignments.
int64_t dispatch_chunks(int64_t assignments);
/// The plan's expert_offsets (E+1), position (N·K) and sorted_token (M), through counts and
/// base (dispatch_chunks × E each); *failed set to 1 (and nothing placed) when an id is
/// outside [0, E).
void launch_dispatch_plan(const int32_t* topk_index, int64_t assignments, int32_t top_k,
                          int32_t experts, int64_t* counts, int64_t* base, int64_t* expert_offsets,
                          int64_t* position, int32_t* sorted_token, int* failed, void* stream);

// ---- vector ops, optimizer, transformer ops (cuda_elementwise.cu) -------------------------
void launch_axpy(int64_t n, float alpha, const float* x, float* y, void* stream);
void launch_scale(int64_t n, float alpha, float* x, void* stream);
/// Σ x² per chunk of 2¹⁴ elements into partial (sum_squares_chunks doubles); the caller adds
/// them in order on the host (one copy back: the gradient norm's synchronisation point).
int64_t sum_squares_chunks(int64_t n);
void launch_sum_squares(int64_t n, const float* x, double* partial, void* stream);
void launch_adamw(const AdamWParams& p, void* stream);
/// *failed set to 1 for a token outside the vocabulary (its row is left as it was).
void launch_embedding_forward(const EmbeddingParams& p, int* failed, void* stream);
void launch_embedding_backward(const EmbeddingParams& p, void* stream);
void launch_rmsnorm_forward(const RmsNormParams& p, void* stream);
/// Floats of the weight-gradient partial sums for `rows` × `dim`.
int64_t rmsnorm_partial_floats(int64_t rows, int64_t dim);
void launch_rmsnorm_backward(const RmsNormParams& p, float* partial, void* stream);
void launch_swiglu_forward(const SwigluParams& p, void* stream);
void launch_swiglu_backward(const SwigluParams& p, void* stream);
/// lse and losses per row (one block per row over the whole vocabulary, no V×N host copy);
/// *failed set to 1 for a target ≥ V. The sum of losses is the caller's (host) reduction.
void launch_cross_entropy_forward(const CrossEntropyParams& p, int* failed, void* stream);
void launch_cross_entropy_backward(const CrossEntropyParams& p, void* stream);
/// rows × cols of a strided fp32 matrix into dense bf16 (nearest even) at dst.
void launch_pack_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, void* dst,
                      void* stream);

// ---- attention and token permutation (cuda_attention_moe.cu) ------------------------------
/// RoPE on the first 2·heads head-vectors (q then k) of every row: +θ (direction 1) or -θ.
void launch_rope(float* rows, int64_t ld, int64_t n_rows, int64_t seq, int64_t heads,
                 int64_t head_dim, float base, float direction, void* stream);
/// Causal softmax in place over `rows` rows (B·H·T) of T scores each.
void launch_causal_softmax(float* probs, int64_t rows, int64_t seq, void* stream);
/// d (dP in, dS out) = P ⊙ (dP − rowsum(dP ⊙ P)), causal.
void launch_causal_softmax_backward(const float* probs, float* d, int64_t rows, int64_t seq,
                                    void* stream);
void launch_dispatch_forward(int64_t rows, int64_t dim, const int32_t* sorted_token, const float* x,
                             float* x_sorted, void* stream);
void launch_dispatch_backward(int64_t tokens, int32_t top_k, int64_t dim, const int64_t* position,
                              const float* d_x_sorted, float* d_x, void* stream);
void launch_combine_forward(int64_t tokens, int32_t top_k, int64_t dim, const int64_t* position,
                            const float* weight, const float* y_sorted, float* y, void* stream);
void launch_combine_backward(int64_t tokens, int32_t top_k, int64_t dim, const int64_t* position,
                             const float* weight, const float* y_sorted, const float* d_y,
                             float* d_y_sorted, float* d_weight, void* stream);

}  // namespace mohge::cuda
