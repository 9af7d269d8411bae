// CpuBackend: the bf16 GEMM of `train.precision: "bf16"` (DESIGN.md §13). A and B are rounded
// to bf16 (nearest even) into per-thread scratch, packed densely in their own layout, and
// multiplied by oneDNN's matmul primitive with fp32 accumulation and an fp32 C:
// C = alpha·op(A)·op(B) + beta·C (alpha as the output scale, beta as a sum post-op).
//
// Primitives are kept per thread (a primitive object is then never executed by two threads at
// once), one per transpose/alpha/beta/thread-count combination, with runtime dimensions.
#include <omp.h>

#include <cstring>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/cpu/cpu_backend.hpp"

namespace mohge {

namespace {

using dnnl::memory;

/// fp32 → bf16, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Rows × cols of a strided fp32 matrix into a dense bf16 one (same orientation).
void pack_bf16(const float* src, int64_t rows, int64_t cols, int64_t ld, uint16_t* dst,
               int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * ld;
    uint16_t* d = dst + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) d[c] = to_bf16(s[c]);
  }
}

// (trans_a, trans_b, alpha, beta, threads). Dimensions and strides are runtime values of the
// primitive: expert GEMMs change their row counts every step, and a primitive per shape
// rebuilt oneDNN's JIT kernels all the time (whole-model bf16 training ran 0.83x fp32). With
// runtime dimensions oneDNN picks its JIT GEMM, which measured within a few % of the
// shape-specialised kernel here (e.g. 911 vs 921 GFLOP/s at 1368x576x256 on 2 threads).
using Key = std::tuple<bool, bool, float, float, int>;

struct ThreadState {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<Key, dnnl::matmul> primitives;
  std::vector<uint16_t> a, b;
};

ThreadState& thread_state() {
  thread_local ThreadState state;
  return state;
}

// The packed A is (m,k) or, transposed, (k,m) row-major; likewise B (k,n) or (n,k).
memory::dims a_strides(bool trans, memory::dim m, memory::dim k) {
  return trans ? memory::dims{1, m} : memory::dims{k, 1};
}
memory::dims b_strides(bool trans, memory::dim k, memory::dim n) {
  return trans ? memory::dims{1, k} : memory::dims{n, 1};
}

const dnnl::matmul& primitive(ThreadState& st, const GemmParams& p, int num_threads) {
  const Key key{p.trans_a, p.trans_b, p.alpha, p.beta, num_threads};
  if (const auto it = st.primitives.find(key); it != st.primitives.end()) return it->second;
  constexpr memory::dim R = DNNL_RUNTIME_DIM_VAL;
  const memory::desc a_md({R, R}, memory::data_type::bf16, a_strides(p.trans_a, R, R));
  const memory::desc b_md({R, R}, memory::data_type::bf16, b_strides(p.trans_b, R, R));
  const memory::desc c_md({R, R}, memory::data_type::f32, memory::dims{R, 1});
  dnnl::primitive_attr attr;
  if (p.alpha != 1.0f) attr.set_output_scales(0, {p.alpha});
  if (p.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(p.beta);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, st.engine);
  return st.primitives.emplace(key, dnnl::matmul(pd)).first->second;
}

}  // namespace

bool cpu_bf16_available(std::string* why_not) {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
  if ((isa & bf16) == bf16) return true;
  if (why_not != nullptr) {
    *why_not =
        "bf16 needs a CPU with avx512_bf16 or AMX (oneDNN finds neither on this one); use "
        "\"fp32\"";
  }
  return false;
}

void cpu_gemm_bf16(const GemmParams& p, int num_threads) {
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {  // C = beta·C (beta 0 overwrites, as BLAS does)
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j)
        p.c[i * p.ldc + j] = p.beta == 0.0f ? 0.0f : p.beta * p.c[i * p.ldc + j];
    return;
  }
  ThreadState& st = thread_state();
  const int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
  const int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
  st.a.resize(static_cast<size_t>(a_rows * a_cols));
  st.b.resize(static_cast<size_t>(b_rows * b_cols));
  pack_bf16(p.a, a_rows, a_cols, p.lda, st.a.data(), num_threads);
  pack_bf16(p.b, b_rows, b_cols, p.ldb, st.b.data(), num_threads);
  const dnnl::matmul& mm = primitive(st, p, num_threads);
  memory a({{p.m, p.k}, memory::data_type::bf16, a_strides(p.trans_a, p.m, p.k)}, st.engine,
           st.a.data());
  memory b({{p.k, p.n}, memory::data_type::bf16, b_strides(p.trans_b, p.k, p.n)}, st.engine,
           st.b.data());
  memory c({{p.m, p.n}, memory::data_type::f32, {p.ldc, 1}}, st.engine, p.c);
  mm.execute(st.stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  st.stream.wait();
}

}  // namespace mohge
