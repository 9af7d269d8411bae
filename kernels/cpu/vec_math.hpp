// exp and sigmoid written so that `#pragma omp simd` loops vectorise them (glibc's vector
// expf is only declared under -ffast-math). Cephes-style: x = n·ln2 + r, a degree-6
// polynomial for e^r on |r| <= ln2/2, 2^n from the exponent bits. Relative error <= 2 ulp
// on [-87, 88] (tests/kernels/test_vec_math.cpp); inputs are clamped to that range.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace mohge {

inline float vexp(float x) {
  // std::min/max and nearbyint compile to vector min/max/round instructions.
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const int32_t ni = static_cast<int32_t>(n);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r) + 1.0f;
  const int32_t bits = (ni + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

inline float vsigmoid(float x) {
  return 1.0f / (1.0f + vexp(-x));
}

}  // namespace mohge
