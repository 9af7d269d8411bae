#include "worker/train/optimizer.hpp"

#include <algorithm>
#include <cmath>

namespace mohge {

double lr_at(const TrainSpec& s, int64_t step) {
  if (step < s.warmup_steps) return s.lr * static_cast<double>(step + 1) / s.warmup_steps;
  const int64_t decay_steps = std::max<int64_t>(1, s.steps - 1 - s.warmup_steps);
  const double progress =
      std::clamp(static_cast<double>(step - s.warmup_steps) / decay_steps, 0.0, 1.0);
  return s.lr_min + 0.5 * (s.lr - s.lr_min) * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(const TrainSpec& spec, ParamStore& params, Backend& backend)
    : spec_(spec),
      params_(params),
      be_(backend),
      exp_avg_(backend, params.total_size()),
      exp_avg_sq_(backend, params.total_size()) {}

double AdamW::grad_norm() {
  return std::sqrt(be_.sum_squares(params_.total_size(), params_.grad_arena()));
}

void AdamW::step(double lr, double grad_norm) {
  ++step_;
  const double clip = spec_.grad_clip;
  const float scale =
      clip > 0.0 && grad_norm > clip ? static_cast<float>(clip / (grad_norm + 1e-6)) : 1.0f;
  for (const ParamInfo& p : params_.all()) {
    if (!p.trainable) continue;
    be_.adamw_update(
        {.size = p.size,
         .param = params_.data_arena() + p.offset,
         .grad = params_.grad_arena() + p.offset,
         .exp_avg = exp_avg_.data() + p.offset,
         .exp_avg_sq = exp_avg_sq_.data() + p.offset,
         .lr = static_cast<float>(lr),
         .beta1 = static_cast<float>(spec_.beta1),
         .beta2 = static_cast<float>(spec_.beta2),
         .eps = static_cast<float>(spec_.adam_eps),
         .weight_decay = p.weight_decay ? static_cast<float>(spec_.weight_decay) : 0.0f,
         .step = step_,
         .grad_scale = scale});
  }
}

}  // namespace mohge
