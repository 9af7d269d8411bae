// CUDA kernels around the attention's and the experts' GEMMs: RoPE, the causal softmax and its
// backward (one block per row of one head's scores), and the token permutation (dispatch)
// and weighted un-permutation (combine) of the MoE layers. The formulas are the CPU
// backend's (cpu_attention.cpp, cpu_experts.cpp).
//
// Determinism: each output element is written by one thread, summing in a fixed order (the
// K copies of a token in dispatch's backward and combine, a fixed tree inside a row).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_kernels.hpp"
#include "kernels/cuda/dispatch_math.hpp"

namespace mohge::cuda {

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  return static_cast<int>((n + kThreads - 1) / kThreads);
}

cudaStream_t as_stream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

__device__ float block_sum(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const float total = shared[0];
  __syncthreads();
  return total;
}

__device__ float block_max(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + stride]);
    __syncthreads();
  }
  const float total = shared[0];
  __syncthreads();
  return total;
}

// One thread per (row, head of q or k, pair i): rotate by +θ (direction 1) or -θ (-1).
__global__ void rope_kernel(float* rows, int64_t ld, int64_t n_rows, int64_t seq, int64_t heads,
                            int64_t head_dim, float base, float direction) {
  const int64_t half = head_dim / 2;
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n_rows * 2 * heads * half) return;
  const int64_t pair = i % half, v = (i / half) % (2 * heads), r = i / (half * 2 * heads);
  const float theta = static_cast<float>(r % seq) * device::rope_inv_freq(pair, head_dim, base);
  // cos/sin in double, rounded to float, as the CPU table.
  const float c = static_cast<float>(cos(static_cast<double>(theta)));
  const float s = direction * static_cast<float>(sin(static_cast<double>(theta)));
  float* x = rows + r * ld + v * head_dim;
  const float x1 = x[pair], x2 = x[pair + half];
  x[pair] = x1 * c - x2 * s;
  x[pair + half] = x2 * c + x1 * s;
}

// One block per row i of one (batch, head)'s T×T scores: causal softmax in place.
__global__ void causal_softmax_kernel(float* probs, int64_t T) {
  __shared__ float shared[kThreads];
  const int64_t row = blockIdx.x;  // over B·H·T
  const int64_t i = row % T;
  float* p = probs + row * T;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += kThreads) mx = fmaxf(mx, p[j]);
  mx = block_max(mx, shared);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j <= i; j += kThreads) {
    const float e = expf(p[j] - mx);
    p[j] = e;
    sum += e;
  }
  sum = block_sum(sum, shared);
  const float inv = 1.0f / sum;
  for (int64_t j = threadIdx.x; j < T; j += kThreads) p[j] = j <= i ? p[j] * inv : 0.0f;
}

// dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place of dP, causal.
__global__ void causal_softmax_backward_kernel(const float* probs, float* d, int64_t T) {
  __shared__ float shared[kThreads];
  const int64_t row = blockIdx.x;
  const int64_t i = row % T;
  const float* p = probs + row * T;
  float* g = d + row * T;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j <= i; j += kThreads) dot += g[j] * p[j];
  dot = block_sum(dot, shared);
  for (int64_t j = threadIdx.x; j < T; j += kThreads) g[j] = j <= i ? p[j] * (g[j] - dot) : 0.0f;
}

__global__ void dispatch_forward_kernel(int64_t rows, int64_t dim, const int32_t* sorted_token,
                                        const float* x, float* x_sorted) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= rows * dim) return;
  const int64_t r = i / dim, c = i % dim;
  x_sorted[i] = x[int64_t{sorted_token[r]} * dim + c];
}

__global__ void dispatch_backward_kernel(int64_t tokens, int32_t top_k, int64_t dim,
                                         const int64_t* position, const float* d_x_sorted,
                                         float* d_x) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= tokens * dim) return;
  const int64_t t = i / dim, c = i % dim;
  float s = d_x[i];
  for (int32_t k = 0; k < top_k; ++k) s += d_x_sorted[position[t * top_k + k] * dim + c];
  d_x[i] = s;
}

__global__ void combine_forward_kernel(int64_t tokens, int32_t top_k, int64_t dim,
                                       const int64_t* position, const float* weight,
                                       const float* y_sorted, float* y) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= tokens * dim) return;
  const int64_t t = i / dim, c = i % dim;
  float s = y[i];
  for (int32_t k = 0; k < top_k; ++k)
    s += weight[t * top_k + k] * y_sorted[position[t * top_k + k] * dim + c];
  y[i] = s;
}

// One block per assignment (t, k): d_y_sorted row = w·dy[t], d_weight = dy[t]·y_sorted row.
__global__ void combine_backward_kernel(int32_t top_k, int64_t dim, const int64_t* position,
                                        const float* weight, const float* y_sorted,
                                        const float* d_y, float* d_y_sorted, float* d_weight) {
  __shared__ float shared[kThreads];
  const int64_t a = blockIdx.x, t = a / top_k;
  const int64_t row = position[a];
  const float w = weight[a];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < dim; c += kThreads) {
    const float dy = d_y[t * dim + c];
    dot += dy * y_sorted[row * dim + c];
    d_y_sorted[row * dim + c] = w * dy;
  }
  dot = block_sum(dot, shared);
  if (threadIdx.x == 0) d_weight[a] = dot;
}

}  // namespace

void launch_rope(float* rows, int64_t ld, int64_t n_rows, int64_t seq, int64_t heads,
                 int64_t head_dim, float base, float direction, void* stream) {
  const int64_t n = n_rows * 2 * heads * (head_dim / 2);
  if (n > 0) {
    rope_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(rows, ld, n_rows, seq, heads,
                                                                   head_dim, base, direction);
  }
}

void launch_causal_softmax(float* probs, int64_t rows, int64_t seq, void* stream) {
  if (rows > 0)
    causal_softmax_kernel<<<static_cast<int>(rows), kThreads, 0, as_stream(stream)>>>(probs, seq);
}

void launch_causal_softmax_backward(const float* probs, float* d, int64_t rows, int64_t seq,
                                    void* stream) {
  if (rows > 0) {
    causal_softmax_backward_kernel<<<static_cast<int>(rows), kThreads, 0, as_stream(stream)>>>(
        probs, d, seq);
  }
}

void launch_dispatch_forward(int64_t rows, int64_t dim, const int32_t* sorted_token, const float* x,
                             float* x_sorted, void* stream) {
  const int64_t n = rows * dim;
  if (n > 0) {
    dispatch_forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
        rows, dim, sorted_token, x, x_sorted);
  }
}

void launch_dispatch_backward(int64_t tokens, int32_t top_k, int64_t dim, const int64_t* position,
                              const float* d_x_sorted, float* d_x, void* stream) {
  const int64_t n = tokens * dim;
  if (n > 0) {
    dispatch_backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
        tokens, top_k, dim, position, d_x_sorted, d_x);
  }
}

void launch_combine_forward(int64_t tokens, int32_t top_k, int64_t dim, const int64_t* position,
                            const float* weight, const float* y_sorted, float* y, void* stream) {
  const int64_t n = tokens * dim;
  if (n > 0) {
    combine_forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
        tokens, top_k, dim, position, weight, y_sorted, y);
  }
}

void launch_combine_backward(int64_t tokens, int32_t top_k, int64_t dim, const int64_t* position,
                             const float* weight, const float* y_sorted, const float* d_y,
                             float* d_y_sorted, float* d_weight, void* stream) {
  const int64_t n = tokens * top_k;
  if (n > 0) {
    combine_backward_kernel<<<static_cast<int>(n), kThreads, 0, as_stream(stream)>>>(
        top_k, dim, position, weight, y_sorted, d_y, d_y_sorted, d_weight);
  }
}

}  // namespace mohge::cuda
