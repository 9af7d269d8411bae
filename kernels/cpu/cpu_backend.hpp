// The CPU backend: oneDNN's sgemm for every GEMM, OpenMP for the rest. It is both the
// reference every other backend is tested against and the no-GPU fallback.
#pragma once

#include "kernels/backend.hpp"

namespace mohge {

class CpuBackend final : public Backend {
 public:
  /// num_threads <= 0: all cores.
  CpuBackend(int num_threads, Precision precision);

  std::string name() const override { return "cpu"; }
  int num_threads() const override { return num_threads_; }
  Precision precision() const override { return precision_; }

  void* allocate(size_t bytes) override;
  void deallocate(void* ptr) override;
  void copy_to_host(void* dst_host, const void* src, size_t bytes) override;
  void copy_from_host(void* dst, const void* src_host, size_t bytes) override;
  void fill_zero(float* data, int64_t count) override;
  void copy(float* dst, const float* src, int64_t count) override;
  void synchronize() override {}

  void gemm(const GemmParams& p) override;
  void axpy(int64_t count, float alpha, const float* x, float* y) override;
  void scale(int64_t count, float alpha, float* x) override;
  double sum_squares(int64_t count, const float* x) override;

  void embedding_forward(const EmbeddingParams& p) override;
  void embedding_backward(const EmbeddingParams& p) override;
  void rmsnorm_forward(const RmsNormParams& p) override;
  void rmsnorm_backward(const RmsNormParams& p) override;
  void attention_forward(const AttentionParams& p) override;
  void attention_backward(const AttentionParams& p) override;
  void swiglu_forward(const SwigluParams& p) override;
  void swiglu_backward(const SwigluParams& p) override;
  double cross_entropy_forward(const CrossEntropyParams& p) override;
  void cross_entropy_backward(const CrossEntropyParams& p) override;

  void router_forward(const RouterParams& p) override;
  void router_count(const RouterParams& p, double* group_count, double* expert_count) override;
  RouterAuxValues router_aux_forward(const RouterParams& p, const RouterAuxParams& aux) override;
  void router_backward(const RouterParams& p, const RouterAuxParams& aux) override;
  void remap_index(const int32_t* in, int64_t count, const int32_t* table, int32_t table_size,
                   int32_t* out) override;
  void dispatch_plan(const int32_t* topk_index, int64_t num_tokens, int32_t top_k,
                     int32_t num_experts, DispatchPlan* plan) override;
  void dispatch_forward(const DispatchParams& p) override;
  void dispatch_backward(const DispatchParams& p) override;
  void combine_forward(const CombineParams& p) override;
  void combine_backward(const CombineParams& p) override;
  void grouped_swiglu_forward(const GroupedSwigluParams& p) override;
  void grouped_swiglu_backward(const GroupedSwigluParams& p) override;

  void adamw_update(const AdamWParams& p) override;

 private:
  int num_threads_;
  Precision precision_;
};

/// A single-threaded GEMM for use inside an OpenMP region (row-major): oneDNN's sgemm, or its
/// bf16 matmul.
void cpu_gemm_serial(const GemmParams& p, Precision precision);

/// C = alpha·op(A)·op(B) + beta·C with A and B rounded to bf16 and fp32 accumulation (oneDNN
/// matmul), on `num_threads` threads (1: the calling thread only, as inside an OpenMP region).
void cpu_gemm_bf16(const GemmParams& p, int num_threads);

}  // namespace mohge
