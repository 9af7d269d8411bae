// CpuBackend: the MoHGE two-level router (paper and reference variants), the uniform-MoE
// softmax top-k router, and their auxiliary load losses, forward and backward.
// The formulas are those of DESIGN.md §4; the derivations of the backward are next to the code.
//
// Per token, MoHGE (logits row = [l_g (G) | l_e (E)], expert e = g·n + i):
//   GS_g   = sigmoid(l_g); keep the top Kg groups (ties to the lower index)
//   γ_g    = GS_g (paper) | GS_g / (Σ_kept GS + 1e-20) (reference); 0 for dropped groups
//   ES'_e  = softmax_i(l_{g,i}) within kept groups; 0 elsewhere
//   u_e    = ES'_e · γ_g                 (ES'' of the paper)
//   q_e    = u_e / Σ_e u_e               (reference-variant scores, and the reference L_E)
//   kept   = top K of u (paper) or q (reference), candidates from kept groups only
//   w_k    = u_k / Σ_kept u (paper) | exp(q_k) / Σ_kept exp(q) (reference)
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/cpu/cpu_backend.hpp"

namespace mohge {

namespace {

constexpr float kGroupNormEps = 1e-20f;  // reference-code renormalisation of group scores
constexpr int64_t kTokenChunk = 256;     // tokens per partial sum (thread-count independent)

inline float sigmoidf(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

bool is_mohge(const RouterParams& p) {
  return p.kind != RouterKind::kMoeSoftmax;
}
int64_t num_experts(const RouterParams& p) {
  return static_cast<int64_t>(p.num_groups) * p.experts_per_group;
}
int64_t logits_width(const RouterParams& p) {
  return is_mohge(p) ? p.num_groups + num_experts(p) : num_experts(p);
}

// Top-k of `score` over the indices where `allowed` (or all if null) is set, in descending
// order, ties to the lower index. O(k·len), fine for the small G and E of a router.
void top_k(const float* score, const uint8_t* allowed, int64_t len, int32_t k, int32_t* out) {
  for (int32_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < len; ++e) {
      if (allowed != nullptr && !allowed[e]) continue;
      bool taken = false;
      for (int32_t m = 0; m < j; ++m) taken = taken || out[m] == e;
      if (taken) continue;
      if (best < 0 || score[e] > score[best]) best = e;
    }
    MOHGE_CHECK(best >= 0, "top-" << k << " needs more candidates than " << len);
    out[j] = static_cast<int32_t>(best);
  }
}

void softmax(const float* x, int64_t len, float* y) {
  float mx = x[0];
  for (int64_t i = 1; i < len; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < len; ++i) {
    y[i] = std::exp(x[i] - mx);
    sum += y[i];
  }
  for (int64_t i = 0; i < len; ++i) y[i] /= sum;
}

// The router state of one token, recomputed from its logits.
struct TokenState {
  std::vector<float> gs;      // (G) GS
  std::vector<float> gamma;   // (G) γ
  std::vector<uint8_t> gsel;  // (G) group kept
  std::vector<uint8_t> esel;  // (E) expert is in a kept group (MoE: all 1)
  std::vector<float> es;      // (E) ES' (MoE: softmax probabilities)
  std::vector<float> u;       // (E) ES''
  std::vector<float> q;       // (E) u / Σu
  float usum = 0.0f;
  float gs_kept_sum = 0.0f;

  explicit TokenState(const RouterParams& p)
      : gs(p.num_groups),
        gamma(p.num_groups),
        gsel(p.num_groups),
        esel(num_experts(p)),
        es(num_experts(p)),
        u(num_experts(p)),
        q(num_experts(p)) {}

  // Fills every field. `kept_groups`: use this selection (backward) or choose it (null).
  void compute(const RouterParams& p, const float* logits, const uint8_t* kept_groups) {
    const int64_t G = p.num_groups, n = p.experts_per_group, E = num_experts(p);
    if (!is_mohge(p)) {
      softmax(logits, E, es.data());
      std::fill(esel.begin(), esel.end(), uint8_t{1});
      return;
    }
    for (int64_t g = 0; g < G; ++g) gs[g] = sigmoidf(logits[g]);
    if (kept_groups != nullptr) {
      std::copy_n(kept_groups, G, gsel.begin());
    } else {
      std::vector<int32_t> top(static_cast<size_t>(p.top_groups));
      top_k(gs.data(), nullptr, G, p.top_groups, top.data());
      std::fill(gsel.begin(), gsel.end(), uint8_t{0});
      for (int32_t g : top) gsel[g] = 1;
    }
    gs_kept_sum = 0.0f;
    for (int64_t g = 0; g < G; ++g) gs_kept_sum += gsel[g] ? gs[g] : 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      gamma[g] = !gsel[g]                            ? 0.0f
                 : p.kind == RouterKind::kMohgePaper ? gs[g]
                                                     : gs[g] / (gs_kept_sum + kGroupNormEps);
    }
    usum = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      float* es_g = es.data() + g * n;
      if (gsel[g]) {
        softmax(logits + G + g * n, n, es_g);
      } else {
        std::fill_n(es_g, n, 0.0f);
      }
      for (int64_t i = 0; i < n; ++i) {
        esel[g * n + i] = gsel[g];
        u[g * n + i] = es_g[i] * gamma[g];
        usum += u[g * n + i];
      }
    }
    for (int64_t e = 0; e < E; ++e) q[e] = usum > 0.0f ? u[e] / usum : 0.0f;
  }

  // The scores the top-K selection ranks.
  const float* selection_score(const RouterParams& p) const {
    switch (p.kind) {
      case RouterKind::kMohgePaper:
        return u.data();
      case RouterKind::kMohgeReference:
        return q.data();
      case RouterKind::kMoeSoftmax:
        return es.data();
    }
    return nullptr;
  }
};

double group_f(const RouterParams& p, const RouterAuxParams& a, int64_t g) {
  return static_cast<double>(p.num_groups) / (p.top_groups * a.total_tokens) * a.group_count[g];
}
// f of eq. 12 (intra-group: n / (K·T)) or of the switch loss over all E experts (E / (K·T)).
double expert_f(const RouterParams& p, const RouterAuxParams& a, int64_t e) {
  const bool global = !is_mohge(p) || a.expert_loss == ExpertLossKind::kReference;
  const double width = global ? static_cast<double>(num_experts(p)) : p.experts_per_group;
  return width / (p.top_experts * a.total_tokens) * a.expert_count[e];
}

}  // namespace

void CpuBackend::router_forward(const RouterParams& p) {
  const int64_t G = p.num_groups, E = num_experts(p), K = p.top_experts, L = logits_width(p);
  MOHGE_CHECK(K <= E && p.top_groups <= G, "top-k larger than the candidates");
  MOHGE_CHECK(!is_mohge(p) || K <= int64_t{p.top_groups} * p.experts_per_group,
              "top_experts must not exceed top_groups·experts_per_group");
#pragma omp parallel num_threads(num_threads_)
  {
    TokenState st(p);
    std::vector<float> biased(p.expert_bias != nullptr ? static_cast<size_t>(E) : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      st.compute(p, p.logits + t * L, nullptr);
      int32_t* idx = p.topk_index + t * K;
      float* w = p.topk_weight + t * K;
      const float* score = st.selection_score(p);
      // Aux-loss-free balance: the bias moves the selection, never the weights.
      if (p.expert_bias != nullptr) {
        for (int64_t e = 0; e < E; ++e) biased[e] = score[e] + p.expert_bias[e];
        top_k(biased.data(), st.esel.data(), E, static_cast<int32_t>(K), idx);
      } else {
        top_k(score, st.esel.data(), E, static_cast<int32_t>(K), idx);
      }
      if (p.kind == RouterKind::kMohgeReference) {
        float mx = score[idx[0]], sum = 0.0f;  // the largest kept score
        for (int64_t k = 1; k < K; ++k) mx = std::max(mx, score[idx[k]]);
        for (int64_t k = 0; k < K; ++k) sum += (w[k] = std::exp(score[idx[k]] - mx));
        for (int64_t k = 0; k < K; ++k) w[k] /= sum;
      } else if (p.kind == RouterKind::kMohgePaper) {
        float sum = 0.0f;
        for (int64_t k = 0; k < K; ++k) sum += score[idx[k]];
        for (int64_t k = 0; k < K; ++k) w[k] = score[idx[k]] / sum;
      } else {
        for (int64_t k = 0; k < K; ++k) w[k] = score[idx[k]];
      }
      if (p.group_selected != nullptr) std::copy_n(st.gsel.data(), G, p.group_selected + t * G);
    }
  }
}

void CpuBackend::router_count(const RouterParams& p, double* group_count, double* expert_count) {
  const int64_t G = p.num_groups, K = p.top_experts;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    if (is_mohge(p)) {
      for (int64_t g = 0; g < G; ++g) group_count[g] += p.group_selected[t * G + g];
    } else {
      group_count[0] += 1.0;
    }
    for (int64_t k = 0; k < K; ++k) expert_count[p.topk_index[t * K + k]] += 1.0;
  }
}

RouterAuxValues CpuBackend::router_aux_forward(const RouterParams& p, const RouterAuxParams& a) {
  const int64_t G = p.num_groups, n = p.experts_per_group, E = num_experts(p);
  const int64_t L = logits_width(p);
  const int64_t num_chunks = (p.num_tokens + kTokenChunk - 1) / kTokenChunk;
  // Per chunk: Σ_t of the per-token p-terms, (G) for L_G and (E) for L_E.
  std::vector<double> psum_g(static_cast<size_t>(num_chunks * G), 0.0);
  std::vector<double> psum_e(static_cast<size_t>(num_chunks * E), 0.0);
#pragma omp parallel num_threads(num_threads_)
  {
    TokenState st(p);
    std::vector<float> pi(static_cast<size_t>(G));
#pragma omp for schedule(static)
    for (int64_t c = 0; c < num_chunks; ++c) {
      double* pg = psum_g.data() + c * G;
      double* pe = psum_e.data() + c * E;
      for (int64_t t = c * kTokenChunk; t < std::min(p.num_tokens, (c + 1) * kTokenChunk); ++t) {
        const float* logits = p.logits + t * L;
        st.compute(p, logits, is_mohge(p) ? p.group_selected + t * G : nullptr);
        if (!is_mohge(p)) {
          for (int64_t e = 0; e < E; ++e) pe[e] += st.es[e];
          continue;
        }
        if (a.group_loss == GroupLossKind::kPaper) {
          float r = 0.0f;
          for (int64_t g = 0; g < G; ++g) r += st.gs[g];
          for (int64_t g = 0; g < G; ++g) pg[g] += st.gs[g] / r;
        } else {
          softmax(logits, G, pi.data());
          for (int64_t g = 0; g < G; ++g) pg[g] += pi[g];
        }
        if (a.expert_loss == ExpertLossKind::kPaper) {
          for (int64_t g = 0; g < G; ++g) {
            float z = 0.0f;
            for (int64_t i = 0; i < n; ++i) z += st.es[g * n + i];
            for (int64_t i = 0; i < n; ++i) pe[g * n + i] += st.es[g * n + i] / (z + a.eps);
          }
        } else {
          for (int64_t e = 0; e < E; ++e) pe[e] += st.q[e];
        }
      }
    }
  }
  RouterAuxValues v;
  for (int64_t g = 0; g < G && is_mohge(p); ++g) {
    double s = 0.0;
    for (int64_t c = 0; c < num_chunks; ++c) s += psum_g[static_cast<size_t>(c * G + g)];
    v.group += a.alpha_group * a.group_cost[g] * group_f(p, a, g) * s / a.total_tokens;
  }
  for (int64_t e = 0; e < E; ++e) {
    double s = 0.0;
    for (int64_t c = 0; c < num_chunks; ++c) s += psum_e[static_cast<size_t>(c * E + e)];
    v.expert += a.alpha_expert * expert_f(p, a, e) * s / a.total_tokens;
  }
  return v;
}

void CpuBackend::router_backward(const RouterParams& p, const RouterAuxParams& a) {
  const int64_t G = p.num_groups, n = p.experts_per_group, E = num_experts(p);
  const int64_t K = p.top_experts, L = logits_width(p);
  const bool mohge = is_mohge(p);
  // Per-assignment gradient of the aux losses w.r.t. each token's p-terms (constants):
  //   a_g = α_G·c_g·f_g / T,   b_e = α_E·f_e / T.
  std::vector<float> ag(static_cast<size_t>(G), 0.0f), be(static_cast<size_t>(E), 0.0f);
  for (int64_t g = 0; g < G && mohge; ++g)
    ag[g] = static_cast<float>(a.alpha_group * a.group_cost[g] * group_f(p, a, g) / a.total_tokens);
  for (int64_t e = 0; e < E; ++e)
    be[e] = static_cast<float>(a.alpha_expert * expert_f(p, a, e) / a.total_tokens);
  const bool ref_expert_loss = mohge && a.expert_loss == ExpertLossKind::kReference;

#pragma omp parallel num_threads(num_threads_)
  {
    TokenState st(p);
    std::vector<float> des(static_cast<size_t>(E)), du(static_cast<size_t>(E)),
        dq(static_cast<size_t>(E)), dgamma(static_cast<size_t>(G)), dgs(static_cast<size_t>(G)),
        pi(static_cast<size_t>(G));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      const float* logits = p.logits + t * L;
      float* dl = p.d_logits + t * L;
      const int32_t* idx = p.topk_index + t * K;
      const float* dw = p.d_topk_weight + t * K;
      const float* w = p.topk_weight + t * K;
      st.compute(p, logits, mohge ? p.group_selected + t * G : nullptr);

      if (!mohge) {
        // w_k = prob_{e_k};  switch loss adds b_e to d prob_e;  softmax backward.
        for (int64_t e = 0; e < E; ++e) des[e] = be[e];
        for (int64_t k = 0; k < K; ++k) des[idx[k]] += dw[k];
        float dot = 0.0f;
        for (int64_t e = 0; e < E; ++e) dot += st.es[e] * des[e];
        for (int64_t e = 0; e < E; ++e) dl[e] = st.es[e] * (des[e] - dot);
        continue;
      }

      std::fill(du.begin(), du.end(), 0.0f);
      std::fill(dq.begin(), dq.end(), 0.0f);
      float wdw = 0.0f;
      for (int64_t k = 0; k < K; ++k) wdw += w[k] * dw[k];
      if (p.kind == RouterKind::kMohgePaper) {
        // w_k = u_k / Z  →  du_k = (dw_k - Σ_j w_j dw_j) / Z
        float z = 0.0f;
        for (int64_t k = 0; k < K; ++k) z += st.u[idx[k]];
        for (int64_t k = 0; k < K; ++k) du[idx[k]] += (dw[k] - wdw) / z;
      } else {
        // w = softmax(q_kept)  →  dq_k = w_k (dw_k - Σ_j w_j dw_j)
        for (int64_t k = 0; k < K; ++k) dq[idx[k]] += w[k] * (dw[k] - wdw);
      }
      if (ref_expert_loss)
        for (int64_t e = 0; e < E; ++e) dq[e] += be[e];
      if (p.kind == RouterKind::kMohgeReference || ref_expert_loss) {
        // q = u / U  →  du_e = (dq_e - Σ_j q_j dq_j) / U   (kept groups only; u = 0 elsewhere)
        float dot = 0.0f;
        for (int64_t e = 0; e < E; ++e) dot += st.q[e] * dq[e];
        for (int64_t e = 0; e < E; ++e)
          if (st.esel[e]) du[e] += (dq[e] - dot) / st.usum;
      }
      // u_e = ES'_e · γ_g
      for (int64_t g = 0; g < G; ++g) {
        dgamma[g] = 0.0f;
        for (int64_t i = 0; i < n; ++i) {
          des[g * n + i] = du[g * n + i] * st.gamma[g];
          dgamma[g] += du[g * n + i] * st.es[g * n + i];
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* dl_e = dl + G + g * n;
        if (!st.gsel[g]) {
          std::fill_n(dl_e, n, 0.0f);
          continue;
        }
        const float* es_g = st.es.data() + g * n;
        float* des_g = des.data() + g * n;
        if (a.expert_loss == ExpertLossKind::kPaper) {
          // s_i = ES'_i / (Z + ε)  →  dES'_i += (b_i - Σ_j b_j s_j) / (Z + ε)
          float z = 0.0f, bs = 0.0f;
          for (int64_t i = 0; i < n; ++i) z += es_g[i];
          for (int64_t i = 0; i < n; ++i) bs += be[g * n + i] * es_g[i] / (z + a.eps);
          for (int64_t i = 0; i < n; ++i) des_g[i] += (be[g * n + i] - bs) / (z + a.eps);
        }
        // ES' = softmax(l_{g,·})
        float dot = 0.0f;
        for (int64_t i = 0; i < n; ++i) dot += es_g[i] * des_g[i];
        for (int64_t i = 0; i < n; ++i) dl_e[i] = es_g[i] * (des_g[i] - dot);
      }
      // γ → GS
      if (p.kind == RouterKind::kMohgePaper) {
        for (int64_t g = 0; g < G; ++g) dgs[g] = st.gsel[g] ? dgamma[g] : 0.0f;
      } else {
        // γ_g = GS_g / (S + ε), S = Σ_kept GS  →  dGS_j = dγ_j/(S+ε) - Σ_g dγ_g GS_g/(S+ε)²
        const float s = st.gs_kept_sum + kGroupNormEps;
        float dot = 0.0f;
        for (int64_t g = 0; g < G; ++g) dot += st.gsel[g] ? dgamma[g] * st.gs[g] : 0.0f;
        for (int64_t g = 0; g < G; ++g) dgs[g] = st.gsel[g] ? dgamma[g] / s - dot / (s * s) : 0.0f;
      }
      if (a.group_loss == GroupLossKind::kPaper) {
        // s_g = GS_g / r, r = Σ_j GS_j  →  dGS_j += (a_j - Σ_g a_g s_g) / r
        float r = 0.0f, as = 0.0f;
        for (int64_t g = 0; g < G; ++g) r += st.gs[g];
        for (int64_t g = 0; g < G; ++g) as += ag[g] * st.gs[g] / r;
        for (int64_t g = 0; g < G; ++g) dgs[g] += (ag[g] - as) / r;
      }
      for (int64_t g = 0; g < G; ++g) dl[g] = dgs[g] * st.gs[g] * (1.0f - st.gs[g]);
      if (a.group_loss == GroupLossKind::kReference) {
        // p = softmax(l_group)  →  dl_g += π_g (a_g - Σ_j a_j π_j)
        softmax(logits, G, pi.data());
        float dot = 0.0f;
        for (int64_t g = 0; g < G; ++g) dot += ag[g] * pi[g];
        for (int64_t g = 0; g < G; ++g) dl[g] += pi[g] * (ag[g] - dot);
      }
    }
  }
}

}  // namespace mohge
