// CUDA kernels of the routers and of the dispatch plan: thin launches around the per-token
// and per-chunk functions of router_math.hpp and dispatch_math.hpp, which
// tests/kernels/test_device_math.cpp checks on the host against the CPU backend. The CUDA
// backend (kernels/cuda/, the GPU-path issue) calls these; each takes the rank's stream.
//
// Determinism: every thread owns its token (or chunk of tokens / assignments) and writes only
// its own outputs; sums over tokens are per chunk of kTokenChunk tokens in double, then over
// chunks in order by one thread per output, so results do not depend on scheduling.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_kernels.hpp"
#include "kernels/cuda/dispatch_math.hpp"
#include "kernels/cuda/router_math.hpp"

namespace mohge::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int64_t kTokenChunk = 256;  // tokens per partial sum, as the CPU backend

int blocks_for(int64_t n) {
  return static_cast<int>((n + kThreads - 1) / kThreads);
}

__global__ void router_forward_kernel(device::RouterShape s, int64_t tokens, const float* logits,
                                      const float* bias, float* scratch, uint8_t* flags,
                                      int32_t* topk_index, float* topk_weight,
                                      uint8_t* group_selected, int* failed) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= tokens) return;
  const int64_t L = s.logits_width();
  const bool ok = device::router_token_forward(
      s, logits + t * L, scratch + t * device::router_scratch_floats(s),
      flags + t * device::router_scratch_flags(s), topk_index + t * s.top_experts,
      topk_weight + t * s.top_experts,
      group_selected == nullptr ? nullptr : group_selected + t * s.groups, bias);
  if (!ok) atomicExch(failed, 1);
}

__global__ void router_count_kernel(device::RouterShape s, int64_t tokens,
                                    const int32_t* topk_index, const uint8_t* group_selected,
                                    unsigned long long* group_count,
                                    unsigned long long* expert_count) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= tokens) return;
  // Integer counts: the sum is exact in any order.
  if (s.mohge()) {
    for (int32_t g = 0; g < s.groups; ++g)
      if (group_selected[t * s.groups + g]) atomicAdd(&group_count[g], 1ull);
  } else {
    atomicAdd(&group_count[0], 1ull);
  }
  for (int32_t k = 0; k < s.top_experts; ++k)
    atomicAdd(&expert_count[topk_index[t * s.top_experts + k]], 1ull);
}

// One thread per chunk of kTokenChunk tokens: its p-term sums, (G) then (E), in double.
__global__ void router_aux_chunk_kernel(device::RouterShape s, GroupLossKind group_loss,
                                        ExpertLossKind expert_loss, float eps, int64_t tokens,
                                        const float* logits, const uint8_t* group_selected,
                                        float* scratch, uint8_t* flags, double* partial) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t chunks = (tokens + kTokenChunk - 1) / kTokenChunk;
  if (c >= chunks) return;
  const int64_t G = s.groups, E = s.experts(), L = s.logits_width();
  double* pg = partial + c * (G + E);
  double* pe = pg + G;
  for (int64_t i = 0; i < G + E; ++i) pg[i] = 0.0;
  float* my_scratch = scratch + c * device::router_scratch_floats(s);
  uint8_t* my_flags = flags + c * device::router_scratch_flags(s);
  const int64_t end = min(tokens, (c + 1) * kTokenChunk);
  for (int64_t t = c * kTokenChunk; t < end; ++t) {
    device::router_token_aux_terms(s, group_loss, expert_loss, eps, logits + t * L,
                                   s.mohge() ? group_selected + t * G : nullptr, my_scratch,
                                   my_flags, pg, pe);
  }
}

// One thread per output (G + E): Σ over chunks, in chunk order.
__global__ void sum_chunks_kernel(const double* partial, int64_t chunks, int64_t width,
                                  double* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= width) return;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * width + i];
  out[i] = s;
}

__global__ void router_backward_kernel(device::RouterShape s, GroupLossKind group_loss,
                                       ExpertLossKind expert_loss, float eps, int64_t tokens,
                                       const float* logits, const uint8_t* group_selected,
                                       const int32_t* topk_index, const float* topk_weight,
                                       const float* d_topk_weight, const float* ag, const float* be,
                                       float* scratch, uint8_t* flags, float* d_logits) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= tokens) return;
  const int64_t L = s.logits_width(), K = s.top_experts;
  device::router_token_backward(s, group_loss, expert_loss, eps, logits + t * L,
                                s.mohge() ? group_selected + t * s.groups : nullptr,
                                topk_index + t * K, topk_weight + t * K, d_topk_weight + t * K, ag,
                                be, scratch + t * device::router_scratch_floats(s),
                                flags + t * device::router_scratch_flags(s), d_logits + t * L);
}

__global__ void remap_index_kernel(const int32_t* in, int64_t count, const int32_t* table,
                                   int32_t table_size, int32_t* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= count) return;
  const int32_t id = in[i];
  out[i] = id >= 0 && id < table_size ? table[id] : -1;
}

__global__ void dispatch_count_kernel(const int32_t* topk_index, int64_t assignments,
                                      int32_t experts, int64_t* counts, int* failed) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t chunks = device::dispatch_chunks(assignments, device::kDispatchChunk);
  if (c >= chunks) return;
  int64_t* mine = counts + c * experts;
  for (int32_t e = 0; e < experts; ++e) mine[e] = 0;
  const int64_t begin = c * device::kDispatchChunk;
  const int64_t end = min(assignments, begin + device::kDispatchChunk);
  if (!device::dispatch_count(topk_index, begin, end, experts, mine)) atomicExch(failed, 1);
}

__global__ void dispatch_scan_kernel(const int64_t* counts, int64_t chunks, int32_t experts,
                                     int64_t* base, int64_t* expert_offsets) {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    device::dispatch_scan(counts, chunks, experts, base, expert_offsets);
}

__global__ void dispatch_place_kernel(const int32_t* topk_index, int64_t assignments, int32_t top_k,
                                      int32_t experts, int64_t* base, int64_t* position,
                                      int32_t* sorted_token, const int* failed) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t chunks = device::dispatch_chunks(assignments, device::kDispatchChunk);
  if (c >= chunks || *failed) return;  // an id out of range: nothing is placed
  const int64_t begin = c * device::kDispatchChunk;
  const int64_t end = min(assignments, begin + device::kDispatchChunk);
  device::dispatch_place(topk_index, begin, end, top_k, base + c * experts, position, sorted_token);
}

cudaStream_t as_stream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

}  // namespace

int64_t router_scratch_floats(const RouterParams& p, int64_t tokens) {
  return tokens * device::router_scratch_floats(device::router_shape(p));
}

int64_t router_scratch_flags(const RouterParams& p, int64_t tokens) {
  return tokens * device::router_scratch_flags(device::router_shape(p));
}

void launch_router_forward(const RouterParams& p, float* scratch, uint8_t* flags, int* failed,
                           void* stream) {
  if (p.num_tokens == 0) return;
  router_forward_kernel<<<blocks_for(p.num_tokens), kThreads, 0, as_stream(stream)>>>(
      device::router_shape(p), p.num_tokens, p.logits, p.expert_bias, scratch, flags, p.topk_index,
      p.topk_weight, p.group_selected, failed);
}

void launch_router_count(const RouterParams& p, unsigned long long* group_count,
                         unsigned long long* expert_count, void* stream) {
  if (p.num_tokens == 0) return;
  router_count_kernel<<<blocks_for(p.num_tokens), kThreads, 0, as_stream(stream)>>>(
      device::router_shape(p), p.num_tokens, p.topk_index, p.group_selected, group_count,
      expert_count);
}

int64_t router_aux_chunks(int64_t tokens) {
  return (tokens + kTokenChunk - 1) / kTokenChunk;
}

void launch_router_aux_terms(const RouterParams& p, const RouterAuxParams& aux, float* scratch,
                             uint8_t* flags, double* partial, double* psum, void* stream) {
  const device::RouterShape s = device::router_shape(p);
  const int64_t chunks = router_aux_chunks(p.num_tokens), width = s.groups + s.experts();
  if (chunks == 0) return;
  router_aux_chunk_kernel<<<blocks_for(chunks), kThreads, 0, as_stream(stream)>>>(
      s, aux.group_loss, aux.expert_loss, aux.eps, p.num_tokens, p.logits, p.group_selected,
      scratch, flags, partial);
  sum_chunks_kernel<<<blocks_for(width), kThreads, 0, as_stream(stream)>>>(partial, chunks, width,
                                                                           psum);
}

void launch_router_backward(const RouterParams& p, const RouterAuxParams& aux, const float* ag,
                            const float* be, float* scratch, uint8_t* flags, void* stream) {
  if (p.num_tokens == 0) return;
  router_backward_kernel<<<blocks_for(p.num_tokens), kThreads, 0, as_stream(stream)>>>(
      device::router_shape(p), aux.group_loss, aux.expert_loss, aux.eps, p.num_tokens, p.logits,
      p.group_selected, p.topk_index, p.topk_weight, p.d_topk_weight, ag, be, scratch, flags,
      p.d_logits);
}

int64_t dispatch_chunks(int64_t assignments) {
  return device::dispatch_chunks(assignments, device::kDispatchChunk);
}

void launch_remap_index(const int32_t* in, int64_t count, const int32_t* table, int32_t table_size,
                        int32_t* out, void* stream) {
  if (count == 0) return;
  remap_index_kernel<<<blocks_for(count), kThreads, 0, as_stream(stream)>>>(in, count, table,
                                                                            table_size, out);
}

void launch_dispatch_plan(const int32_t* topk_index, int64_t assignments, int32_t top_k,
                          int32_t experts, int64_t* counts, int64_t* base, int64_t* expert_offsets,
                          int64_t* position, int32_t* sorted_token, int* failed, void* stream) {
  const int64_t chunks = dispatch_chunks(assignments);
  cudaStream_t st = as_stream(stream);
  if (chunks > 0) {
    dispatch_count_kernel<<<blocks_for(chunks), kThreads, 0, st>>>(topk_index, assignments, experts,
                                                                   counts, failed);
  }
  dispatch_scan_kernel<<<1, 1, 0, st>>>(counts, chunks, experts, base, expert_offsets);
  if (chunks > 0) {
    dispatch_place_kernel<<<blocks_for(chunks), kThreads, 0, st>>>(
        topk_index, assignments, top_k, experts, base, position, sorted_token, failed);
  }
}

}  // namespace mohge::cuda
