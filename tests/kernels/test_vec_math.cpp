// The vectorisable exp used by softmax, cross-entropy and SwiGLU: relative error against
// the C library's expf over the whole clamped range, and the clamping itself.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/vec_math.hpp"

namespace mohge {
namespace {

TEST(VecMath, ExpWithinTwoUlpOfLibm) {
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.00137f) {
    const double ref = std::exp(static_cast<double>(x));
    const double rel = std::abs(vexp(x) - ref) / ref;
    worst = std::max(worst, rel);
  }
  EXPECT_LT(worst, 2.0 * 5.97e-8) << "worst relative error " << worst;  // 2 ulp of fp32
}

TEST(VecMath, ExpClampsOutOfRangeInputs) {
  EXPECT_TRUE(std::isfinite(vexp(1000.0f)));
  EXPECT_GT(vexp(1000.0f), 1e38f);
  EXPECT_GE(vexp(-1000.0f), 0.0f);
  EXPECT_LT(vexp(-1000.0f), 1e-37f);
  EXPECT_FLOAT_EQ(vexp(0.0f), 1.0f);
}

TEST(VecMath, SigmoidMatchesDefinition) {
  for (float x : {-20.0f, -3.5f, -0.1f, 0.0f, 0.7f, 4.0f, 30.0f})
    EXPECT_NEAR(vsigmoid(x), 1.0 / (1.0 + std::exp(-double{x})), 1e-7);
}

}  // namespace
}  // namespace mohge
