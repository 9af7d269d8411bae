// The routed FFN: MoHGE (two-level router, heterogeneous expert groups) and the uniform MoE
// baseline, with shared experts. Forward: route → dispatch (sort tokens by expert) → all
// experts and shared experts in one grouped pass → combine. Backward mirrors it.
//
// Shape legend: N tokens, D model width, G groups, n experts per group, E routed experts,
// K kept experts per token, M = N·K, S shared experts, W an expert's width.
#include <algorithm>
#include <cmath>

#include "kernels/check.hpp"
#include "kernels/linear.hpp"
#include "worker/model/ffn.hpp"
#include "worker/model/routed_ffn.hpp"

namespace mohge {

namespace {

std::string layer_prefix(int layer) {
  return "model.layers." + std::to_string(layer) + ".mlp.";
}

}  // namespace

RoutedFfn::RoutedFfn(const ModelSpec& spec, int layer, Backend& backend, ParamStore& params)
    : be_(backend), ps_(params), f_(spec.ffn), dim_(spec.d_model) {
  mohge_ = f_.kind == "mohge";
  const int64_t D = dim_, E = f_.num_experts();
  const int64_t G = mohge_ ? f_.groups : 1;
  const std::string p = layer_prefix(layer);
  const float std = static_cast<float>(spec.init_std);
  const float out_std = std / std::sqrt(2.0f * static_cast<float>(spec.layers));

  // Router weights, registered adjacently so one GEMM computes all logits.
  if (mohge_) {
    router_param_ = params.add(p + "group_gate.weight", {G, D}, ParamInit::kNormal, std, true);
    params.add(p + "expert_gate.weight", {E, D}, ParamInit::kNormal, std, true);
    logits_width_ = G + E;
  } else {
    router_param_ = params.add(p + "gate.weight", {E, D}, ParamInit::kNormal, std, true);
    logits_width_ = E;
  }
  auto add_expert = [&](const std::string& name, int64_t width) {
    ExpertParams e;
    e.width = width;
    e.gate_up = params.add(name + ".gate_proj.weight", {width, D}, ParamInit::kNormal, std, true);
    params.add(name + ".up_proj.weight", {width, D}, ParamInit::kNormal, std, true);
    e.down = params.add(name + ".down_proj.weight", {D, width}, ParamInit::kNormal, out_std, true);
    return e;
  };
  for (int e = 0; e < E; ++e) {
    const std::string name = mohge_ ? p + "experts." + std::to_string(e / f_.experts_per_group) +
                                          "." + std::to_string(e % f_.experts_per_group)
                                    : p + "experts." + std::to_string(e);
    experts_.push_back(add_expert(name, f_.expert_hidden_width(e)));
  }
  for (int s = 0; s < f_.shared_experts; ++s)
    shared_.push_back(add_expert(p + "shared_experts." + std::to_string(s), f_.shared_width));

  // Group cost weights of L_G.
  if (mohge_) {
    const double wmax = *std::max_element(f_.widths.begin(), f_.widths.end());
    const double wmin = *std::min_element(f_.widths.begin(), f_.widths.end());
    for (int w : f_.widths) {
      group_cost_.push_back(f_.group_loss == "paper"
                                ? static_cast<float>(w / wmax)
                                : static_cast<float>((w - wmin + 1024.0) / 1024.0));
    }
  } else {
    group_cost_.assign(1, 0.0f);
  }
  routing_.group_tokens.assign(static_cast<size_t>(G), 0.0);
  routing_.expert_assignments.assign(static_cast<size_t>(E), 0.0);
  routing_.group_assignments.assign(static_cast<size_t>(G), 0.0);
}

int64_t RoutedFfn::expert_params() const {
  int64_t total = 0;
  for (const auto& e : experts_) total += 3 * dim_ * e.width;
  for (const auto& e : shared_) total += 3 * dim_ * e.width;
  return total;
}

RouterParams RoutedFfn::router_params(int64_t num_tokens) {
  RouterParams r;
  r.kind = !mohge_                            ? RouterKind::kMoeSoftmax
           : f_.router_variant == "reference" ? RouterKind::kMohgeReference
                                              : RouterKind::kMohgePaper;
  r.num_tokens = num_tokens;
  r.num_groups = mohge_ ? f_.groups : 1;
  r.experts_per_group = mohge_ ? f_.experts_per_group : f_.experts;
  r.top_groups = mohge_ ? f_.top_groups : 1;
  r.top_experts = f_.top_experts;
  r.logits = logits_.data();
  r.topk_index = topk_index_.data();
  r.topk_weight = topk_weight_.data();
  r.group_selected = group_selected_.data();
  return r;
}

void RoutedFfn::build_slices(int64_t num_tokens, const float* x) {
  const int64_t D = dim_, E = static_cast<int64_t>(experts_.size());
  const auto& off = plan_.expert_offsets;
  // Activation storage of the routed experts: Σ_e rows_e·2W_e and Σ_e rows_e·W_e.
  int64_t act_total = 0, hid_total = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[static_cast<size_t>(e) + 1] - off[static_cast<size_t>(e)];
    act_total += rows * 2 * experts_[static_cast<size_t>(e)].width;
    hid_total += rows * experts_[static_cast<size_t>(e)].width;
  }
  for (const auto& s : shared_) {
    act_total += num_tokens * 2 * s.width;
    hid_total += num_tokens * s.width;
  }
  buffer_reserve(act_, be_, act_total);
  buffer_reserve(hidden_, be_, hid_total);
  buffer_reserve(shared_y_, be_, static_cast<int64_t>(shared_.size()) * num_tokens * D);
  act_offset_.clear();
  hidden_offset_.clear();
  slices_.clear();
  int64_t a = 0, h = 0;
  auto add = [&](const ExpertParams& p, int64_t rows, const float* in, float* out) {
    ExpertSlice s;
    s.rows = rows;
    s.width = p.width;
    s.x = in;
    s.w_gate_up = ps_.data(p.gate_up);
    s.w_down = ps_.data(p.down);
    s.act = act_.data() + a;
    s.hidden = hidden_.data() + h;
    s.y = out;
    act_offset_.push_back(a);
    hidden_offset_.push_back(h);
    a += rows * 2 * p.width;
    h += rows * p.width;
    slices_.push_back(s);
  };
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = off[static_cast<size_t>(e)], r1 = off[static_cast<size_t>(e) + 1];
    add(experts_[static_cast<size_t>(e)], r1 - r0, x_sorted_.data() + r0 * D,
        y_sorted_.data() + r0 * D);
  }
  for (size_t s = 0; s < shared_.size(); ++s)
    add(shared_[s], num_tokens, x, shared_y_.data() + static_cast<int64_t>(s) * num_tokens * D);
}

void RoutedFfn::forward(const float* x, float* y, int64_t num_tokens, const FfnStepOptions& opt) {
  const int64_t N = num_tokens, D = dim_, K = f_.top_experts, M = N * K;
  const int64_t E = static_cast<int64_t>(experts_.size());
  const int64_t G = static_cast<int64_t>(routing_.group_tokens.size());
  buffer_reserve(logits_, be_, N * logits_width_);
  buffer_reserve(topk_index_, be_, M);
  buffer_reserve(topk_weight_, be_, M);
  buffer_reserve(group_selected_, be_, N * G);
  buffer_reserve(x_sorted_, be_, M * D);
  buffer_reserve(y_sorted_, be_, M * D);

  // Route.
  linear_forward(be_, x, ps_.data(router_param_), logits_.data(), N, D, logits_width_);
  const RouterParams rp = router_params(N);
  be_.router_forward(rp);
  group_count_.assign(static_cast<size_t>(G), 0.0);
  expert_count_.assign(static_cast<size_t>(E), 0.0);
  be_.router_count(rp, group_count_.data(), expert_count_.data());
  aux_ = RouterAuxParams{};
  aux_.group_loss =
      f_.group_loss == "reference" ? GroupLossKind::kReference : GroupLossKind::kPaper;
  aux_.expert_loss =
      f_.expert_loss == "reference" ? ExpertLossKind::kReference : ExpertLossKind::kPaper;
  aux_.alpha_group = mohge_ && opt.group_loss_on ? static_cast<float>(f_.alpha_group) : 0.0f;
  aux_.alpha_expert = static_cast<float>(mohge_ ? f_.alpha_expert : f_.alpha_balance);
  aux_.total_tokens = static_cast<double>(N);
  aux_.group_cost = group_cost_.data();
  aux_.group_count = group_count_.data();
  aux_.expert_count = expert_count_.data();
  const RouterAuxValues aux = be_.router_aux_forward(rp, aux_);

  // Dispatch, experts, combine.
  be_.dispatch_plan(topk_index_.data(), N, static_cast<int32_t>(K), static_cast<int32_t>(E),
                    &plan_);
  be_.dispatch_forward({.dim = D, .plan = &plan_, .x = x, .x_sorted = x_sorted_.data()});
  build_slices(N, x);
  be_.grouped_swiglu_forward(
      {.dim = D, .slices = slices_.data(), .num_slices = static_cast<int64_t>(slices_.size())});
  for (size_t s = 0; s < shared_.size(); ++s)
    be_.axpy(N * D, 1.0f, shared_y_.data() + static_cast<int64_t>(s) * N * D, y);
  be_.combine_forward({.dim = D,
                       .plan = &plan_,
                       .weight = topk_weight_.data(),
                       .y_sorted = y_sorted_.data(),
                       .y = y});

  // Routing statistics.
  last_tokens_ = N;
  routing_.num_tokens = static_cast<double>(N);
  routing_.aux_group = aux.group;
  routing_.aux_expert = aux.expert;
  routing_.group_tokens = group_count_;
  routing_.expert_assignments = expert_count_;
  std::fill(routing_.group_assignments.begin(), routing_.group_assignments.end(), 0.0);
  double routed_params = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t g = mohge_ ? e / f_.experts_per_group : 0;
    routing_.group_assignments[static_cast<size_t>(g)] += expert_count_[static_cast<size_t>(e)];
    routed_params += expert_count_[static_cast<size_t>(e)] * 3.0 * static_cast<double>(D) *
                     static_cast<double>(experts_[static_cast<size_t>(e)].width);
  }
  double shared_params = 0.0;
  for (const auto& s : shared_) shared_params += 3.0 * static_cast<double>(D * s.width);
  routing_.activated_expert_params = routed_params / static_cast<double>(N) + shared_params;
}

bool RoutedFfn::routing_decisions(std::vector<int32_t>* index, std::vector<float>* weight) const {
  const size_t M = static_cast<size_t>(last_tokens_ * f_.top_experts);
  index->resize(M);
  weight->resize(M);
  be_.copy_to_host(index->data(), topk_index_.data(), M * sizeof(int32_t));
  be_.copy_to_host(weight->data(), topk_weight_.data(), M * sizeof(float));
  return true;
}

void RoutedFfn::backward(const float* x, const float* dy, float* dx, int64_t num_tokens,
                         FfnWorkspace& ws) {
  const int64_t N = num_tokens, D = dim_, K = f_.top_experts, M = N * K;
  const int64_t E = static_cast<int64_t>(experts_.size());
  const int64_t S = static_cast<int64_t>(shared_.size());
  buffer_reserve(ws.d_y_sorted, be_, M * D);
  buffer_reserve(ws.d_x_sorted, be_, M * D);
  buffer_reserve(ws.d_weight, be_, M);
  buffer_reserve(ws.d_logits, be_, N * logits_width_);
  buffer_reserve(ws.d_x, be_, std::max<int64_t>(1, S) * N * D);
  buffer_reserve(ws.d_act, be_, act_.size());
  buffer_reserve(ws.d_hidden, be_, hidden_.size());

  be_.combine_backward({.dim = D,
                        .plan = &plan_,
                        .weight = topk_weight_.data(),
                        .y_sorted = y_sorted_.data(),
                        .d_y = dy,
                        .d_y_sorted = ws.d_y_sorted.data(),
                        .d_weight = ws.d_weight.data()});
  for (size_t i = 0; i < slices_.size(); ++i) {
    ExpertSlice& s = slices_[i];
    const bool routed = static_cast<int64_t>(i) < E;
    const ExpertParams& p = routed ? experts_[i] : shared_[i - static_cast<size_t>(E)];
    if (routed) {
      const int64_t r0 = plan_.expert_offsets[i];
      s.d_y = ws.d_y_sorted.data() + r0 * D;
      s.d_x = ws.d_x_sorted.data() + r0 * D;
    } else {
      s.d_y = dy;
      s.d_x = ws.d_x.data() + (static_cast<int64_t>(i) - E) * N * D;
    }
    s.d_act = ws.d_act.data() + act_offset_[i];
    s.d_hidden = ws.d_hidden.data() + hidden_offset_[i];
    s.d_w_gate_up = ps_.grad(p.gate_up);
    s.d_w_down = ps_.grad(p.down);
  }
  be_.grouped_swiglu_backward(
      {.dim = D, .slices = slices_.data(), .num_slices = static_cast<int64_t>(slices_.size())});
  be_.dispatch_backward({.dim = D, .plan = &plan_, .d_x_sorted = ws.d_x_sorted.data(), .d_x = dx});
  for (int64_t s = 0; s < S; ++s) be_.axpy(N * D, 1.0f, ws.d_x.data() + s * N * D, dx);

  RouterParams rp = router_params(N);
  rp.d_topk_weight = ws.d_weight.data();
  rp.d_logits = ws.d_logits.data();
  be_.router_backward(rp, aux_);
  linear_backward(be_, x, ps_.data(router_param_), ws.d_logits.data(), dx, ps_.grad(router_param_),
                  N, D, logits_width_, 1.0f);
}

}  // namespace mohge
