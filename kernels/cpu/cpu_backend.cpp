// CpuBackend: memory, GEMM, vector helpers and AdamW.
#include "kernels/cpu/cpu_backend.hpp"

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <xmmintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "kernels/check.hpp"

namespace mohge {

CpuBackend::CpuBackend(int num_threads, Precision precision) : precision_(precision) {
  num_threads_ = num_threads > 0 ? num_threads : omp_get_num_procs();
  // oneDNN's OpenMP runtime reads the OpenMP thread count for its own parallel GEMMs.
  omp_set_num_threads(num_threads_);
  omp_set_dynamic(0);
  // Flush denormals to zero (FTZ) and treat denormal inputs as zero (DAZ) on every compute
  // thread: as training goes on, tiny gradients and moments otherwise hit the slow denormal
  // path and steps take twice as long. OpenMP reuses its threads, so the setting persists.
#pragma omp parallel num_threads(num_threads_)
  _mm_setcsr(_mm_getcsr() | 0x8040);
  _mm_setcsr(_mm_getcsr() | 0x8040);
}

std::unique_ptr<Backend> make_cpu_backend(int num_threads, Precision precision) {
  std::string why;
  MOHGE_CHECK(precision != Precision::kBf16 || cpu_bf16_available(&why), why);
  return std::make_unique<CpuBackend>(num_threads, precision);
}

void* CpuBackend::allocate(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* ptr = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (ptr == nullptr) throw std::bad_alloc();
  std::memset(ptr, 0, rounded == 0 ? 64 : rounded);
  return ptr;
}

void CpuBackend::deallocate(void* ptr) {
  std::free(ptr);
}

void CpuBackend::copy_to_host(void* dst_host, const void* src, size_t bytes) {
  std::memcpy(dst_host, src, bytes);
}

void CpuBackend::copy_from_host(void* dst, const void* src_host, size_t bytes) {
  std::memcpy(dst, src_host, bytes);
}

void CpuBackend::fill_zero(float* data, int64_t count) {
  std::memset(data, 0, sizeof(float) * static_cast<size_t>(count));
}

void CpuBackend::copy(float* dst, const float* src, int64_t count) {
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
}

namespace {

void check_gemm(const GemmParams& p) {
  MOHGE_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0, "gemm dims " << p.m << "x" << p.n << "x" << p.k);
  MOHGE_CHECK(p.ldc >= p.n, "ldc " << p.ldc << " < n " << p.n);
  MOHGE_CHECK(p.lda >= (p.trans_a ? p.m : p.k), "lda " << p.lda);
  MOHGE_CHECK(p.ldb >= (p.trans_b ? p.k : p.n), "ldb " << p.ldb);
}

void run_sgemm(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {  // C = beta·C; oneDNN requires k > 0 for its checks.
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j) p.c[i * p.ldc + j] *= p.beta;
    return;
  }
  const dnnl_status_t st = dnnl_sgemm(p.trans_a ? 'T' : 'N', p.trans_b ? 'T' : 'N', p.m, p.n, p.k,
                                      p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, p.c, p.ldc);
  MOHGE_CHECK(st == dnnl_success, "dnnl_sgemm failed with status " << static_cast<int>(st));
}

}  // namespace

void CpuBackend::gemm(const GemmParams& p) {
  check_gemm(p);
  // oneDNN sizes its parallel GEMM from the calling thread's OpenMP thread count, which
  // another backend in the same process may have changed.
  omp_set_num_threads(num_threads_);
  if (precision_ == Precision::kBf16) return cpu_gemm_bf16(p, num_threads_);
  run_sgemm(p);
}

void cpu_gemm_serial(const GemmParams& p, Precision precision) {
  // oneDNN runs a GEMM on one thread when called from inside an OpenMP parallel region.
  if (precision == Precision::kBf16) return cpu_gemm_bf16(p, 1);
  run_sgemm(p);
}

void CpuBackend::axpy(int64_t count, float alpha, const float* x, float* y) {
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t i = 0; i < count; ++i) y[i] += alpha * x[i];
}

void CpuBackend::scale(int64_t count, float alpha, float* x) {
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t i = 0; i < count; ++i) x[i] *= alpha;
}

double CpuBackend::sum_squares(int64_t count, const float* x) {
  // Fixed chunks summed in order: the result does not depend on the thread count.
  constexpr int64_t kChunk = 1 << 14;
  const int64_t num_chunks = (count + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(num_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t end = std::min(count, (c + 1) * kChunk);
    double s = 0.0;
    for (int64_t i = c * kChunk; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
    partial[static_cast<size_t>(c)] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

void CpuBackend::adamw_update(const AdamWParams& p) {
  const float bias1 = 1.0f - std::pow(p.beta1, static_cast<float>(p.step));
  const float bias2 = 1.0f - std::pow(p.beta2, static_cast<float>(p.step));
  const float decay = 1.0f - p.lr * p.weight_decay;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
  for (int64_t i = 0; i < p.size; ++i) {
    const float g = p.grad[i] * p.grad_scale;
    const float m = p.beta1 * p.exp_avg[i] + (1.0f - p.beta1) * g;
    const float v = p.beta2 * p.exp_avg_sq[i] + (1.0f - p.beta2) * g * g;
    p.exp_avg[i] = m;
    p.exp_avg_sq[i] = v;
    const float denom = std::sqrt(v / bias2) + p.eps;
    p.param[i] = p.param[i] * decay - p.lr * (m / bias1) / denom;
  }
}

}  // namespace mohge
