// The index math of the CUDA backend's token dispatch (a stable counting sort of the (token,
// k) assignments by expert) and of its blocked reductions, as __host__ __device__ functions:
// the kernels call them, and tests/kernels/test_device_math.cpp checks them on the host
// against the CPU backend on every machine.
//
// Dispatch plan in three steps, each deterministic:
//   1. count:  per chunk of kDispatchChunk assignments, how many go to each expert;
//   2. scan:   expert-major prefix sums give expert_offsets and, per chunk, the first row of
//              each expert's rows from that chunk;
//   3. place:  each chunk walks its assignments in order, so rows are stable by token.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/router_math.hpp"  // MOHGE_HD

namespace mohge::device {

constexpr int64_t kDispatchChunk = 256;

MOHGE_HD inline int64_t dispatch_chunks(int64_t assignments, int64_t chunk) {
  return (assignments + chunk - 1) / chunk;
}

/// counts[e] (E, zeroed by the caller) of assignments [begin, end). False on an id outside
/// [0, E).
MOHGE_HD inline bool dispatch_count(const int32_t* topk_index, int64_t begin, int64_t end,
                                    int32_t experts, int64_t* counts) {
  bool ok = true;
  for (int64_t a = begin; a < end; ++a) {
    const int32_t e = topk_index[a];
    if (e < 0 || e >= experts) {
      ok = false;
      continue;
    }
    ++counts[e];
  }
  return ok;
}

/// From counts (C chunks × E, chunk-major): expert_offsets (E+1) and base (C × E), the first
/// row of expert e's rows that come from chunk c.
MOHGE_HD inline void dispatch_scan(const int64_t* counts, int64_t chunks, int32_t experts,
                                   int64_t* base, int64_t* expert_offsets) {
  int64_t row = 0;
  for (int32_t e = 0; e < experts; ++e) {
    expert_offsets[e] = row;
    for (int64_t c = 0; c < chunks; ++c) {
      base[c * experts + e] = row;
      row += counts[c * experts + e];
    }
  }
  expert_offsets[experts] = row;
}

/// Places assignments [begin, end) in order; cursor (E) starts as the chunk's base row and
/// advances. position (N·K) and sorted_token (M) as in DispatchPlan.
MOHGE_HD inline void dispatch_place(const int32_t* topk_index, int64_t begin, int64_t end,
                                    int32_t top_k, int64_t* cursor, int64_t* position,
                                    int32_t* sorted_token) {
  for (int64_t a = begin; a < end; ++a) {
    const int64_t row = cursor[topk_index[a]]++;
    position[a] = row;
    sorted_token[row] = static_cast<int32_t>(a / top_k);
  }
}

/// A running (max, Σ exp(x - max)) pair: log-sum-exp over blocks, merged in any grouping with
/// the same result up to rounding. An empty block is (-inf, 0).
struct MaxSum {
  float max = -INFINITY;
  float sum = 0.0f;
};

MOHGE_HD inline MaxSum lse_merge(MaxSum a, MaxSum b) {
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  const float m = a.max > b.max ? a.max : b.max;
  return {m, a.sum * std::exp(a.max - m) + b.sum * std::exp(b.max - m)};
}

/// The pair of x[begin, begin + stride·count) with the given stride.
MOHGE_HD inline MaxSum lse_block(const float* x, int64_t begin, int64_t count, int64_t stride) {
  MaxSum r;
  for (int64_t i = 0; i < count; ++i) r = lse_merge(r, MaxSum{x[begin + i * stride], 1.0f});
  return r;
}

MOHGE_HD inline float lse_value(MaxSum r) {
  return r.max + std::log(r.sum);
}

/// RoPE's inverse frequency of pair i of a head of width hd (Hugging Face Llama, fp32).
MOHGE_HD inline float rope_inv_freq(int64_t i, int64_t head_dim, float base) {
  return 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(head_dim));
}

}  // namespace mohge::device
