// CpuBackend: token permute (dispatch) / unpermute (combine) and the heterogeneous grouped
// SwiGLU experts.
//
// Grouped experts: every slice (an expert of any width, a shared expert, a dense FFN) is cut
// into GEMM tasks that need no reduction between them — row chunks for the forward and the
// data gradients, output-row chunks for the weight gradients — and all tasks of all slices
// run in one OpenMP loop, largest first, each task's GEMMs single-threaded. A task's result
// does not depend on the thread that runs it, so the pass is deterministic.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/cpu/cpu_backend.hpp"
#include "kernels/cpu/vec_math.hpp"

namespace mohge {

void CpuBackend::remap_index(const int32_t* in, int64_t count, const int32_t* table,
                             int32_t table_size, int32_t* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = in[i] >= 0 && in[i] < table_size ? table[in[i]] : -1;
}

void CpuBackend::dispatch_plan(const int32_t* topk_index, int64_t num_tokens, int32_t top_k,
                               int32_t num_experts, DispatchPlan* plan) {
  const int64_t M = num_tokens * top_k;
  plan->num_tokens = num_tokens;
  plan->top_k = top_k;
  plan->num_experts = num_experts;
  plan->expert_offsets.assign(static_cast<size_t>(num_experts) + 1, 0);
  plan->position.resize(*this, M);
  plan->sorted_token.resize(*this, M);
  for (int64_t a = 0; a < M; ++a) {
    const int32_t e = topk_index[a];
    MOHGE_CHECK(e >= 0 && e < num_experts,
                "expert id " << e << " outside [0," << num_experts << ")");
    ++plan->expert_offsets[static_cast<size_t>(e) + 1];
  }
  std::partial_sum(plan->expert_offsets.begin(), plan->expert_offsets.end(),
                   plan->expert_offsets.begin());
  std::vector<int64_t> cursor(plan->expert_offsets.begin(), plan->expert_offsets.end() - 1);
  int64_t* position = plan->position.data();
  int32_t* sorted_token = plan->sorted_token.data();
  for (int64_t a = 0; a < M; ++a) {  // (t, k) order: stable by token within each expert
    const int64_t row = cursor[static_cast<size_t>(topk_index[a])]++;
    position[a] = row;
    sorted_token[row] = static_cast<int32_t>(a / top_k);
  }
}

void CpuBackend::dispatch_forward(const DispatchParams& p) {
  const int64_t D = p.dim, M = p.plan->rows();
  const int32_t* sorted_token = p.plan->sorted_token.data();
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t r = 0; r < M; ++r)
    std::copy_n(p.x + static_cast<int64_t>(sorted_token[r]) * D, D, p.x_sorted + r * D);
}

void CpuBackend::dispatch_backward(const DispatchParams& p) {
  const int64_t D = p.dim, K = p.plan->top_k;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t t = 0; t < p.plan->num_tokens; ++t) {
    float* dx = p.d_x + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const float* src = p.d_x_sorted + p.plan->position.data()[t * K + k] * D;
      for (int64_t c = 0; c < D; ++c) dx[c] += src[c];
    }
  }
}

void CpuBackend::combine_forward(const CombineParams& p) {
  const int64_t D = p.dim, K = p.plan->top_k;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t t = 0; t < p.plan->num_tokens; ++t) {
    float* y = p.y + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const float w = p.weight[t * K + k];
      const float* src = p.y_sorted + p.plan->position.data()[t * K + k] * D;
      for (int64_t c = 0; c < D; ++c) y[c] += w * src[c];
    }
  }
}

void CpuBackend::combine_backward(const CombineParams& p) {
  const int64_t D = p.dim, K = p.plan->top_k;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t t = 0; t < p.plan->num_tokens; ++t) {
    const float* dy = p.d_y + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = p.plan->position.data()[t * K + k];
      const float w = p.weight[t * K + k];
      const float* ys = p.y_sorted + row * D;
      float* dys = p.d_y_sorted + row * D;
      float dot = 0.0f;
      for (int64_t c = 0; c < D; ++c) {
        dot += dy[c] * ys[c];
        dys[c] = w * dy[c];
      }
      p.d_weight[t * K + k] = dot;
    }
  }
}

namespace {

enum class TaskKind { kForward, kBackwardData, kGradDown, kGradGateUp };

// One unit of work: rows [begin, end) of a slice (forward, data gradients) or output rows
// [begin, end) of a weight gradient.
struct Task {
  TaskKind kind;
  int64_t slice;
  int64_t begin, end;
  double cost;
};

// Appends the chunks of [0, extent) for one slice: about `target_cost` each, at least
// `min_rows` rows, rounded to multiples of 8 rows for the GEMM kernels.
void add_chunks(std::vector<Task>& tasks, TaskKind kind, int64_t slice, int64_t extent,
                double cost_per_row, double target_cost, int64_t min_rows) {
  if (extent <= 0) return;
  const double total = cost_per_row * static_cast<double>(extent);
  int64_t chunks = static_cast<int64_t>(std::ceil(total / target_cost));
  chunks = std::clamp<int64_t>(chunks, 1, std::max<int64_t>(1, extent / min_rows));
  int64_t step = (extent + chunks - 1) / chunks;
  step = (step + 7) / 8 * 8;
  for (int64_t b = 0; b < extent; b += step) {
    const int64_t e = std::min(extent, b + step);
    tasks.push_back({kind, slice, b, e, cost_per_row * static_cast<double>(e - b)});
  }
}

void run_tasks(std::vector<Task>& tasks, const GroupedSwigluParams& p, int num_threads,
               Precision precision);

void swiglu_rows(const float* act, float* hidden, int64_t rows, int64_t W) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = act + r * 2 * W;
    float* h = hidden + r * W;
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) h[c] = a[c] * vsigmoid(a[c]) * a[W + c];
  }
}

void swiglu_rows_backward(const float* act, const float* d_hidden, float* d_act, int64_t rows,
                          int64_t W) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = act + r * 2 * W;
    const float* dh = d_hidden + r * W;
    float* da = d_act + r * 2 * W;
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) {
      const float g = a[c], u = a[W + c], s = vsigmoid(g);
      da[c] = dh[c] * u * s * (1.0f + g * (1.0f - s));
      da[W + c] = dh[c] * g * s;
    }
  }
}

void run_task(const Task& t, const GroupedSwigluParams& p, Precision precision) {
  const ExpertSlice& s = p.slices[t.slice];
  const int64_t D = p.dim, W = s.width, rows = t.end - t.begin;
  switch (t.kind) {
    case TaskKind::kForward: {
      const int64_t r0 = t.begin;
      float* act = s.act + r0 * 2 * W;
      float* hid = s.hidden + r0 * W;
      cpu_gemm_serial({.trans_a = false,
                       .trans_b = true,
                       .m = rows,
                       .n = 2 * W,
                       .k = D,
                       .a = s.x + r0 * D,
                       .lda = D,
                       .b = s.w_gate_up,
                       .ldb = D,
                       .beta = 0.0f,
                       .c = act,
                       .ldc = 2 * W},
                      precision);
      swiglu_rows(act, hid, rows, W);
      cpu_gemm_serial({.trans_a = false,
                       .trans_b = true,
                       .m = rows,
                       .n = D,
                       .k = W,
                       .a = hid,
                       .lda = W,
                       .b = s.w_down,
                       .ldb = W,
                       .beta = 0.0f,
                       .c = s.y + r0 * D,
                       .ldc = D},
                      precision);
      break;
    }
    case TaskKind::kBackwardData: {
      const int64_t r0 = t.begin;
      float* dh = s.d_hidden + r0 * W;
      float* da = s.d_act + r0 * 2 * W;
      cpu_gemm_serial({.trans_a = false,
                       .trans_b = false,
                       .m = rows,
                       .n = W,
                       .k = D,
                       .a = s.d_y + r0 * D,
                       .lda = D,
                       .b = s.w_down,
                       .ldb = W,
                       .beta = 0.0f,
                       .c = dh,
                       .ldc = W},
                      precision);
      swiglu_rows_backward(s.act + r0 * 2 * W, dh, da, rows, W);
      cpu_gemm_serial({.trans_a = false,
                       .trans_b = false,
                       .m = rows,
                       .n = D,
                       .k = 2 * W,
                       .a = da,
                       .lda = 2 * W,
                       .b = s.w_gate_up,
                       .ldb = D,
                       .beta = 0.0f,
                       .c = s.d_x + r0 * D,
                       .ldc = D},
                      precision);
      break;
    }
    case TaskKind::kGradDown:  // dDown[c0:c1, :] += dY[:, c0:c1]ᵀ · H
      cpu_gemm_serial({.trans_a = true,
                       .trans_b = false,
                       .m = rows,
                       .n = W,
                       .k = s.rows,
                       .a = s.d_y + t.begin,
                       .lda = D,
                       .b = s.hidden,
                       .ldb = W,
                       .beta = 1.0f,
                       .c = s.d_w_down + t.begin * W,
                       .ldc = W},
                      precision);
      break;
    case TaskKind::kGradGateUp:  // dGU[r0:r1, :] += dA[:, r0:r1]ᵀ · X
      cpu_gemm_serial({.trans_a = true,
                       .trans_b = false,
                       .m = rows,
                       .n = D,
                       .k = s.rows,
                       .a = s.d_act + t.begin,
                       .lda = 2 * W,
                       .b = s.x,
                       .ldb = D,
                       .beta = 1.0f,
                       .c = s.d_w_gate_up + t.begin * D,
                       .ldc = D},
                      precision);
      break;
  }
}

void run_tasks(std::vector<Task>& tasks, const GroupedSwigluParams& p, int num_threads,
               Precision precision) {
  // Largest first, then by position: a deterministic order that balances the dynamic loop.
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t i = 0; i < num_tasks; ++i) run_task(tasks[static_cast<size_t>(i)], p, precision);
}

// Tasks per thread the chunking aims for: enough to balance slices of very different sizes.
constexpr double kTasksPerThread = 8.0;

}  // namespace

void CpuBackend::grouped_swiglu_forward(const GroupedSwigluParams& p) {
  const double D = static_cast<double>(p.dim);
  double total = 0.0;
  for (int64_t i = 0; i < p.num_slices; ++i)
    total += 6.0 * D * static_cast<double>(p.slices[i].rows * p.slices[i].width);
  const double target = std::max(1.0, total / (kTasksPerThread * num_threads_));
  std::vector<Task> tasks;
  for (int64_t i = 0; i < p.num_slices; ++i)
    add_chunks(tasks, TaskKind::kForward, i, p.slices[i].rows,
               6.0 * D * static_cast<double>(p.slices[i].width), target, 32);
  run_tasks(tasks, p, num_threads_, precision_);
}

void CpuBackend::grouped_swiglu_backward(const GroupedSwigluParams& p) {
  const double D = static_cast<double>(p.dim);
  double total = 0.0;
  for (int64_t i = 0; i < p.num_slices; ++i)
    total += 6.0 * D * static_cast<double>(p.slices[i].rows * p.slices[i].width);
  const double target = std::max(1.0, total / (kTasksPerThread * num_threads_));
  // Phase 1: data gradients (row chunks) and dDown = dYᵀ·H (output-row chunks), which needs
  // only forward state. Phase 2: dGateUp = dAᵀ·X, which reads d_act written in phase 1.
  std::vector<Task> tasks;
  for (int64_t i = 0; i < p.num_slices; ++i) {
    const ExpertSlice& s = p.slices[i];
    if (s.rows == 0) continue;
    add_chunks(tasks, TaskKind::kBackwardData, i, s.rows, 6.0 * D * static_cast<double>(s.width),
               target, 32);
    add_chunks(tasks, TaskKind::kGradDown, i, p.dim, 2.0 * static_cast<double>(s.rows * s.width),
               target, 16);
  }
  run_tasks(tasks, p, num_threads_, precision_);
  tasks.clear();
  for (int64_t i = 0; i < p.num_slices; ++i) {
    const ExpertSlice& s = p.slices[i];
    if (s.rows == 0) continue;
    add_chunks(tasks, TaskKind::kGradGateUp, i, 2 * s.width, 2.0 * D * static_cast<double>(s.rows),
               target, 16);
  }
  run_tasks(tasks, p, num_threads_, precision_);
}

}  // namespace mohge
