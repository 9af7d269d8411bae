// CUDA kernels of the dense transformer ops other than GEMMs and attention: vector ops,
// sum of squares, AdamW, embedding, RMSNorm, SwiGLU, cross-entropy, and the fp32 → bf16
// rounding of GEMM inputs. The formulas are the CPU backend's (kernels/cpu/), which the op
// suite (tests/kernels/test_backend_ops.cpp) compares them with on a GPU host.
//
// Determinism: no floating-point atomics. Reductions over rows use fixed chunks of rows whose
// partial sums are added in chunk order by one thread per output; reductions inside a row use
// a fixed tree over the block's threads.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/cuda_kernels.hpp"
#include "kernels/cuda/dispatch_math.hpp"

namespace mohge::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kRowChunk = 64;  // rows per partial weight-gradient sum, as the CPU backend

int blocks_for(int64_t n) {
  return static_cast<int>((n + kThreads - 1) / kThreads);
}

cudaStream_t as_stream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

// Σ of v over the block (kThreads threads), the same tree every time; every thread gets it.
template <class T>
__device__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const T total = shared[0];
  __syncthreads();
  return total;
}

__device__ float sigmoidf_(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__global__ void axpy_kernel(int64_t n, float alpha, const float* x, float* y) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) y[i] += alpha * x[i];
}

__global__ void scale_kernel(int64_t n, float alpha, float* x) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) x[i] *= alpha;
}

// One block per chunk of kSquaresChunk elements: its Σ x² in double.
constexpr int64_t kSquaresChunk = 1 << 14;
__global__ void sum_squares_kernel(int64_t n, const float* x, double* partial) {
  __shared__ double shared[kThreads];
  const int64_t begin = blockIdx.x * kSquaresChunk;
  const int64_t end = min(n, begin + kSquaresChunk);
  double s = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) s += double(x[i]) * x[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void adamw_kernel(AdamWParams p, float bias1, float bias2, float decay) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= p.size) return;
  const float g = p.grad[i] * p.grad_scale;
  const float m = p.beta1 * p.exp_avg[i] + (1.0f - p.beta1) * g;
  const float v = p.beta2 * p.exp_avg_sq[i] + (1.0f - p.beta2) * g * g;
  p.exp_avg[i] = m;
  p.exp_avg_sq[i] = v;
  const float denom = sqrtf(v / bias2) + p.eps;
  p.param[i] = p.param[i] * decay - p.lr * (m / bias1) / denom;
}

__global__ void embedding_forward_kernel(EmbeddingParams p, int* failed) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= p.num_tokens * p.dim) return;
  const int64_t t = i / p.dim, c = i % p.dim;
  const int32_t tok = p.tokens[t];
  if (tok < 0 || tok >= p.vocab) {
    atomicExch(failed, 1);
    return;
  }
  p.out[i] = p.table[int64_t{tok} * p.dim + c];
}

// One thread per column: walks the tokens in order (deterministic, as the CPU backend).
__global__ void embedding_backward_kernel(EmbeddingParams p) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= p.dim) return;
  for (int64_t t = 0; t < p.num_tokens; ++t)
    p.d_table[int64_t{p.tokens[t]} * p.dim + c] += p.d_out[t * p.dim + c];
}

// One block per row.
__global__ void rmsnorm_forward_kernel(RmsNormParams p) {
  __shared__ float shared[kThreads];
  const int64_t r = blockIdx.x, D = p.dim;
  const float* x = p.x + r * D;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < D; c += kThreads) ss += x[c] * x[c];
  ss = block_sum(ss, shared);
  const float rstd = rsqrtf(ss / static_cast<float>(D) + p.eps);
  if (threadIdx.x == 0) p.rstd[r] = rstd;
  for (int64_t c = threadIdx.x; c < D; c += kThreads) p.y[r * D + c] = x[c] * rstd * p.weight[c];
}

// One block per row: dx (accumulated, the residual stream).
__global__ void rmsnorm_backward_dx_kernel(RmsNormParams p) {
  __shared__ float shared[kThreads];
  const int64_t r = blockIdx.x, D = p.dim;
  const float* x = p.x + r * D;
  const float* dy = p.d_y + r * D;
  const float rstd = p.rstd[r];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < D; c += kThreads) dot += dy[c] * p.weight[c] * x[c];
  dot = block_sum(dot, shared);
  const float k = dot * rstd * rstd * rstd / static_cast<float>(D);
  for (int64_t c = threadIdx.x; c < D; c += kThreads)
    p.d_x[r * D + c] += rstd * dy[c] * p.weight[c] - x[c] * k;
}

// One thread per (chunk, column): Σ over the chunk's rows of dy·x·rstd.
__global__ void rmsnorm_backward_dw_partial_kernel(RmsNormParams p, float* partial) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t chunks = (p.rows + kRowChunk - 1) / kRowChunk;
  if (i >= chunks * p.dim) return;
  const int64_t ch = i / p.dim, c = i % p.dim;
  float s = 0.0f;
  for (int64_t r = ch * kRowChunk; r < min(p.rows, (ch + 1) * kRowChunk); ++r)
    s += p.d_y[r * p.dim + c] * p.x[r * p.dim + c] * p.rstd[r];
  partial[i] = s;
}

__global__ void sum_partials_kernel(const float* partial, int64_t chunks, int64_t width,
                                    float* acc) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= width) return;
  float s = acc[c];
  for (int64_t ch = 0; ch < chunks; ++ch) s += partial[ch * width + c];
  acc[c] = s;
}

__global__ void swiglu_forward_kernel(SwigluParams p) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= p.rows * p.width) return;
  const int64_t r = i / p.width, c = i % p.width, W = p.width;
  const float g = p.act[r * 2 * W + c], u = p.act[r * 2 * W + W + c];
  p.hidden[i] = g * sigmoidf_(g) * u;
}

__global__ void swiglu_backward_kernel(SwigluParams p) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= p.rows * p.width) return;
  const int64_t r = i / p.width, c = i % p.width, W = p.width;
  const float g = p.act[r * 2 * W + c], u = p.act[r * 2 * W + W + c], s = sigmoidf_(g);
  const float dh = p.d_hidden[i];
  p.d_act[r * 2 * W + c] = dh * u * s * (1.0f + g * (1.0f - s));
  p.d_act[r * 2 * W + W + c] = dh * g * s;
}

// One block per row: each thread's strided share of the vocabulary, merged in a fixed tree.
__global__ void cross_entropy_forward_kernel(CrossEntropyParams p, int* failed) {
  __shared__ float smax[kThreads];
  __shared__ float ssum[kThreads];
  const int64_t r = blockIdx.x, V = p.vocab;
  const float* z = p.logits + r * V;
  const int64_t count = (V - threadIdx.x + kThreads - 1) / kThreads;
  device::MaxSum mine = device::lse_block(z, threadIdx.x, count > 0 ? count : 0, kThreads);
  smax[threadIdx.x] = mine.max;
  ssum[threadIdx.x] = mine.sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const device::MaxSum m =
          device::lse_merge({smax[threadIdx.x], ssum[threadIdx.x]},
                            {smax[threadIdx.x + stride], ssum[threadIdx.x + stride]});
      smax[threadIdx.x] = m.max;
      ssum[threadIdx.x] = m.sum;
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  const float lse = device::lse_value({smax[0], ssum[0]});
  p.lse[r] = lse;
  const int32_t tgt = p.targets[r];
  if (tgt >= V) atomicExch(failed, 1);
  p.losses[r] = tgt < 0 || tgt >= V ? 0.0f : lse - z[tgt];
}

__global__ void cross_entropy_backward_kernel(CrossEntropyParams p) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= p.rows * p.vocab) return;
  const int64_t r = i / p.vocab, v = i % p.vocab;
  const int32_t tgt = p.targets[r];
  if (tgt < 0) {
    p.logits[i] = 0.0f;
    return;
  }
  const float d = expf(p.logits[i] - p.lse[r]) * p.grad_scale;
  p.logits[i] = v == tgt ? d - p.grad_scale : d;
}

// Rows × cols of a strided fp32 matrix into a dense bf16 one, round to nearest even.
__global__ void pack_bf16_kernel(const float* src, int64_t rows, int64_t cols, int64_t ld,
                                 __nv_bfloat16* dst) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= rows * cols) return;
  dst[i] = __float2bfloat16_rn(src[(i / cols) * ld + i % cols]);
}

}  // namespace

void launch_axpy(int64_t n, float alpha, const float* x, float* y, void* stream) {
  if (n > 0) axpy_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(n, alpha, x, y);
}

void launch_scale(int64_t n, float alpha, float* x, void* stream) {
  if (n > 0) scale_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(n, alpha, x);
}

int64_t sum_squares_chunks(int64_t n) {
  return (n + kSquaresChunk - 1) / kSquaresChunk;
}

void launch_sum_squares(int64_t n, const float* x, double* partial, void* stream) {
  const int64_t chunks = sum_squares_chunks(n);
  if (chunks > 0)
    sum_squares_kernel<<<static_cast<int>(chunks), kThreads, 0, as_stream(stream)>>>(n, x, partial);
}

void launch_adamw(const AdamWParams& p, void* stream) {
  if (p.size == 0) return;
  const float bias1 = 1.0f - std::pow(p.beta1, static_cast<float>(p.step));
  const float bias2 = 1.0f - std::pow(p.beta2, static_cast<float>(p.step));
  const float decay = 1.0f - p.lr * p.weight_decay;
  adamw_kernel<<<blocks_for(p.size), kThreads, 0, as_stream(stream)>>>(p, bias1, bias2, decay);
}

void launch_embedding_forward(const EmbeddingParams& p, int* failed, void* stream) {
  const int64_t n = p.num_tokens * p.dim;
  if (n > 0) embedding_forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(p, failed);
}

void launch_embedding_backward(const EmbeddingParams& p, void* stream) {
  if (p.dim > 0)
    embedding_backward_kernel<<<blocks_for(p.dim), kThreads, 0, as_stream(stream)>>>(p);
}

void launch_rmsnorm_forward(const RmsNormParams& p, void* stream) {
  if (p.rows > 0)
    rmsnorm_forward_kernel<<<static_cast<int>(p.rows), kThreads, 0, as_stream(stream)>>>(p);
}

int64_t rmsnorm_partial_floats(int64_t rows, int64_t dim) {
  return (rows + kRowChunk - 1) / kRowChunk * dim;
}

void launch_rmsnorm_backward(const RmsNormParams& p, float* partial, void* stream) {
  if (p.rows == 0) return;
  cudaStream_t st = as_stream(stream);
  rmsnorm_backward_dx_kernel<<<static_cast<int>(p.rows), kThreads, 0, st>>>(p);
  const int64_t chunks = (p.rows + kRowChunk - 1) / kRowChunk;
  rmsnorm_backward_dw_partial_kernel<<<blocks_for(chunks * p.dim), kThreads, 0, st>>>(p, partial);
  sum_partials_kernel<<<blocks_for(p.dim), kThreads, 0, st>>>(partial, chunks, p.dim, p.d_weight);
}

void launch_swiglu_forward(const SwigluParams& p, void* stream) {
  const int64_t n = p.rows * p.width;
  if (n > 0) swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(p);
}

void launch_swiglu_backward(const SwigluParams& p, void* stream) {
  const int64_t n = p.rows * p.width;
  if (n > 0) swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(p);
}

void launch_cross_entropy_forward(const CrossEntropyParams& p, int* failed, void* stream) {
  if (p.rows > 0)
    cross_entropy_forward_kernel<<<static_cast<int>(p.rows), kThreads, 0, as_stream(stream)>>>(
        p, failed);
}

void launch_cross_entropy_backward(const CrossEntropyParams& p, void* stream) {
  const int64_t n = p.rows * p.vocab;
  if (n > 0) cross_entropy_backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(p);
}

void launch_pack_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, void* dst,
                      void* stream) {
  const int64_t n = rows * cols;
  if (n > 0) {
    pack_bf16_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
        src, rows, cols, ld, static_cast<__nv_bfloat16*>(dst));
  }
}

}  // namespace mohge::cuda
