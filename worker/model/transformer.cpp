#include "worker/model/transformer.hpp"

#include <cmath>

#include "kernels/check.hpp"
#include "kernels/linear.hpp"

namespace mohge {

Transformer::Transformer(const ModelSpec& spec, Backend& backend, const ParallelContext& parallel)
    : spec_(spec), be_(backend) {
  const int64_t D = spec.d_model, V = spec.vocab_size;
  const float std = static_cast<float>(spec.init_std);
  const float out_std = std / std::sqrt(2.0f * static_cast<float>(spec.layers));
  embed_ = params_.add("model.embed_tokens.weight", {V, D}, ParamInit::kNormal, std, true);
  layers_.resize(static_cast<size_t>(spec.layers));
  for (int l = 0; l < spec.layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.ln1 = params_.add(p + "input_layernorm.weight", {D}, ParamInit::kOnes, 0.0f, false);
    L.qkv = params_.add(p + "self_attn.q_proj.weight", {D, D}, ParamInit::kNormal, std, true);
    params_.add(p + "self_attn.k_proj.weight", {D, D}, ParamInit::kNormal, std, true);
    params_.add(p + "self_attn.v_proj.weight", {D, D}, ParamInit::kNormal, std, true);
    L.o = params_.add(p + "self_attn.o_proj.weight", {D, D}, ParamInit::kNormal, out_std, true);
    L.ln2 = params_.add(p + "post_attention_layernorm.weight", {D}, ParamInit::kOnes, 0.0f, false);
    L.ffn = ffn_create(spec, l, backend, params_, parallel);
  }
  norm_ = params_.add("model.norm.weight", {D}, ParamInit::kOnes, 0.0f, false);
  lm_head_ = spec.tie_embeddings
                 ? embed_
                 : params_.add("lm_head.weight", {V, D}, ParamInit::kNormal, std, true);
  params_.allocate(backend);
}

Transformer::~Transformer() = default;

void Transformer::reserve(int64_t batch, int64_t seq) {
  const int64_t N = batch * seq, D = spec_.d_model, V = spec_.vocab_size, H = spec_.heads;
  if (batch == batch_ && seq == seq_) return;
  batch_ = batch;
  seq_ = seq;
  for (Layer& L : layers_) {
    L.x.resize(be_, N * D);
    L.ln1_out.resize(be_, N * D);
    L.rstd1.resize(be_, N);
    L.qkv_out.resize(be_, N * 3 * D);
    L.probs.resize(be_, batch * H * seq * seq);
    L.attn.resize(be_, N * D);
    L.h.resize(be_, N * D);
    L.ln2_out.resize(be_, N * D);
    L.rstd2.resize(be_, N);
  }
  tokens_.resize(be_, N);
  targets_.resize(be_, N);
  x_final_.resize(be_, N * D);
  lnf_out_.resize(be_, N * D);
  rstdf_.resize(be_, N);
  logits_.resize(be_, N * V);
  lse_.resize(be_, N);
  losses_.resize(be_, N);
  d_res_.resize(be_, N * D);
  d_a_.resize(be_, N * D);
  d_b_.resize(be_, N * D);
  d_qkv_.resize(be_, N * 3 * D);
  d_scores_.resize(be_, static_cast<int64_t>(be_.num_threads()) * seq * seq);
}

ForwardResult Transformer::forward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                   int64_t seq, const FfnStepOptions& opt) {
  MOHGE_CHECK(seq >= 1 && seq <= spec_.seq_len,
              "sequence length " << seq << " outside [1, " << spec_.seq_len << "]");
  reserve(batch, seq);
  const int64_t N = batch * seq, D = spec_.d_model, V = spec_.vocab_size, H = spec_.heads;
  be_.copy_from_host(tokens_.data(), tokens, sizeof(int32_t) * static_cast<size_t>(N));
  has_targets_ = targets != nullptr;
  if (has_targets_)
    be_.copy_from_host(targets_.data(), targets, sizeof(int32_t) * static_cast<size_t>(N));

  float* first = layers_.empty() ? x_final_.data() : layers_[0].x.data();
  be_.embedding_forward({.num_tokens = N,
                         .dim = D,
                         .vocab = V,
                         .tokens = tokens_.data(),
                         .table = params_.data(embed_),
                         .out = first});
  const float eps = static_cast<float>(spec_.norm_eps);
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = layers_[l];
    be_.rmsnorm_forward({.rows = N,
                         .dim = D,
                         .eps = eps,
                         .x = L.x.data(),
                         .weight = params_.data(L.ln1),
                         .y = L.ln1_out.data(),
                         .rstd = L.rstd1.data()});
    linear_forward(be_, L.ln1_out.data(), params_.data(L.qkv), L.qkv_out.data(), N, D, 3 * D);
    be_.attention_forward({.batch = batch,
                           .seq = seq,
                           .heads = H,
                           .head_dim = D / H,
                           .rope_base = static_cast<float>(spec_.rope_base),
                           .qkv = L.qkv_out.data(),
                           .probs = L.probs.data(),
                           .out = L.attn.data()});
    be_.copy(L.h.data(), L.x.data(), N * D);
    linear_forward(be_, L.attn.data(), params_.data(L.o), L.h.data(), N, D, D, 1.0f);
    be_.rmsnorm_forward({.rows = N,
                         .dim = D,
                         .eps = eps,
                         .x = L.h.data(),
                         .weight = params_.data(L.ln2),
                         .y = L.ln2_out.data(),
                         .rstd = L.rstd2.data()});
    float* next = l + 1 < layers_.size() ? layers_[l + 1].x.data() : x_final_.data();
    be_.copy(next, L.h.data(), N * D);
    L.ffn->forward(L.ln2_out.data(), next, N, opt);
  }
  be_.rmsnorm_forward({.rows = N,
                       .dim = D,
                       .eps = eps,
                       .x = x_final_.data(),
                       .weight = params_.data(norm_),
                       .y = lnf_out_.data(),
                       .rstd = rstdf_.data()});
  linear_forward(be_, lnf_out_.data(), params_.data(lm_head_), logits_.data(), N, D, V);

  ForwardResult r;
  for (const Layer& L : layers_) {
    if (const LayerRouting* routing = L.ffn->routing()) {
      r.aux_group += routing->aux_group;
      r.aux_expert += routing->aux_expert;
    }
  }
  if (has_targets_) {
    const double sum = be_.cross_entropy_forward({.rows = N,
                                                  .vocab = V,
                                                  .targets = targets_.data(),
                                                  .logits = logits_.data(),
                                                  .lse = lse_.data(),
                                                  .losses = losses_.data()});
    for (int64_t i = 0; i < N; ++i) r.num_targets += targets[i] >= 0 ? 1 : 0;
    r.ce_loss = r.num_targets > 0 ? sum / static_cast<double>(r.num_targets) : 0.0;
  }
  return r;
}

void Transformer::backward(double loss_tokens) {
  MOHGE_CHECK(has_targets_, "backward() needs a forward() with targets");
  const int64_t B = batch_, T = seq_, N = B * T, D = spec_.d_model, V = spec_.vocab_size;
  const int64_t H = spec_.heads;
  int64_t num_targets = 0;
  std::vector<int32_t> host_targets(static_cast<size_t>(N));
  be_.copy_to_host(host_targets.data(), targets_.data(), sizeof(int32_t) * host_targets.size());
  for (int32_t t : host_targets) num_targets += t >= 0 ? 1 : 0;
  const double denominator = loss_tokens > 0.0 ? loss_tokens : static_cast<double>(num_targets);
  const float scale = denominator > 0.0 ? static_cast<float>(1.0 / denominator) : 0.0f;

  be_.cross_entropy_backward({.rows = N,
                              .vocab = V,
                              .targets = targets_.data(),
                              .logits = logits_.data(),
                              .lse = lse_.data(),
                              .grad_scale = scale});
  has_targets_ = false;  // the logits now hold their gradient
  linear_backward(be_, lnf_out_.data(), params_.data(lm_head_), logits_.data(), d_a_.data(),
                  params_.grad(lm_head_), N, D, V, 0.0f);
  be_.fill_zero(d_res_.data(), N * D);
  const float eps = static_cast<float>(spec_.norm_eps);
  be_.rmsnorm_backward({.rows = N,
                        .dim = D,
                        .eps = eps,
                        .x = x_final_.data(),
                        .weight = params_.data(norm_),
                        .rstd = rstdf_.data(),
                        .d_y = d_a_.data(),
                        .d_x = d_res_.data(),
                        .d_weight = params_.grad(norm_)});
  for (size_t li = layers_.size(); li-- > 0;) {
    Layer& L = layers_[li];
    // d_res_ = ∂/∂x_{l+1}; FFN path into d_res_ (= ∂/∂h afterwards).
    be_.fill_zero(d_a_.data(), N * D);
    L.ffn->backward(L.ln2_out.data(), d_res_.data(), d_a_.data(), N, ffn_ws_);
    be_.rmsnorm_backward({.rows = N,
                          .dim = D,
                          .eps = eps,
                          .x = L.h.data(),
                          .weight = params_.data(L.ln2),
                          .rstd = L.rstd2.data(),
                          .d_y = d_a_.data(),
                          .d_x = d_res_.data(),
                          .d_weight = params_.grad(L.ln2)});
    // Attention path into d_res_ (= ∂/∂x_l afterwards).
    linear_backward(be_, L.attn.data(), params_.data(L.o), d_res_.data(), d_b_.data(),
                    params_.grad(L.o), N, D, D, 0.0f);
    be_.attention_backward({.batch = B,
                            .seq = T,
                            .heads = H,
                            .head_dim = D / H,
                            .rope_base = static_cast<float>(spec_.rope_base),
                            .qkv = L.qkv_out.data(),
                            .probs = L.probs.data(),
                            .d_out = d_b_.data(),
                            .d_qkv = d_qkv_.data(),
                            .scratch = d_scores_.data()});
    linear_backward(be_, L.ln1_out.data(), params_.data(L.qkv), d_qkv_.data(), d_a_.data(),
                    params_.grad(L.qkv), N, D, 3 * D, 0.0f);
    be_.rmsnorm_backward({.rows = N,
                          .dim = D,
                          .eps = eps,
                          .x = L.x.data(),
                          .weight = params_.data(L.ln1),
                          .rstd = L.rstd1.data(),
                          .d_y = d_a_.data(),
                          .d_x = d_res_.data(),
                          .d_weight = params_.grad(L.ln1)});
  }
  be_.embedding_backward({.num_tokens = N,
                          .dim = D,
                          .vocab = V,
                          .tokens = tokens_.data(),
                          .d_out = d_res_.data(),
                          .d_table = params_.grad(embed_)});
}

std::vector<const LayerRouting*> Transformer::routing() const {
  std::vector<const LayerRouting*> out;
  for (const Layer& L : layers_) out.push_back(L.ffn->routing());
  return out;
}

int64_t Transformer::expert_params() const {
  int64_t total = 0;
  for (const Layer& L : layers_) total += L.ffn->expert_params();
  return total;
}

double Transformer::activated_expert_params() const {
  double total = 0.0;
  for (const Layer& L : layers_) {
    const LayerRouting* r = L.ffn->routing();
    total +=
        r != nullptr ? r->activated_expert_params : static_cast<double>(L.ffn->expert_params());
  }
  return total;
}

double Transformer::flops_per_token(int64_t seq) const {
  const double D = spec_.d_model, V = spec_.vocab_size;
  const FfnSpec& f = spec_.ffn;
  const double router = f.kind == "mohge" ? D * (f.groups + f.num_experts())
                        : f.kind == "moe" ? D * f.num_experts()
                                          : 0.0;
  // Forward multiply-adds per token: projections, causal attention (QKᵀ and PV over on
  // average (T+1)/2 positions), router, experts, LM head.
  const double per_layer = 4.0 * D * D + D * static_cast<double>(seq + 1) + router;
  const double forward_macs = spec_.layers * per_layer + activated_expert_params() + D * V;
  return 3.0 * 2.0 * forward_macs;
}

std::vector<float> Transformer::token_losses() const {
  std::vector<float> out(static_cast<size_t>(losses_.size()));
  if (!out.empty()) be_.copy_to_host(out.data(), losses_.data(), sizeof(float) * out.size());
  return out;
}

}  // namespace mohge
