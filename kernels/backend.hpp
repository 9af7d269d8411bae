// The compute backend interface. Every op the model runs goes through it, so a CUDA backend
// can implement the same interface and be tested against the CPU one (ggml's pattern).
//
// Thread safety: a Backend is used by one training thread at a time; ops parallelise
// internally. Determinism: for a fixed thread count every op gives bit-identical results.
// Pointers passed to ops live in memory returned by allocate() of the same backend.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.hpp"

namespace mohge {

class Backend {
 public:
  virtual ~Backend() = default;

  /// "cpu" or "cuda".
  virtual std::string name() const = 0;
  /// Compute threads the backend uses (CPU) or 1 (GPU).
  virtual int num_threads() const = 0;
  /// The arithmetic of its GEMMs.
  virtual Precision precision() const = 0;

  // ---- memory --------------------------------------------------------------------------
  /// Returns zero-filled memory of `bytes` bytes (64-byte aligned); throws on failure.
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr) = 0;
  virtual void copy_to_host(void* dst_host, const void* src, size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* src_host, size_t bytes) = 0;
  virtual void fill_zero(float* data, int64_t count) = 0;
  /// dst = src (device memory, non-overlapping).
  virtual void copy(float* dst, const float* src, int64_t count) = 0;
  /// Waits for queued work (no-op on CPU).
  virtual void synchronize() = 0;
  /// The queue the backend's ops run on (a cudaStream_t for CUDA; null on CPU): a device
  /// communicator enqueues its transfers there, after the ops that produce their data.
  virtual void* stream() { return nullptr; }

  // ---- dense linear algebra and elementwise ------------------------------------------------
  virtual void gemm(const GemmParams& p) = 0;
  /// y += alpha · x
  virtual void axpy(int64_t count, float alpha, const float* x, float* y) = 0;
  /// x *= alpha
  virtual void scale(int64_t count, float alpha, float* x) = 0;
  /// Σ x², accumulated in double in a fixed order.
  virtual double sum_squares(int64_t count, const float* x) = 0;

  // ---- transformer ops ---------------------------------------------------------------------
  virtual void embedding_forward(const EmbeddingParams& p) = 0;
  virtual void embedding_backward(const EmbeddingParams& p) = 0;
  virtual void rmsnorm_forward(const RmsNormParams& p) = 0;
  virtual void rmsnorm_backward(const RmsNormParams& p) = 0;
  virtual void attention_forward(const AttentionParams& p) = 0;
  virtual void attention_backward(const AttentionParams& p) = 0;
  virtual void swiglu_forward(const SwigluParams& p) = 0;
  virtual void swiglu_backward(const SwigluParams& p) = 0;
  /// Fills lse and losses; returns the sum of per-token losses over non-ignored rows.
  virtual double cross_entropy_forward(const CrossEntropyParams& p) = 0;
  /// Overwrites logits with d_logits.
  virtual void cross_entropy_backward(const CrossEntropyParams& p) = 0;

  // ---- MoE / MoHGE ---------------------------------------------------------------------
  virtual void router_forward(const RouterParams& p) = 0;
  /// Adds this rank's selection counts: group_count (G) and expert_count (E).
  virtual void router_count(const RouterParams& p, double* group_count, double* expert_count) = 0;
  /// This rank's share of the auxiliary losses (counts in `aux` are global).
  virtual RouterAuxValues router_aux_forward(const RouterParams& p, const RouterAuxParams& aux) = 0;
  /// d_logits from d_topk_weight plus the auxiliary-loss gradients.
  virtual void router_backward(const RouterParams& p, const RouterAuxParams& aux) = 0;
  /// out[i] = table[in[i]] for i < count (expert ids → exchange slots). An id outside
  /// [0, table_size) maps to -1, which dispatch_plan then refuses.
  virtual void remap_index(const int32_t* in, int64_t count, const int32_t* table,
                           int32_t table_size, int32_t* out) = 0;
  /// Builds the expert-sorted placement of all (token, k) assignments (stable by token).
  virtual void dispatch_plan(const int32_t* topk_index, int64_t num_tokens, int32_t top_k,
                             int32_t num_experts, DispatchPlan* plan) = 0;
  virtual void dispatch_forward(const DispatchParams& p) = 0;
  virtual void dispatch_backward(const DispatchParams& p) = 0;
  virtual void combine_forward(const CombineParams& p) = 0;
  virtual void combine_backward(const CombineParams& p) = 0;
  virtual void grouped_swiglu_forward(const GroupedSwigluParams& p) = 0;
  virtual void grouped_swiglu_backward(const GroupedSwigluParams& p) = 0;

  // ---- optimizer -----------------------------------------------------------------------
  virtual void adamw_update(const AdamWParams& p) = 0;
};

/// The CPU backend (oneDNN GEMM, OpenMP). num_threads <= 0 means all cores. kBf16 needs
/// cpu_bf16_available().
std::unique_ptr<Backend> make_cpu_backend(int num_threads, Precision precision = Precision::kFp32);

/// True when this CPU runs oneDNN's bf16 matmul natively (avx512_bf16 or AMX).
bool cpu_bf16_available(std::string* why_not);

/// A visible GPU, as the CUDA runtime describes it.
struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int64_t memory_bytes = 0;
  std::string pci_bus_id;  // "dddd:bb:dd.0", as NVML names the same GPU
};

/// The GPUs this process sees (none without CUDA in the build or a driver).
std::vector<CudaDeviceInfo> cuda_devices();

/// True when this build has the CUDA backend and a GPU is visible.
bool cuda_backend_available(std::string* why_not);

/// The CUDA backend on GPU `device` (one stream); needs cuda_backend_available(). Throws when
/// the build has no CUDA.
std::unique_ptr<Backend> make_cuda_backend(int device, Precision precision = Precision::kFp32);

/// A typed buffer owned by a backend (RAII). Zero-filled on creation.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend& backend, int64_t count)
      : backend_(&backend),
        data_(static_cast<T*>(backend.allocate(sizeof(T) * static_cast<size_t>(count)))),
        count_(count) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      backend_ = o.backend_;
      data_ = o.data_;
      count_ = o.count_;
      o.backend_ = nullptr;
      o.data_ = nullptr;
      o.count_ = 0;
    }
    return *this;
  }
  ~Buffer() { release(); }

  /// Reallocates (zero-filled) when the count changes; keeps the buffer otherwise.
  void resize(Backend& backend, int64_t count) {
    if (backend_ == &backend && count == count_) return;
    *this = Buffer(backend, count);
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return count_; }

 private:
  void release() {
    if (data_ != nullptr) backend_->deallocate(data_);
    data_ = nullptr;
  }
  Backend* backend_ = nullptr;
  T* data_ = nullptr;
  int64_t count_ = 0;
};

/// Where every token-expert assignment lands in the expert-sorted buffer. The offsets are on
/// the host, where they size the expert GEMMs and the token exchange (a backend whose memory
/// is elsewhere copies them back: one E+1 transfer per layer); the per-row maps stay in the
/// backend's memory, where dispatch and combine read them.
struct DispatchPlan {
  int64_t num_tokens = 0;               // N
  int32_t top_k = 0;                    // K
  int32_t num_experts = 0;              // E
  std::vector<int64_t> expert_offsets;  // host (E+1): rows of expert e are [off[e], off[e+1])
  Buffer<int64_t> position;             // backend (N, K): sorted row of assignment (t, k)
  Buffer<int32_t> sorted_token;         // backend (M): source token of each sorted row

  int64_t rows() const { return num_tokens * top_k; }  // M
};

}  // namespace mohge
