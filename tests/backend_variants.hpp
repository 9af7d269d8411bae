// The backend variants the cross-backend tests compare with the CPU fp32 backend (their
// reference): every one that this build has and this host can run.
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
  std::function<std::unique_ptr<Backend>()> make;
};

inline std::vector<BackendVariant> present_backend_variants() {
  std::vector<BackendVariant> v;
  if (cpu_bf16_available(nullptr))
    v.push_back({"cpu_bf16", [] { return make_cpu_backend(2, Precision::kBf16); }});
  return v;
}

/// How GoogleTest prints a variant (its name, not its bytes).
inline void PrintTo(const BackendVariant& v, std::ostream* os) {
  *os << v.name;
}

inline std::string backend_variant_name(const ::testing::TestParamInfo<BackendVariant>& info) {
  return info.param.name;
}

}  // namespace mohge::testing
