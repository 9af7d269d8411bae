// AdamW over a ParamStore (PyTorch semantics: decoupled weight decay, bias correction),
// with the paper's recipe: β = (0.9, 0.95), weight decay on weights but not on norms,
// global gradient-norm clipping, cosine learning-rate decay after a linear warm-up.
#pragma once

#include <cstdint>

#include "api/job_spec.hpp"
#include "kernels/backend.hpp"
#include "worker/model/params.hpp"

namespace mohge {

/// Learning rate for 0-based step `step` of `spec.steps`: linear warm-up over warmup_steps
/// from lr/warmup to lr, then cosine decay from lr to lr_min at the last step.
double lr_at(const TrainSpec& spec, int64_t step);

class AdamW {
 public:
  AdamW(const TrainSpec& spec, ParamStore& params, Backend& backend);

  /// Global L2 norm of the gradients (before clipping).
  double grad_norm();
  /// One update with learning rate `lr`; scales gradients by min(1, clip / norm) first.
  void step(double lr, double grad_norm);

  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  float* exp_avg() { return exp_avg_.data(); }        // same layout as the parameter arena
  float* exp_avg_sq() { return exp_avg_sq_.data(); }  // same layout as the parameter arena

 private:
  TrainSpec spec_;
  ParamStore& params_;
  Backend& be_;
  Buffer<float> exp_avg_;
  Buffer<float> exp_avg_sq_;
  int64_t step_ = 0;
};

}  // namespace mohge
