// Helpers shared by the test suites: seeded random tensors, tolerant comparisons, and
// central finite differences.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "worker/model/rng.hpp"

namespace mohge::testing {

inline std::vector<float> random_vector(int64_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal()) * scale;
  return v;
}

/// Router logits (N rows of [G group | G·n expert] logits, or G·n for uniform MoE) with exact
/// ties: groups 1 and 2 share a logit, and on two tokens of three the first two experts of
/// every group share one, so selections depend on the tie rule (lower id first).
inline std::vector<float> tied_router_logits(int64_t N, int64_t G, int64_t n, bool mohge,
                                             uint64_t seed) {
  const int64_t L = mohge ? G + G * n : G * n;
  std::vector<float> l = random_vector(N * L, seed, 2.0f);
  for (int64_t t = 0; t < N; ++t) {
    float* row = l.data() + t * L;
    if (mohge && G > 2) row[2] = row[1];
    float* e = row + (mohge ? G : 0);
    for (int64_t g = 0; g < G; ++g)
      if (n > 1 && t % 3 != 0) e[g * n + 1] = e[g * n];
  }
  return l;
}

/// Every element within atol + rtol·|expected|; reports the first few mismatches by index.
inline ::testing::AssertionResult all_close(const std::vector<float>& actual,
                                            const std::vector<float>& expected, double atol,
                                            double rtol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  int bad = 0;
  std::string msg;
  double worst = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double diff = std::abs(static_cast<double>(actual[i]) - expected[i]);
    const double tol = atol + rtol * std::abs(static_cast<double>(expected[i]));
    worst = std::max(worst, diff - tol);
    if (!(diff <= tol)) {
      if (++bad <= 5) {
        msg += "\n  [" + std::to_string(i) + "] actual " + std::to_string(actual[i]) +
               " expected " + std::to_string(expected[i]);
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << actual.size() << " elements differ (atol " << atol << ", rtol " << rtol
         << ")" << msg;
}

/// Central difference of `loss` w.r.t. x[i], evaluated in place (x is restored).
inline double central_difference(std::vector<float>& x, size_t i, float h,
                                 const std::function<double()>& loss) {
  const float saved = x[i];
  x[i] = saved + h;
  const double plus = loss();
  x[i] = saved - h;
  const double minus = loss();
  x[i] = saved;
  return (plus - minus) / (2.0 * static_cast<double>(h));
}

/// Compares an analytic gradient with central differences at every index of x (or at
/// `max_checks` evenly spaced indices). Tolerance atol + rtol·|numeric|.
inline ::testing::AssertionResult gradient_matches(std::vector<float>& x,
                                                   const std::vector<float>& analytic, float h,
                                                   const std::function<double()>& loss, double atol,
                                                   double rtol, size_t max_checks = 1000) {
  const size_t n = x.size();
  const size_t stride = std::max<size_t>(1, n / max_checks);
  int bad = 0;
  std::string msg;
  for (size_t i = 0; i < n; i += stride) {
    const double num = central_difference(x, i, h, loss);
    const double diff = std::abs(num - analytic[i]);
    if (!(diff <= atol + rtol * std::abs(num))) {
      if (++bad <= 5) {
        msg += "\n  [" + std::to_string(i) + "] analytic " + std::to_string(analytic[i]) +
               " numeric " + std::to_string(num);
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " gradient entries differ" << msg;
}

/// Σ out·weights in double: the scalar loss whose gradient w.r.t. out is `weights`.
inline double dot(const std::vector<float>& out, const std::vector<float>& weights) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += static_cast<double>(out[i]) * weights[i];
  return s;
}

}  // namespace mohge::testing
