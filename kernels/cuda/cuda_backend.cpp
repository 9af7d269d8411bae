// The CUDA backend (DESIGN.md §13): one device and one stream per backend (a rank); cuBLAS for
// the dense GEMMs and the attention's batched GEMMs; cublasGemmGroupedBatchedEx for the
// heterogeneous experts (one grouped call per projection, all widths, zero-row experts left
// out); the kernels of kernels/cuda/*.cu for everything else.
//
// Host synchronisation inside a step, each because a value must come back to the host:
//   - copy_to_host (by definition) and copy_from_host (the host buffer may go away);
//   - embedding_forward: the out-of-vocabulary flag (one int);
//   - cross_entropy_forward: the sum of the per-token losses (N floats, summed in order);
//   - sum_squares: its chunk partials (a few doubles), for the gradient norm;
//   - router_forward: the impossible-shape flag; router_count: G + E counts;
//     router_aux_forward: G + E p-term sums;
//   - dispatch_plan: the E+1 expert offsets (they size the expert GEMMs and the exchange)
//     and the id-range flag;
//   - each grouped GEMM call: its pointer arrays are uploaded from the host (3 pointers per
//     expert; pinned, asynchronous uploads would remove this one).
// Determinism: for a fixed device, every op gives the same bits run after run (no
// floating-point atomics; ordered partial sums), as long as cuBLAS picks the same algorithms
// (CUBLAS_WORKSPACE_CONFIG is not needed: no split-K atomics are requested).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "kernels/backend.hpp"
#include "kernels/check.hpp"
#include "kernels/cuda/cuda_kernels.hpp"
#include "kernels/cuda/router_math.hpp"

namespace mohge {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  MOHGE_CHECK(e == cudaSuccess, what << ": " << cudaGetErrorString(e));
}

void check_blas(cublasStatus_t s, const char* what) {
  MOHGE_CHECK(s == CUBLAS_STATUS_SUCCESS, what << ": cuBLAS status " << static_cast<int>(s));
}

// A device buffer that grows and is kept (scratch of one op at a time; the stream orders use).
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  void* get(size_t bytes) {
    if (bytes > size_) {
      // Work queued earlier may still read the old buffer.
      check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      if (ptr_ != nullptr) check_cuda(cudaFree(ptr_), "cudaFree");
      ptr_ = nullptr;
      size_ = 0;
      check_cuda(cudaMalloc(&ptr_, bytes + bytes / 4), "cudaMalloc (scratch)");
      size_ = bytes + bytes / 4;
    }
    return ptr_;
  }
  template <class T>
  T* as(int64_t count) {
    return static_cast<T*>(get(sizeof(T) * static_cast<size_t>(std::max<int64_t>(count, 1))));
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, Precision precision) : device_(device), precision_(precision) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_blas(cublasCreate(&blas_), "cublasCreate");
    check_blas(cublasSetStream(blas_, stream_), "cublasSetStream");
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  int num_threads() const override { return 1; }
  Precision precision() const override { return precision_; }

  // ---- memory ------------------------------------------------------------------------------
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    const size_t rounded = std::max<size_t>((bytes + 255) / 256 * 256, 256);
    if (cudaMalloc(&p, rounded) != cudaSuccess) throw std::bad_alloc();
    check_cuda(cudaMemsetAsync(p, 0, rounded, stream_), "cudaMemsetAsync");
    return p;
  }
  void deallocate(void* ptr) override {
    cudaStreamSynchronize(stream_);
    cudaFree(ptr);
  }
  void copy_to_host(void* dst_host, const void* src, size_t bytes) override {
    check_cuda(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, stream_),
               "copy to host");
    synchronize();
  }
  void copy_from_host(void* dst, const void* src_host, size_t bytes) override {
    check_cuda(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, stream_),
               "copy from host");
    synchronize();
  }
  void fill_zero(float* data, int64_t count) override {
    if (count > 0)
      check_cuda(cudaMemsetAsync(data, 0, sizeof(float) * static_cast<size_t>(count), stream_),
                 "fill_zero");
  }
  void copy(float* dst, const float* src, int64_t count) override {
    if (count > 0)
      check_cuda(cudaMemcpyAsync(dst, src, sizeof(float) * static_cast<size_t>(count),
                                 cudaMemcpyDeviceToDevice, stream_),
                 "copy");
  }
  void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "synchronize"); }
  void* stream() override { return stream_; }

  // ---- dense -------------------------------------------------------------------------------
  void gemm(const GemmParams& p) override {
    MOHGE_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0, "gemm dims " << p.m << "x" << p.n << "x" << p.k);
    if (p.m == 0 || p.n == 0) return;
    if (p.k == 0) {  // C = beta·C
      for (int64_t i = 0; i < p.m; ++i) {
        if (p.beta == 0.0f) {
          fill_zero(p.c + i * p.ldc, p.n);
        } else {
          cuda::launch_scale(p.n, p.beta, p.c + i * p.ldc, stream_);
        }
      }
      return;
    }
    // Row-major C (m×n) is column-major Cᵀ (n×m): Cᵀ = op(B)ᵀ·op(A)ᵀ.
    const cublasOperation_t op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasComputeType_t compute =
        precision_ == Precision::kBf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    check_blas(
        cublasGemmEx(blas_, op_b, op_a, static_cast<int>(p.n), static_cast<int>(p.m),
                     static_cast<int>(p.k), &p.alpha, p.b, CUDA_R_32F, static_cast<int>(p.ldb), p.a,
                     CUDA_R_32F, static_cast<int>(p.lda), &p.beta, p.c, CUDA_R_32F,
                     static_cast<int>(p.ldc), compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
  }
  void axpy(int64_t count, float alpha, const float* x, float* y) override {
    cuda::launch_axpy(count, alpha, x, y, stream_);
  }
  void scale(int64_t count, float alpha, float* x) override {
    cuda::launch_scale(count, alpha, x, stream_);
  }
  double sum_squares(int64_t count, const float* x) override {
    const int64_t chunks = cuda::sum_squares_chunks(count);
    if (chunks == 0) return 0.0;
    double* partial = scratch_a_.as<double>(chunks);
    cuda::launch_sum_squares(count, x, partial, stream_);
    std::vector<double> host(static_cast<size_t>(chunks));
    copy_to_host(host.data(), partial, sizeof(double) * host.size());
    double total = 0.0;
    for (const double v : host) total += v;
    return total;
  }

  // ---- transformer ops ---------------------------------------------------------------------
  void embedding_forward(const EmbeddingParams& p) override {
    int* failed = reset_flag();
    cuda::launch_embedding_forward(p, failed, stream_);
    MOHGE_CHECK(!read_flag(failed), "a token outside vocab " << p.vocab);
  }
  void embedding_backward(const EmbeddingParams& p) override {
    cuda::launch_embedding_backward(p, stream_);
  }
  void rmsnorm_forward(const RmsNormParams& p) override {
    cuda::launch_rmsnorm_forward(p, stream_);
  }
  void rmsnorm_backward(const RmsNormParams& p) override {
    cuda::launch_rmsnorm_backward(
        p, scratch_a_.as<float>(cuda::rmsnorm_partial_floats(p.rows, p.dim)), stream_);
  }
  void attention_forward(const AttentionParams& p) override {
    const int64_t T = p.seq, H = p.heads, hd = p.head_dim, D = H * hd, ld = 3 * D;
    MOHGE_CHECK(hd % 2 == 0, "head_dim " << hd << " must be even for RoPE");
    cuda::launch_rope(p.qkv, ld, p.batch * T, T, H, hd, p.rope_base, 1.0f, stream_);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    for (int64_t b = 0; b < p.batch; ++b) {
      const float* q = p.qkv + b * T * ld;
      float* probs = p.probs + b * H * T * T;
      // S_h = scale·Q_h·K_hᵀ for every head h (strided batch over heads).
      batched({.trans_a = false,
               .trans_b = true,
               .m = T,
               .n = T,
               .k = hd,
               .alpha = scale,
               .a = q,
               .lda = ld,
               .b = q + D,
               .ldb = ld,
               .beta = 0.0f,
               .c = probs,
               .ldc = T},
              hd, hd, T * T, H);
      cuda::launch_causal_softmax(probs, H * T, T, stream_);
      // O_h = P_h·V_h
      batched({.trans_a = false,
               .trans_b = false,
               .m = T,
               .n = hd,
               .k = T,
               .alpha = 1.0f,
               .a = probs,
               .lda = T,
               .b = q + 2 * D,
               .ldb = ld,
               .beta = 0.0f,
               .c = p.out + b * T * D,
               .ldc = D},
              T * T, hd, hd, H);
    }
  }
  void attention_backward(const AttentionParams& p) override {
    const int64_t T = p.seq, H = p.heads, hd = p.head_dim, D = H * hd, ld = 3 * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    float* dS = scratch_b_.as<float>(H * T * T);
    for (int64_t b = 0; b < p.batch; ++b) {
      const float* q = p.qkv + b * T * ld;
      const float* k = q + D;
      const float* v = q + 2 * D;
      float* dq = p.d_qkv + b * T * ld;
      float* dk = dq + D;
      float* dv = dq + 2 * D;
      const float* P = p.probs + b * H * T * T;
      const float* dO = p.d_out + b * T * D;
      // dP = dO·Vᵀ ; dV = Pᵀ·dO
      batched({.trans_a = false,
               .trans_b = true,
               .m = T,
               .n = T,
               .k = hd,
               .alpha = 1.0f,
               .a = dO,
               .lda = D,
               .b = v,
               .ldb = ld,
               .beta = 0.0f,
               .c = dS,
               .ldc = T},
              hd, hd, T * T, H);
      batched({.trans_a = true,
               .trans_b = false,
               .m = T,
               .n = hd,
               .k = T,
               .alpha = 1.0f,
               .a = P,
               .lda = T,
               .b = dO,
               .ldb = D,
               .beta = 0.0f,
               .c = dv,
               .ldc = ld},
              T * T, hd, hd, H);
      cuda::launch_causal_softmax_backward(P, dS, H * T, T, stream_);
      // dQ = scale·dS·K ; dK = scale·dSᵀ·Q
      batched({.trans_a = false,
               .trans_b = false,
               .m = T,
               .n = hd,
               .k = T,
               .alpha = scale,
               .a = dS,
               .lda = T,
               .b = k,
               .ldb = ld,
               .beta = 0.0f,
               .c = dq,
               .ldc = ld},
              T * T, hd, hd, H);
      batched({.trans_a = true,
               .trans_b = false,
               .m = T,
               .n = hd,
               .k = T,
               .alpha = scale,
               .a = dS,
               .lda = T,
               .b = q,
               .ldb = ld,
               .beta = 0.0f,
               .c = dk,
               .ldc = ld},
              T * T, hd, hd, H);
    }
    cuda::launch_rope(p.d_qkv, ld, p.batch * T, T, H, hd, p.rope_base, -1.0f, stream_);
  }
  void swiglu_forward(const SwigluParams& p) override { cuda::launch_swiglu_forward(p, stream_); }
  void swiglu_backward(const SwigluParams& p) override { cuda::launch_swiglu_backward(p, stream_); }
  double cross_entropy_forward(const CrossEntropyParams& p) override {
    int* failed = reset_flag();
    cuda::launch_cross_entropy_forward(p, failed, stream_);
    MOHGE_CHECK(!read_flag(failed), "a target outside vocab " << p.vocab);
    std::vector<float> losses(static_cast<size_t>(p.rows));
    if (!losses.empty()) copy_to_host(losses.data(), p.losses, sizeof(float) * losses.size());
    double total = 0.0;
    for (const float l : losses) total += l;
    return total;
  }
  void cross_entropy_backward(const CrossEntropyParams& p) override {
    cuda::launch_cross_entropy_backward(p, stream_);
  }

  // ---- MoE / MoHGE ---------------------------------------------------------------------------
  void router_forward(const RouterParams& p) override {
    const device::RouterShape s = device::router_shape(p);
    MOHGE_CHECK(s.top_experts <= s.experts() && s.top_groups <= s.groups,
                "top-k larger than the candidates");
    int* failed = reset_flag();
    cuda::launch_router_forward(p, router_scratch(p), router_flags(p), failed, stream_);
    MOHGE_CHECK(!read_flag(failed), "top_experts must not exceed top_groups·experts_per_group");
  }
  void router_count(const RouterParams& p, double* group_count, double* expert_count) override {
    const int64_t G = p.num_groups, E = int64_t{p.num_groups} * p.experts_per_group;
    auto* counts = scratch_a_.as<unsigned long long>(G + E);
    check_cuda(cudaMemsetAsync(counts, 0, sizeof(unsigned long long) * static_cast<size_t>(G + E),
                               stream_),
               "router_count");
    cuda::launch_router_count(p, counts, counts + G, stream_);
    std::vector<unsigned long long> host(static_cast<size_t>(G + E));
    copy_to_host(host.data(), counts, sizeof(unsigned long long) * host.size());
    for (int64_t g = 0; g < G; ++g) group_count[g] += static_cast<double>(host[g]);
    for (int64_t e = 0; e < E; ++e) expert_count[e] += static_cast<double>(host[G + e]);
  }
  RouterAuxValues router_aux_forward(const RouterParams& p, const RouterAuxParams& aux) override {
    const device::RouterShape s = device::router_shape(p);
    const int64_t width = s.groups + s.experts();
    double* partial = scratch_a_.as<double>(cuda::router_aux_chunks(p.num_tokens) * width + width);
    double* psum = partial + cuda::router_aux_chunks(p.num_tokens) * width;
    cuda::launch_router_aux_terms(p, aux, router_scratch(p), router_flags(p), partial, psum,
                                  stream_);
    std::vector<double> host(static_cast<size_t>(width), 0.0);
    if (p.num_tokens > 0) copy_to_host(host.data(), psum, sizeof(double) * host.size());
    return device::router_aux_values(s, aux, host.data(), host.data() + s.groups);
  }
  void router_backward(const RouterParams& p, const RouterAuxParams& aux) override {
    const device::RouterShape s = device::router_shape(p);
    std::vector<float> constants(static_cast<size_t>(s.groups + s.experts()));
    device::router_aux_constants(s, aux, constants.data(), constants.data() + s.groups);
    float* ag = scratch_a_.as<float>(static_cast<int64_t>(constants.size()));
    copy_from_host(ag, constants.data(), sizeof(float) * constants.size());
    cuda::launch_router_backward(p, aux, ag, ag + s.groups, router_scratch(p), router_flags(p),
                                 stream_);
  }
  void remap_index(const int32_t* in, int64_t count, const int32_t* table, int32_t table_size,
                   int32_t* out) override {
    cuda::launch_remap_index(in, count, table, table_size, out, stream_);
  }
  void dispatch_plan(const int32_t* topk_index, int64_t num_tokens, int32_t top_k,
                     int32_t num_experts, DispatchPlan* plan) override {
    const int64_t M = num_tokens * top_k, chunks = cuda::dispatch_chunks(M);
    plan->num_tokens = num_tokens;
    plan->top_k = top_k;
    plan->num_experts = num_experts;
    plan->position.resize(*this, M);
    plan->sorted_token.resize(*this, M);
    auto* counts = scratch_a_.as<int64_t>(2 * chunks * num_experts + num_experts + 1);
    int64_t* base = counts + chunks * num_experts;
    int64_t* offsets = base + chunks * num_experts;
    int* failed = reset_flag();
    cuda::launch_dispatch_plan(topk_index, M, top_k, num_experts, counts, base, offsets,
                               plan->position.data(), plan->sorted_token.data(), failed, stream_);
    MOHGE_CHECK(!read_flag(failed), "an expert id outside [0," << num_experts << ")");
    plan->expert_offsets.resize(static_cast<size_t>(num_experts) + 1);
    copy_to_host(plan->expert_offsets.data(), offsets,
                 sizeof(int64_t) * plan->expert_offsets.size());
  }
  void dispatch_forward(const DispatchParams& p) override {
    cuda::launch_dispatch_forward(p.plan->rows(), p.dim, p.plan->sorted_token.data(), p.x,
                                  p.x_sorted, stream_);
  }
  void dispatch_backward(const DispatchParams& p) override {
    cuda::launch_dispatch_backward(p.plan->num_tokens, p.plan->top_k, p.dim,
                                   p.plan->position.data(), p.d_x_sorted, p.d_x, stream_);
  }
  void combine_forward(const CombineParams& p) override {
    cuda::launch_combine_forward(p.plan->num_tokens, p.plan->top_k, p.dim, p.plan->position.data(),
                                 p.weight, p.y_sorted, p.y, stream_);
  }
  void combine_backward(const CombineParams& p) override {
    cuda::launch_combine_backward(p.plan->num_tokens, p.plan->top_k, p.dim, p.plan->position.data(),
                                  p.weight, p.y_sorted, p.d_y, p.d_y_sorted, p.d_weight, stream_);
  }

  void grouped_swiglu_forward(const GroupedSwigluParams& p) override {
    const int64_t D = p.dim;
    Grouped g1, g2;
    for (int64_t i = 0; i < p.num_slices; ++i) {
      const ExpertSlice& s = p.slices[i];
      if (s.rows == 0) continue;
      // act = x·W_guᵀ ; hidden = swiglu(act) ; y = hidden·W_downᵀ
      g1.add({.trans_a = false,
              .trans_b = true,
              .m = s.rows,
              .n = 2 * s.width,
              .k = D,
              .a = s.x,
              .lda = D,
              .b = s.w_gate_up,
              .ldb = D,
              .c = s.act,
              .ldc = 2 * s.width});
      g2.add({.trans_a = false,
              .trans_b = true,
              .m = s.rows,
              .n = D,
              .k = s.width,
              .a = s.hidden,
              .lda = s.width,
              .b = s.w_down,
              .ldb = s.width,
              .c = s.y,
              .ldc = D});
    }
    run_grouped(g1);
    for (int64_t i = 0; i < p.num_slices; ++i) {
      const ExpertSlice& s = p.slices[i];
      if (s.rows > 0)
        cuda::launch_swiglu_forward(
            {.rows = s.rows, .width = s.width, .act = s.act, .hidden = s.hidden}, stream_);
    }
    run_grouped(g2);
  }
  void grouped_swiglu_backward(const GroupedSwigluParams& p) override {
    const int64_t D = p.dim;
    Grouped dh, dx, dwd, dwgu;
    for (int64_t i = 0; i < p.num_slices; ++i) {
      const ExpertSlice& s = p.slices[i];
      if (s.rows == 0) continue;
      const int64_t W = s.width;
      // dH = dY·W_down ; dA = swiglu'(A, dH) ; dX = dA·W_gu
      dh.add({.trans_a = false,
              .trans_b = false,
              .m = s.rows,
              .n = W,
              .k = D,
              .a = s.d_y,
              .lda = D,
              .b = s.w_down,
              .ldb = W,
              .c = s.d_hidden,
              .ldc = W});
      dx.add({.trans_a = false,
              .trans_b = false,
              .m = s.rows,
              .n = D,
              .k = 2 * W,
              .a = s.d_act,
              .lda = 2 * W,
              .b = s.w_gate_up,
              .ldb = D,
              .c = s.d_x,
              .ldc = D});
      // dW_down += dYᵀ·H ; dW_gu += dAᵀ·X
      dwd.add({.trans_a = true,
               .trans_b = false,
               .m = D,
               .n = W,
               .k = s.rows,
               .a = s.d_y,
               .lda = D,
               .b = s.hidden,
               .ldb = W,
               .beta = 1.0f,
               .c = s.d_w_down,
               .ldc = W});
      dwgu.add({.trans_a = true,
                .trans_b = false,
                .m = 2 * W,
                .n = D,
                .k = s.rows,
                .a = s.d_act,
                .lda = 2 * W,
                .b = s.x,
                .ldb = D,
                .beta = 1.0f,
                .c = s.d_w_gate_up,
                .ldc = D});
    }
    run_grouped(dh);
    for (int64_t i = 0; i < p.num_slices; ++i) {
      const ExpertSlice& s = p.slices[i];
      if (s.rows > 0)
        cuda::launch_swiglu_backward({.rows = s.rows,
                                      .width = s.width,
                                      .act = s.act,
                                      .d_hidden = s.d_hidden,
                                      .d_act = s.d_act},
                                     stream_);
    }
    run_grouped(dx);
    run_grouped(dwd);
    run_grouped(dwgu);
  }

  void adamw_update(const AdamWParams& p) override { cuda::launch_adamw(p, stream_); }

 private:
  // One grouped GEMM call: every problem its own group (of size 1), row-major like gemm().
  struct Grouped {
    std::vector<cublasOperation_t> op_a, op_b;  // cuBLAS's A and B (our B and A)
    std::vector<int> m, n, k, lda, ldb, ldc, size;
    std::vector<float> alpha, beta;
    std::vector<const void*> a, b;
    std::vector<void*> c;
    void add(const GemmParams& p) {
      op_a.push_back(p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
      op_b.push_back(p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
      m.push_back(static_cast<int>(p.n));
      n.push_back(static_cast<int>(p.m));
      k.push_back(static_cast<int>(p.k));
      a.push_back(p.b);
      lda.push_back(static_cast<int>(p.ldb));
      b.push_back(p.a);
      ldb.push_back(static_cast<int>(p.lda));
      c.push_back(p.c);
      ldc.push_back(static_cast<int>(p.ldc));
      alpha.push_back(p.alpha);
      beta.push_back(p.beta);
      size.push_back(1);
    }
  };

  // The pointer arrays go to the device (cuBLAS reads them there); the rest stays on the host.
  // In bf16, A and B are packed to bf16 first (the grouped call takes bf16 inputs with fp32
  // C and compute), each problem's operands densely in one scratch buffer.
  void run_grouped(Grouped& g) {
    const int count = static_cast<int>(g.m.size());
    if (count == 0) return;
    cudaDataType_t in_type = CUDA_R_32F;
    if (precision_ == Precision::kBf16) {
      in_type = CUDA_R_16BF;
      int64_t total = 0;
      for (int i = 0; i < count; ++i) {
        total += int64_t{g.m[i]} * g.k[i] + int64_t{g.k[i]} * g.n[i];
      }
      auto* packed = static_cast<uint16_t*>(scratch_b_.get(sizeof(uint16_t) * total));
      int64_t at = 0;
      for (int i = 0; i < count; ++i) {
        pack(g.a[i], g.op_a[i], g.m[i], g.k[i], g.lda[i], packed + at);
        g.a[i] = packed + at;
        at += int64_t{g.m[i]} * g.k[i];
        pack(g.b[i], g.op_b[i], g.k[i], g.n[i], g.ldb[i], packed + at);
        g.b[i] = packed + at;
        at += int64_t{g.k[i]} * g.n[i];
      }
    }
    auto** pointers = scratch_c_.as<void*>(3 * count);
    std::vector<const void*> host(static_cast<size_t>(3 * count));
    std::copy(g.a.begin(), g.a.end(), host.begin());
    std::copy(g.b.begin(), g.b.end(), host.begin() + count);
    std::copy(g.c.begin(), g.c.end(), host.begin() + 2 * count);
    copy_from_host(pointers, host.data(), sizeof(void*) * host.size());
    check_blas(cublasGemmGroupedBatchedEx(
                   blas_, g.op_a.data(), g.op_b.data(), g.m.data(), g.n.data(), g.k.data(),
                   g.alpha.data(), reinterpret_cast<const void* const*>(pointers), in_type,
                   g.lda.data(), reinterpret_cast<const void* const*>(pointers + count), in_type,
                   g.ldb.data(), g.beta.data(), pointers + 2 * count, CUDA_R_32F, g.ldc.data(),
                   count, g.size.data(), CUBLAS_COMPUTE_32F),
               "cublasGemmGroupedBatchedEx");
  }

  // Packs column-major X (rows×cols of op(X)) to dense bf16 with the same orientation; the
  // caller's leading dimension becomes the dense one, written back through `ld`.
  void pack(const void* src, cublasOperation_t op, int rows, int cols, int& ld, uint16_t* dst) {
    // Column-major X with op N is rows×cols (ld ≥ rows): as row-major it is cols rows of `rows`
    // values; with op T, X is cols×rows: `rows` rows of `cols` values.
    const int64_t r = op == CUBLAS_OP_N ? cols : rows, c = op == CUBLAS_OP_N ? rows : cols;
    cuda::launch_pack_bf16(static_cast<const float*>(src), r, c, ld, dst, stream_);
    ld = static_cast<int>(c);
  }

  // C_h = alpha·op(A_h)·op(B_h) + beta·C_h for h < count, the operands `stride_*` floats apart
  // (row-major like gemm()).
  void batched(const GemmParams& p, int64_t stride_a, int64_t stride_b, int64_t stride_c,
               int64_t count) {
    const cublasComputeType_t compute =
        precision_ == Precision::kBf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    check_blas(
        cublasGemmStridedBatchedEx(
            blas_, p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
            static_cast<int>(p.n), static_cast<int>(p.m), static_cast<int>(p.k), &p.alpha, p.b,
            CUDA_R_32F, static_cast<int>(p.ldb), stride_b, p.a, CUDA_R_32F, static_cast<int>(p.lda),
            stride_a, &p.beta, p.c, CUDA_R_32F, static_cast<int>(p.ldc), stride_c,
            static_cast<int>(count), compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
  }

  int* reset_flag() {
    int* flag = flag_.as<int>(1);
    check_cuda(cudaMemsetAsync(flag, 0, sizeof(int), stream_), "flag");
    return flag;
  }
  bool read_flag(const int* flag) {
    int v = 0;
    copy_to_host(&v, flag, sizeof v);
    return v != 0;
  }
  float* router_scratch(const RouterParams& p) {
    return router_floats_.as<float>(
        cuda::router_scratch_floats(p, std::max<int64_t>(p.num_tokens, 1)));
  }
  uint8_t* router_flags(const RouterParams& p) {
    return router_bytes_.as<uint8_t>(
        cuda::router_scratch_flags(p, std::max<int64_t>(p.num_tokens, 1)));
  }

  int device_;
  Precision precision_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  Scratch scratch_a_, scratch_b_, scratch_c_, flag_, router_floats_, router_bytes_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, Precision precision) {
  return std::make_unique<CudaBackend>(device, precision);
}

}  // namespace mohge
