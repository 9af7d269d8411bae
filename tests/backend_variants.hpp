// The backend variants the cross-backend tests compare with the CPU fp32 backend (their
// reference). test_kernels and test_model run the CPU variants; test_gpu (CTest label `gpu`,
// built with MOHGE_GPU_VARIANTS) runs the same suites on the CUDA variants. A variant this
// host cannot run is reported as skipped, with the reason.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/backend.hpp"

namespace mohge::testing {

struct BackendVariant {
  std::string name;  // a test-name suffix: cpu_bf16, cuda_fp32, cuda_bf16
  std::function<bool(std::string*)> available;
  std::function<std::unique_ptr<Backend>()> make;
};

inline std::vector<BackendVariant> backend_variants() {
#ifdef MOHGE_GPU_VARIANTS
  return {
      {"cuda_fp32", cuda_backend_available, [] { return make_cuda_backend(0, Precision::kFp32); }},
      {"cuda_bf16", cuda_backend_available, [] { return make_cuda_backend(0, Precision::kBf16); }}};
#else
  return {{"cpu_bf16", cpu_bf16_available, [] { return make_cpu_backend(2, Precision::kBf16); }}};
#endif
}

/// Skips the running test (from SetUp or the body) when the variant is not available here.
#define MOHGE_SKIP_UNLESS_AVAILABLE(variant)                                \
  do {                                                                      \
    std::string why_;                                                       \
    if (!(variant).available(&why_))                                        \
      GTEST_SKIP() << (variant).name << " is not available here: " << why_; \
  } while (0)

/// How GoogleTest prints a variant (its name, not its bytes).
inline void PrintTo(const BackendVariant& v, std::ostream* os) {
  *os << v.name;
}

inline std::string backend_variant_name(const ::testing::TestParamInfo<BackendVariant>& info) {
  return info.param.name;
}

}  // namespace mohge::testing
