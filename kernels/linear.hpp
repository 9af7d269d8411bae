// Linear layers (no bias) on top of Backend::gemm, with torch.nn.Linear's (out, in) weights.
#pragma once

#include "kernels/backend.hpp"

namespace mohge {

/// y (N, out) = x (N, in) · Wᵀ + beta · y.   w: (out, in).
inline void linear_forward(Backend& be, const float* x, const float* w, float* y, int64_t rows,
                           int64_t in, int64_t out, float beta = 0.0f) {
  be.gemm({.trans_a = false,
           .trans_b = true,
           .m = rows,
           .n = out,
           .k = in,
           .alpha = 1.0f,
           .a = x,
           .lda = in,
           .b = w,
           .ldb = in,
           .beta = beta,
           .c = y,
           .ldc = out});
}

/// dx (N, in) = dy · W + dx_beta · dx;   dW (out, in) += dyᵀ · x.
inline void linear_backward(Backend& be, const float* x, const float* w, const float* dy, float* dx,
                            float* dw, int64_t rows, int64_t in, int64_t out, float dx_beta) {
  if (dx != nullptr) {
    be.gemm({.trans_a = false,
             .trans_b = false,
             .m = rows,
             .n = in,
             .k = out,
             .alpha = 1.0f,
             .a = dy,
             .lda = out,
             .b = w,
             .ldb = in,
             .beta = dx_beta,
             .c = dx,
             .ldc = in});
  }
  be.gemm({.trans_a = true,
           .trans_b = false,
           .m = out,
           .n = in,
           .k = rows,
           .alpha = 1.0f,
           .a = dy,
           .lda = out,
           .b = x,
           .ldb = in,
           .beta = 1.0f,
           .c = dw,
           .ldc = in});
}

/// Grows `buf` to hold at least `count` elements (never shrinks; contents are not kept).
template <class T>
void buffer_reserve(Buffer<T>& buf, Backend& be, int64_t count) {
  if (buf.size() < count) buf = Buffer<T>(be, count + count / 4);
}

}  // namespace mohge
