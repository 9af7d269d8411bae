// Benchmarks behind `mohge bench …`: they print figures, they assert nothing.
// Every figure is compared with the machine's own fp32 GEMM ceiling measured in the same run.
#pragma once

#include <cstdint>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "kernels/backend.hpp"

namespace mohge {

struct GemmShape {
  int64_t m, n, k;
};

/// The best GEMM throughput (GFLOP/s) oneDNN reaches on `threads` threads at these shapes in
/// `precision`, as one multi-threaded call or as one single-threaded call per thread running
/// concurrently (how the grouped expert pass uses it), whichever is higher.
double gemm_ceiling_gflops(const std::vector<GemmShape>& shapes, int threads,
                           Precision precision = Precision::kFp32);

/// The best GEMM throughput (GFLOP/s) of `be` itself at these shapes (one call at a time,
/// synchronised): the ceiling of a device backend, cuBLAS on a GPU.
double backend_gemm_ceiling_gflops(Backend& be, const std::vector<GemmShape>& shapes);

struct LayerBenchResult {
  double ms_per_fwd_bwd = 0;  // median
  double gflop = 0;           // per forward+backward
  double gflops = 0;
  double ceiling_gflops = 0;
  double fraction_of_ceiling = 0;
  // The routed experts alone: one grouped SwiGLU forward+backward over all experts with the
  // rows the layer's router gave each (zero when the layer has no routed experts), and its
  // share of the same GEMM ceiling.
  double experts_ms_per_fwd_bwd = 0;
  double experts_gflops = 0;
  double experts_fraction_of_ceiling = 0;
  int64_t tokens = 0;
  int threads = 0;
  std::string precision;  // train.precision of the spec; the ceiling is measured in it too
};

/// Forward+backward of the spec's FFN layer on `tokens` random tokens.
Result<LayerBenchResult> bench_layer(const JobSpec& spec, int64_t tokens, int threads);

struct TrainBenchResult {
  double tokens_per_s = 0;  // median step
  double ms_per_step = 0;
  double model_gflop_per_step = 0;
  double achieved_gflops = 0;
  double ceiling_gflops = 0;
  double mfu = 0;  // achieved / ceiling
  int64_t steps = 0;
  int threads = 0;
};

/// Training steps of the full model on the spec's training data (random tokens when the
/// data file is absent; `used_real_data` says which).
Result<TrainBenchResult> bench_train(const JobSpec& spec, const std::string& storage_root,
                                     int64_t steps, int threads, bool* used_real_data);

}  // namespace mohge
