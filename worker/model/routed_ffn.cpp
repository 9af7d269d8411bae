// The routed FFN: MoHGE (two-level router, heterogeneous expert groups) and the uniform MoE
// baseline, with shared experts.
//
// Forward: route → sort assignments by expert (dispatch) → [distributed: exchange rows with the
// experts' owners] → the owned experts and the shared experts in one grouped pass →
// [distributed: rows back to their sources] → combine. Backward mirrors it: the backward of
// the exchange out is the exchange back and vice versa. With several ranks the router counts
// (and so the aux-loss frequencies f) are summed over ranks, so every rank trains exactly as
// the single process does on the global batch.
//
// Shape legend: N tokens, D model width, G groups, n experts per group, E routed experts,
// K kept experts per token, M = N·K, L rows this rank's experts compute, S shared experts,
// W an expert's width.
#include "worker/model/routed_ffn.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "kernels/check.hpp"
#include "kernels/linear.hpp"

namespace mohge {

namespace {

std::string layer_prefix(int layer) {
  return "model.layers." + std::to_string(layer) + ".mlp.";
}

class Stopwatch {
 public:
  double lap_ms() {
    const auto now = std::chrono::steady_clock::now();
    const double ms = std::chrono::duration<double, std::milli>(now - last_).count();
    last_ = now;
    return ms;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace

std::string ffn_expert_name(const FfnSpec& ffn, int layer, int expert) {
  const std::string p = layer_prefix(layer) + "experts.";
  if (ffn.kind == "mohge") {
    return p + std::to_string(expert / ffn.experts_per_group) + "." +
           std::to_string(expert % ffn.experts_per_group);
  }
  return p + std::to_string(expert);
}

RoutedFfn::RoutedFfn(const ModelSpec& spec, int layer, Backend& backend, ParamStore& params,
                     const ParallelContext& parallel)
    : be_(backend),
      ps_(params),
      parallel_(parallel),
      layer_(layer),
      f_(spec.ffn),
      dim_(spec.d_model) {
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
  if (f_.balance == "bias") {
    // DeepSeek-V3's e_score_correction_bias: state saved with the model, not trained.
    bias_param_ = params.add(p + "expert_bias", {E}, ParamInit::kZeros, 0.0f, false);
    params.set_trainable(bias_param_, false);
  }
  auto add_expert = [&](const std::string& name, int64_t width, bool replicated) {
    ExpertParams e;
    e.width = width;
    e.gate_up = params.add(name + ".gate_proj.weight", {width, D}, ParamInit::kNormal, std, true,
                           replicated);
    params.add(name + ".up_proj.weight", {width, D}, ParamInit::kNormal, std, true, replicated);
    e.down = params.add(name + ".down_proj.weight", {D, width}, ParamInit::kNormal, out_std, true,
                        replicated);
    return e;
  };
  if (parallel_.distributed()) {
    MOHGE_CHECK(parallel_.placement != nullptr, "a distributed RoutedFfn needs a placement");
    const ExpertPlacement& placement = parallel_.placement->layer(layer);
    owned_ = placement.experts[static_cast<size_t>(parallel_.rank())];
    exchange_ =
        std::make_unique<TokenExchange>(*parallel_.comm, parallel_.data(), be_, placement, D);
    const std::vector<int32_t>& slot = exchange_->slot_of_expert();
    slot_of_expert_ = Buffer<int32_t>(be_, static_cast<int64_t>(slot.size()));
    be_.copy_from_host(slot_of_expert_.data(), slot.data(), sizeof(int32_t) * slot.size());
  } else {
    for (int e = 0; e < E; ++e) owned_.push_back(e);
  }
  for (int e : owned_)
    experts_.push_back(add_expert(ffn_expert_name(f_, layer, e), f_.expert_hidden_width(e),
                                  !parallel_.distributed()));
  for (int s = 0; s < f_.shared_experts; ++s)
    shared_.push_back(add_expert(p + "shared_experts." + std::to_string(s), f_.shared_width, true));

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
  r.expert_bias = bias_param_ >= 0 ? ps_.data(bias_param_) : nullptr;
  return r;
}

void RoutedFfn::update_bias() {
  if (bias_param_ < 0) return;
  const int64_t E = f_.num_experts();
  const int64_t n = mohge_ ? f_.experts_per_group : E;  // experts balanced against each other
  // The counts are global (summed over ranks), so every rank makes the same update.
  std::vector<float> bias(static_cast<size_t>(E));
  be_.copy_to_host(bias.data(), ps_.data(bias_param_), sizeof(float) * bias.size());
  const float rate = static_cast<float>(f_.bias_rate);
  for (int64_t g0 = 0; g0 < E; g0 += n) {
    double mean = 0.0;
    for (int64_t e = g0; e < g0 + n; ++e) mean += expert_count_[static_cast<size_t>(e)];
    mean /= static_cast<double>(n);
    for (int64_t e = g0; e < g0 + n; ++e) {
      const double error = mean - expert_count_[static_cast<size_t>(e)];
      bias[static_cast<size_t>(e)] += error > 0 ? rate : error < 0 ? -rate : 0.0f;
    }
  }
  be_.copy_from_host(ps_.data(bias_param_), bias.data(), sizeof(float) * bias.size());
}

void RoutedFfn::build_slices(int64_t num_tokens, const float* x, const float* rows_in,
                             float* rows_out, const std::vector<int64_t>& offsets) {
  const int64_t D = dim_, owned = static_cast<int64_t>(experts_.size());
  // Activation storage: Σ rows·2W and Σ rows·W over owned experts, then the shared experts.
  int64_t act_total = 0, hid_total = 0;
  for (int64_t j = 0; j < owned; ++j) {
    const int64_t rows = offsets[static_cast<size_t>(j) + 1] - offsets[static_cast<size_t>(j)];
    act_total += rows * 2 * experts_[static_cast<size_t>(j)].width;
    hid_total += rows * experts_[static_cast<size_t>(j)].width;
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
  for (int64_t j = 0; j < owned; ++j) {
    const int64_t r0 = offsets[static_cast<size_t>(j)], r1 = offsets[static_cast<size_t>(j) + 1];
    add(experts_[static_cast<size_t>(j)], r1 - r0, rows_in + r0 * D, rows_out + r0 * D);
  }
  for (size_t s = 0; s < shared_.size(); ++s)
    add(shared_[s], num_tokens, x, shared_y_.data() + static_cast<int64_t>(s) * num_tokens * D);
}

void RoutedFfn::placement_changed() {
  if (!exchange_) return;
  const ExpertPlacement& placement = parallel_.placement->layer(layer_);
  const std::vector<int>& owned = placement.experts[static_cast<size_t>(parallel_.rank())];
  MOHGE_CHECK(owned.size() == owned_.size(), "a re-placement changed the experts per rank");
  // Two passes: a slot may take the name another slot still holds.
  for (size_t j = 0; j < owned.size(); ++j) {
    const int index[] = {experts_[j].gate_up, experts_[j].gate_up + 1, experts_[j].down};
    for (int i = 0; i < 3; ++i) ps_.rename(index[i], ps_.info(index[i]).name + " (moving)");
  }
  for (size_t j = 0; j < owned.size(); ++j) {
    MOHGE_CHECK(f_.expert_hidden_width(owned[j]) == experts_[j].width,
                "a re-placement changed the width of slot " << j);
    const std::string name = ffn_expert_name(f_, layer_, owned[j]);
    ps_.rename(experts_[j].gate_up, name + ".gate_proj.weight");
    ps_.rename(experts_[j].gate_up + 1, name + ".up_proj.weight");
    ps_.rename(experts_[j].down, name + ".down_proj.weight");
  }
  owned_ = owned;
  exchange_->set_placement(placement);
  const std::vector<int32_t>& slot = exchange_->slot_of_expert();
  be_.copy_from_host(slot_of_expert_.data(), slot.data(), sizeof(int32_t) * slot.size());
}

void RoutedFfn::reduce_counts(int64_t num_tokens, const FfnStepOptions& opt) {
  const size_t G = routing_.group_tokens.size(), E = routing_.expert_assignments.size();
  group_count_.assign(G, 0.0);
  expert_count_.assign(E, 0.0);
  const RouterParams rp = router_params(num_tokens);
  be_.router_count(rp, group_count_.data(), expert_count_.data());
  global_tokens_ = static_cast<double>(num_tokens);
  if (parallel_.distributed()) {
    // One all-reduce: [group counts | expert counts | tokens].
    std::vector<double> all(group_count_);
    all.insert(all.end(), expert_count_.begin(), expert_count_.end());
    all.push_back(global_tokens_);
    collective_check(
        parallel_.comm->all_reduce(all.data(), static_cast<int64_t>(all.size()), ReduceOp::kSum));
    std::copy_n(all.begin(), G, group_count_.begin());
    std::copy_n(all.begin() + static_cast<std::ptrdiff_t>(G), E, expert_count_.begin());
    global_tokens_ = all.back();
  }
  aux_ = RouterAuxParams{};
  aux_.group_loss =
      f_.group_loss == "reference" ? GroupLossKind::kReference : GroupLossKind::kPaper;
  aux_.expert_loss =
      f_.expert_loss == "reference" ? ExpertLossKind::kReference : ExpertLossKind::kPaper;
  aux_.alpha_group = mohge_ && opt.group_loss_on ? static_cast<float>(f_.alpha_group) : 0.0f;
  // balance "bias" replaces L_E (MoE: the switch loss) by the selection bias.
  aux_.alpha_expert =
      f_.balance == "bias" ? 0.0f : static_cast<float>(mohge_ ? f_.alpha_expert : f_.alpha_balance);
  aux_.total_tokens = global_tokens_;
  aux_.group_cost = group_cost_.data();
  aux_.group_count = group_count_.data();
  aux_.expert_count = expert_count_.data();
}

void RoutedFfn::forward(const float* x, float* y, int64_t num_tokens, const FfnStepOptions& opt) {
  const int64_t N = num_tokens, D = dim_, K = f_.top_experts, M = N * K;
  const int64_t E = f_.num_experts();
  const int64_t G = static_cast<int64_t>(routing_.group_tokens.size());
  times_ = LayerTimes{};
  if (exchange_) exchange_->reset_stats();
  Stopwatch clock;
  buffer_reserve(logits_, be_, N * logits_width_);
  buffer_reserve(topk_index_, be_, M);
  buffer_reserve(topk_weight_, be_, M);
  buffer_reserve(group_selected_, be_, N * G);
  buffer_reserve(x_sorted_, be_, M * D);
  buffer_reserve(y_sorted_, be_, M * D);

  // Route; counts over all ranks; this rank's share of the aux losses.
  linear_forward(be_, x, ps_.data(router_param_), logits_.data(), N, D, logits_width_);
  be_.router_forward(router_params(N));
  reduce_counts(N, opt);
  const RouterAuxValues aux = be_.router_aux_forward(router_params(N), aux_);

  // Dispatch to the experts (their owners), run them and the shared experts, combine.
  const int32_t* order = topk_index_.data();
  if (exchange_) {
    buffer_reserve(slot_index_, be_, M);
    be_.remap_index(order, M, slot_of_expert_.data(), static_cast<int32_t>(E), slot_index_.data());
    order = slot_index_.data();
  }
  be_.dispatch_plan(order, N, static_cast<int32_t>(K), static_cast<int32_t>(E), &plan_);
  be_.dispatch_forward({.dim = D, .plan = &plan_, .x = x, .x_sorted = x_sorted_.data()});
  const float* rows_in = x_sorted_.data();
  float* rows_out = y_sorted_.data();
  const std::vector<int64_t>* offsets = &plan_.expert_offsets;
  if (exchange_) {
    times_.compute_ms += clock.lap_ms();
    collective_check(exchange_->plan(plan_));
    buffer_reserve(x_local_, be_, exchange_->local_rows() * D);
    buffer_reserve(y_local_, be_, exchange_->local_rows() * D);
    collective_check(exchange_->dispatch(x_sorted_.data(), x_local_.data()));
    clock.lap_ms();
    rows_in = x_local_.data();
    rows_out = y_local_.data();
    offsets = &exchange_->local_offsets();
  }
  build_slices(N, x, rows_in, rows_out, *offsets);
  be_.grouped_swiglu_forward(
      {.dim = D, .slices = slices_.data(), .num_slices = static_cast<int64_t>(slices_.size())});
  if (exchange_) {
    times_.compute_ms += clock.lap_ms();
    collective_check(exchange_->combine(y_local_.data(), y_sorted_.data()));
    clock.lap_ms();
  }
  for (size_t s = 0; s < shared_.size(); ++s)
    be_.axpy(N * D, 1.0f, shared_y_.data() + static_cast<int64_t>(s) * N * D, y);
  be_.combine_forward({.dim = D,
                       .plan = &plan_,
                       .weight = topk_weight_.data(),
                       .y_sorted = y_sorted_.data(),
                       .y = y});
  times_.compute_ms += clock.lap_ms();

  last_tokens_ = N;
  routing_.aux_group = aux.group;
  routing_.aux_expert = aux.expert;
  record_routing();
}

void RoutedFfn::record_routing() {
  const int64_t E = f_.num_experts();
  routing_.num_tokens = global_tokens_;
  routing_.group_tokens = group_count_;
  routing_.expert_assignments = expert_count_;
  std::fill(routing_.group_assignments.begin(), routing_.group_assignments.end(), 0.0);
  double routed_params = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t g = mohge_ ? e / f_.experts_per_group : 0;
    routing_.group_assignments[static_cast<size_t>(g)] += expert_count_[static_cast<size_t>(e)];
    routed_params += expert_count_[static_cast<size_t>(e)] * 3.0 * static_cast<double>(dim_) *
                     f_.expert_hidden_width(static_cast<int>(e));
  }
  double shared_params = 0.0;
  for (const auto& s : shared_) shared_params += 3.0 * static_cast<double>(dim_ * s.width);
  routing_.activated_expert_params = routed_params / global_tokens_ + shared_params;
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
  const int64_t owned = static_cast<int64_t>(experts_.size());
  const int64_t S = static_cast<int64_t>(shared_.size());
  const int64_t L = exchange_ ? exchange_->local_rows() : M;
  Stopwatch clock;
  buffer_reserve(ws.d_y_sorted, be_, M * D);
  buffer_reserve(ws.d_x_sorted, be_, M * D);
  buffer_reserve(ws.d_weight, be_, M);
  buffer_reserve(ws.d_logits, be_, N * logits_width_);
  buffer_reserve(ws.d_x, be_, std::max<int64_t>(1, S) * N * D);
  buffer_reserve(ws.d_act, be_, act_.size());
  buffer_reserve(ws.d_hidden, be_, hidden_.size());
  if (exchange_) {
    buffer_reserve(ws.d_y_local, be_, L * D);
    buffer_reserve(ws.d_x_local, be_, L * D);
  }

  be_.combine_backward({.dim = D,
                        .plan = &plan_,
                        .weight = topk_weight_.data(),
                        .y_sorted = y_sorted_.data(),
                        .d_y = dy,
                        .d_y_sorted = ws.d_y_sorted.data(),
                        .d_weight = ws.d_weight.data()});
  // The backward of combine is a dispatch: output gradients go to the experts' owners.
  const float* d_rows_in = ws.d_y_sorted.data();
  float* d_rows_out = ws.d_x_sorted.data();
  const std::vector<int64_t>& offsets =
      exchange_ ? exchange_->local_offsets() : plan_.expert_offsets;
  if (exchange_) {
    times_.compute_ms += clock.lap_ms();
    collective_check(exchange_->dispatch(ws.d_y_sorted.data(), ws.d_y_local.data()));
    clock.lap_ms();
    d_rows_in = ws.d_y_local.data();
    d_rows_out = ws.d_x_local.data();
  }
  for (size_t i = 0; i < slices_.size(); ++i) {
    ExpertSlice& s = slices_[i];
    const bool routed = static_cast<int64_t>(i) < owned;
    const ExpertParams& p = routed ? experts_[i] : shared_[i - static_cast<size_t>(owned)];
    if (routed) {
      const int64_t r0 = offsets[i];
      s.d_y = d_rows_in + r0 * D;
      s.d_x = d_rows_out + r0 * D;
    } else {
      s.d_y = dy;
      s.d_x = ws.d_x.data() + (static_cast<int64_t>(i) - owned) * N * D;
    }
    s.d_act = ws.d_act.data() + act_offset_[i];
    s.d_hidden = ws.d_hidden.data() + hidden_offset_[i];
    s.d_w_gate_up = ps_.grad(p.gate_up);
    s.d_w_down = ps_.grad(p.down);
  }
  be_.grouped_swiglu_backward(
      {.dim = D, .slices = slices_.data(), .num_slices = static_cast<int64_t>(slices_.size())});
  // The backward of dispatch is a combine: input gradients go back to the rows' sources.
  if (exchange_) {
    times_.compute_ms += clock.lap_ms();
    collective_check(exchange_->combine(ws.d_x_local.data(), ws.d_x_sorted.data()));
    clock.lap_ms();
  }
  be_.dispatch_backward({.dim = D, .plan = &plan_, .d_x_sorted = ws.d_x_sorted.data(), .d_x = dx});
  for (int64_t s = 0; s < S; ++s) be_.axpy(N * D, 1.0f, ws.d_x.data() + s * N * D, dx);

  RouterParams rp = router_params(N);
  rp.d_topk_weight = ws.d_weight.data();
  rp.d_logits = ws.d_logits.data();
  be_.router_backward(rp, aux_);
  linear_backward(be_, x, ps_.data(router_param_), ws.d_logits.data(), dx, ps_.grad(router_param_),
                  N, D, logits_width_, 1.0f);
  // Training steps only (evaluation runs no backward): the bias follows this step's loads.
  update_bias();
  times_.compute_ms += clock.lap_ms();
  if (exchange_) {
    times_.comm_ms = exchange_->comm_ms();
    times_.comm_bytes = exchange_->comm_bytes();
  }
}

}  // namespace mohge
