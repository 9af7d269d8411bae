// The dense SwiGLU FFN: y = down(silu(gate x) ⊙ up x), run as one slice of the grouped pass.
#include <cmath>

#include "kernels/linear.hpp"
#include "worker/model/ffn.hpp"
#include "worker/model/routed_ffn.hpp"

namespace mohge {

namespace {

class DenseFfn final : public FeedForward {
 public:
  DenseFfn(const ModelSpec& spec, int layer, Backend& backend, ParamStore& params)
      : be_(backend), ps_(params), dim_(spec.d_model), width_(spec.ffn.width) {
    const std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
    const float std = static_cast<float>(spec.init_std);
    const float out_std = std / std::sqrt(2.0f * static_cast<float>(spec.layers));
    gate_up_ = params.add(p + "gate_proj.weight", {width_, dim_}, ParamInit::kNormal, std, true);
    params.add(p + "up_proj.weight", {width_, dim_}, ParamInit::kNormal, std, true);
    down_ = params.add(p + "down_proj.weight", {dim_, width_}, ParamInit::kNormal, out_std, true);
  }

  void forward(const float* x, float* y, int64_t num_tokens, const FfnStepOptions&) override {
    const int64_t N = num_tokens;
    buffer_reserve(act_, be_, N * 2 * width_);
    buffer_reserve(hidden_, be_, N * width_);
    buffer_reserve(out_, be_, N * dim_);
    slice_ = ExpertSlice{};
    slice_.rows = N;
    slice_.width = width_;
    slice_.x = x;
    slice_.w_gate_up = ps_.data(gate_up_);
    slice_.w_down = ps_.data(down_);
    slice_.act = act_.data();
    slice_.hidden = hidden_.data();
    slice_.y = out_.data();
    be_.grouped_swiglu_forward({.dim = dim_, .slices = &slice_, .num_slices = 1});
    be_.axpy(N * dim_, 1.0f, out_.data(), y);
  }

  void backward(const float*, const float* dy, float* dx, int64_t num_tokens,
                FfnWorkspace& ws) override {
    const int64_t N = num_tokens;
    buffer_reserve(ws.d_act, be_, N * 2 * width_);
    buffer_reserve(ws.d_hidden, be_, N * width_);
    buffer_reserve(ws.d_x, be_, N * dim_);
    slice_.d_y = dy;
    slice_.d_x = ws.d_x.data();
    slice_.d_act = ws.d_act.data();
    slice_.d_hidden = ws.d_hidden.data();
    slice_.d_w_gate_up = ps_.grad(gate_up_);
    slice_.d_w_down = ps_.grad(down_);
    be_.grouped_swiglu_backward({.dim = dim_, .slices = &slice_, .num_slices = 1});
    be_.axpy(N * dim_, 1.0f, ws.d_x.data(), dx);
  }

  int64_t expert_params() const override { return 3 * dim_ * width_; }

 private:
  Backend& be_;
  ParamStore& ps_;
  int64_t dim_, width_;
  int gate_up_ = -1, down_ = -1;
  ExpertSlice slice_;
  Buffer<float> act_;     // (N, 2W)
  Buffer<float> hidden_;  // (N, W)
  Buffer<float> out_;     // (N, D)
};

}  // namespace

std::unique_ptr<FeedForward> ffn_create(const ModelSpec& spec, int layer, Backend& backend,
                                        ParamStore& params, const ParallelContext& parallel) {
  // A dense FFN is replicated on every rank (data parallel).
  if (spec.ffn.kind == "dense") return std::make_unique<DenseFfn>(spec, layer, backend, params);
  return std::make_unique<RoutedFfn>(spec, layer, backend, params, parallel);
}

}  // namespace mohge
