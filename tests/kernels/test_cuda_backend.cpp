// The CUDA backend is tested against the CPU backend by the same suites on a GPU host; here,
// the plumbing: availability is reported with a reason, and without a GPU the test skips.
#include <gtest/gtest.h>

#include "kernels/backend.hpp"

namespace mohge {
namespace {

TEST(CudaBackend, ReportsWhyItIsUnavailable) {
  std::string why;
  const bool available = cuda_backend_available(&why);
  if (!available) {
    EXPECT_FALSE(why.empty());
    GTEST_SKIP() << "CUDA backend not available: " << why;
  }
  SUCCEED();
}

}  // namespace
}  // namespace mohge
