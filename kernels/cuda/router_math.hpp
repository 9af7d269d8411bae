// The per-token math of the routers (MoHGE paper and reference variants, uniform MoE) and of
// their auxiliary losses, as __host__ __device__ functions: the CUDA backend's kernels run one
// token per thread through them, and tests/kernels/test_device_math.cpp runs them on the host
// against the CPU backend (kernels/cpu/cpu_router.cpp, the independent reference) on every
// machine, GPU or not. The formulas and the backward derivations are those of cpu_router.cpp
// and DESIGN.md §4; the selection rule is the same: descending score, ties to the lower id.
//
// Every function works on one token and on caller-provided scratch (router_scratch_floats()
// floats and router_scratch_flags() bytes), so a kernel can give each thread a slice of one
// global buffer.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/ops.hpp"

#if defined(__CUDACC__)
#define MOHGE_HD __host__ __device__
#else
#define MOHGE_HD
#endif

namespace mohge::device {

constexpr float kGroupNormEps = 1e-20f;  // reference-code renormalisation of group scores

struct RouterShape {
  RouterKind kind = RouterKind::kMohgePaper;
  int32_t groups = 1;             // G
  int32_t experts_per_group = 1;  // n
  int32_t top_groups = 1;         // Kg
  int32_t top_experts = 1;        // K

  MOHGE_HD bool mohge() const { return kind != RouterKind::kMoeSoftmax; }
  MOHGE_HD int32_t experts() const { return groups * experts_per_group; }
  MOHGE_HD int32_t logits_width() const { return mohge() ? groups + experts() : experts(); }
};

MOHGE_HD inline RouterShape router_shape(const RouterParams& p) {
  return {p.kind, p.num_groups, p.experts_per_group, p.top_groups, p.top_experts};
}

/// Floats and bytes of scratch one token needs (forward, aux and backward alike).
MOHGE_HD inline int64_t router_scratch_floats(const RouterShape& s) {
  return 6 * int64_t{s.groups} + 7 * int64_t{s.experts()};
}
MOHGE_HD inline int64_t router_scratch_flags(const RouterShape& s) {
  return int64_t{s.groups} + s.experts();
}

/// True when (score a, id ia) ranks before (score b, id ib): higher score, ties to lower id.
MOHGE_HD inline bool ranks_before(float a, int32_t ia, float b, int32_t ib) {
  return a > b || (a == b && ia < ib);
}

/// The top `k` of score[0..len) where allowed (null: all), best first, into out[0..k).
/// Returns false when fewer than k candidates are allowed.
MOHGE_HD inline bool top_k(const float* score, const uint8_t* allowed, int32_t len, int32_t k,
                           int32_t* out) {
  for (int32_t j = 0; j < k; ++j) {
    int32_t best = -1;
    for (int32_t e = 0; e < len; ++e) {
      if (allowed != nullptr && !allowed[e]) continue;
      bool taken = false;
      for (int32_t m = 0; m < j; ++m) taken = taken || out[m] == e;
      if (taken) continue;
      if (best < 0 || ranks_before(score[e], e, score[best], best)) best = e;
    }
    if (best < 0) return false;
    out[j] = best;
  }
  return true;
}

MOHGE_HD inline float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

MOHGE_HD inline void softmax(const float* x, int32_t len, float* y) {
  float mx = x[0];
  for (int32_t i = 1; i < len; ++i) mx = x[i] > mx ? x[i] : mx;
  float sum = 0.0f;
  for (int32_t i = 0; i < len; ++i) {
    y[i] = std::exp(x[i] - mx);
    sum += y[i];
  }
  for (int32_t i = 0; i < len; ++i) y[i] /= sum;
}

/// One token's router state, recomputed from its logits, in caller scratch.
struct TokenState {
  float* gs;      // (G) GS
  float* gamma;   // (G) γ
  float* es;      // (E) ES' (MoE: softmax probabilities)
  float* u;       // (E) ES''
  float* q;       // (E) u / Σu
  uint8_t* gsel;  // (G) group kept
  uint8_t* esel;  // (E) expert in a kept group (MoE: all)
  float usum = 0.0f;
  float gs_kept_sum = 0.0f;

  /// Points into scratch; the other 2G + 4E floats of it stay free for the backward.
  MOHGE_HD TokenState(const RouterShape& s, float* scratch, uint8_t* flags)
      : gs(scratch),
        gamma(scratch + s.groups),
        es(scratch + 2 * s.groups),
        u(scratch + 2 * s.groups + s.experts()),
        q(scratch + 2 * s.groups + 2 * s.experts()),
        gsel(flags),
        esel(flags + s.groups) {}

  /// `kept_groups`: use this selection (backward, aux) or choose it (null). False when the
  /// shape asks for more groups than exist.
  MOHGE_HD bool compute(const RouterShape& s, const float* logits, const uint8_t* kept_groups,
                        int32_t* group_top) {
    const int32_t G = s.groups, n = s.experts_per_group, E = s.experts();
    if (!s.mohge()) {
      softmax(logits, E, es);
      for (int32_t e = 0; e < E; ++e) esel[e] = 1;
      return true;
    }
    for (int32_t g = 0; g < G; ++g) gs[g] = sigmoid(logits[g]);
    if (kept_groups != nullptr) {
      for (int32_t g = 0; g < G; ++g) gsel[g] = kept_groups[g];
    } else {
      if (!top_k(gs, nullptr, G, s.top_groups, group_top)) return false;
      for (int32_t g = 0; g < G; ++g) gsel[g] = 0;
      for (int32_t j = 0; j < s.top_groups; ++j) gsel[group_top[j]] = 1;
    }
    gs_kept_sum = 0.0f;
    for (int32_t g = 0; g < G; ++g) gs_kept_sum += gsel[g] ? gs[g] : 0.0f;
    for (int32_t g = 0; g < G; ++g) {
      gamma[g] = !gsel[g]                            ? 0.0f
                 : s.kind == RouterKind::kMohgePaper ? gs[g]
                                                     : gs[g] / (gs_kept_sum + kGroupNormEps);
    }
    usum = 0.0f;
    for (int32_t g = 0; g < G; ++g) {
      float* es_g = es + g * n;
      if (gsel[g]) {
        softmax(logits + G + g * n, n, es_g);
      } else {
        for (int32_t i = 0; i < n; ++i) es_g[i] = 0.0f;
      }
      for (int32_t i = 0; i < n; ++i) {
        esel[g * n + i] = gsel[g];
        u[g * n + i] = es_g[i] * gamma[g];
        usum += u[g * n + i];
      }
    }
    for (int32_t e = 0; e < E; ++e) q[e] = usum > 0.0f ? u[e] / usum : 0.0f;
    return true;
  }

  MOHGE_HD const float* selection_score(const RouterShape& s) const {
    return s.kind == RouterKind::kMohgePaper ? u : s.kind == RouterKind::kMohgeReference ? q : es;
  }
};

/// Forward of one token: kept experts (idx, K), their combine weights (w, K) and, for
/// MoHGE, the kept groups (group_selected, G; may be null). `bias` (E; null: none) is added
/// to the scores the experts are selected by, not to the weights. False on an impossible
/// shape.
MOHGE_HD inline bool router_token_forward(const RouterShape& s, const float* logits, float* scratch,
                                          uint8_t* flags, int32_t* idx, float* w,
                                          uint8_t* group_selected, const float* bias = nullptr) {
  TokenState st(s, scratch, flags);
  // The kept groups' ids go where the backward's scratch will be (free during the forward).
  int32_t* group_top = reinterpret_cast<int32_t*>(scratch + 2 * s.groups + 3 * s.experts());
  if (!st.compute(s, logits, nullptr, group_top)) return false;
  const int32_t K = s.top_experts;
  const float* score = st.selection_score(s);
  if (bias != nullptr) {
    float* biased = scratch + 4 * s.groups + 4 * s.experts();  // free in the forward
    for (int32_t e = 0; e < s.experts(); ++e) biased[e] = score[e] + bias[e];
    if (!top_k(biased, st.esel, s.experts(), K, idx)) return false;
  } else if (!top_k(score, st.esel, s.experts(), K, idx)) {
    return false;
  }
  if (s.kind == RouterKind::kMohgeReference) {
    float mx = score[idx[0]];  // the largest kept score (with a bias, not always the first)
    for (int32_t k = 1; k < K; ++k) mx = score[idx[k]] > mx ? score[idx[k]] : mx;
    float sum = 0.0f;
    for (int32_t k = 0; k < K; ++k) sum += (w[k] = std::exp(score[idx[k]] - mx));
    for (int32_t k = 0; k < K; ++k) w[k] /= sum;
  } else if (s.kind == RouterKind::kMohgePaper) {
    float sum = 0.0f;
    for (int32_t k = 0; k < K; ++k) sum += score[idx[k]];
    for (int32_t k = 0; k < K; ++k) w[k] = score[idx[k]] / sum;
  } else {
    for (int32_t k = 0; k < K; ++k) w[k] = score[idx[k]];
  }
  if (group_selected != nullptr && s.mohge())
    for (int32_t g = 0; g < s.groups; ++g) group_selected[g] = st.gsel[g];
  return true;
}

/// The per-token p-terms of the auxiliary losses, added to pg (G) and pe (E) in double:
/// Σ_t of them, times the per-group/expert constants, is each loss (cpu_router.cpp).
MOHGE_HD inline void router_token_aux_terms(const RouterShape& s, GroupLossKind group_loss,
                                            ExpertLossKind expert_loss, float eps,
                                            const float* logits, const uint8_t* group_selected,
                                            float* scratch, uint8_t* flags, double* pg,
                                            double* pe) {
  const int32_t G = s.groups, n = s.experts_per_group, E = s.experts();
  TokenState st(s, scratch, flags);
  st.compute(s, logits, s.mohge() ? group_selected : nullptr, nullptr);
  if (!s.mohge()) {
    for (int32_t e = 0; e < E; ++e) pe[e] += st.es[e];
    return;
  }
  float* pi = scratch + 2 * G + 3 * E;  // (G)
  if (group_loss == GroupLossKind::kPaper) {
    float r = 0.0f;
    for (int32_t g = 0; g < G; ++g) r += st.gs[g];
    for (int32_t g = 0; g < G; ++g) pg[g] += st.gs[g] / r;
  } else {
    softmax(logits, G, pi);
    for (int32_t g = 0; g < G; ++g) pg[g] += pi[g];
  }
  if (expert_loss == ExpertLossKind::kPaper) {
    for (int32_t g = 0; g < G; ++g) {
      float z = 0.0f;
      for (int32_t i = 0; i < n; ++i) z += st.es[g * n + i];
      for (int32_t i = 0; i < n; ++i) pe[g * n + i] += st.es[g * n + i] / (z + eps);
    }
  } else {
    for (int32_t e = 0; e < E; ++e) pe[e] += st.q[e];
  }
}

/// Backward of one token: d_logits (G+E or E) from d_topk_weight and the aux-loss constants
/// ag (G: α_G·c_g·f_g/T) and be (E: α_E·f_e/T), as cpu_router.cpp derives them.
MOHGE_HD inline void router_token_backward(const RouterShape& s, GroupLossKind group_loss,
                                           ExpertLossKind expert_loss, float eps,
                                           const float* logits, const uint8_t* group_selected,
                                           const int32_t* idx, const float* w, const float* dw,
                                           const float* ag, const float* be, float* scratch,
                                           uint8_t* flags, float* dl) {
  const int32_t G = s.groups, n = s.experts_per_group, E = s.experts(), K = s.top_experts;
  const bool mohge = s.mohge();
  TokenState st(s, scratch, flags);
  st.compute(s, logits, mohge ? group_selected : nullptr, nullptr);
  float* des = scratch + 2 * G + 3 * E;  // (E)
  float* du = des + E;                   // (E)
  float* dq = du + E;                    // (E)
  float* dgamma = dq + E;                // (G)
  float* dgs = dgamma + G;               // (G)
  float* pi = dgs + G;                   // (G)

  if (!mohge) {
    // w_k = prob_{e_k};  switch loss adds b_e to d prob_e;  softmax backward.
    for (int32_t e = 0; e < E; ++e) des[e] = be[e];
    for (int32_t k = 0; k < K; ++k) des[idx[k]] += dw[k];
    float dot = 0.0f;
    for (int32_t e = 0; e < E; ++e) dot += st.es[e] * des[e];
    for (int32_t e = 0; e < E; ++e) dl[e] = st.es[e] * (des[e] - dot);
    return;
  }
  const bool ref_expert_loss = expert_loss == ExpertLossKind::kReference;
  for (int32_t e = 0; e < E; ++e) du[e] = dq[e] = 0.0f;
  float wdw = 0.0f;
  for (int32_t k = 0; k < K; ++k) wdw += w[k] * dw[k];
  if (s.kind == RouterKind::kMohgePaper) {
    float z = 0.0f;
    for (int32_t k = 0; k < K; ++k) z += st.u[idx[k]];
    for (int32_t k = 0; k < K; ++k) du[idx[k]] += (dw[k] - wdw) / z;
  } else {
    for (int32_t k = 0; k < K; ++k) dq[idx[k]] += w[k] * (dw[k] - wdw);
  }
  if (ref_expert_loss)
    for (int32_t e = 0; e < E; ++e) dq[e] += be[e];
  if (s.kind == RouterKind::kMohgeReference || ref_expert_loss) {
    float dot = 0.0f;
    for (int32_t e = 0; e < E; ++e) dot += st.q[e] * dq[e];
    for (int32_t e = 0; e < E; ++e)
      if (st.esel[e]) du[e] += (dq[e] - dot) / st.usum;
  }
  for (int32_t g = 0; g < G; ++g) {
    dgamma[g] = 0.0f;
    for (int32_t i = 0; i < n; ++i) {
      des[g * n + i] = du[g * n + i] * st.gamma[g];
      dgamma[g] += du[g * n + i] * st.es[g * n + i];
    }
  }
  for (int32_t g = 0; g < G; ++g) {
    float* dl_e = dl + G + g * n;
    if (!st.gsel[g]) {
      for (int32_t i = 0; i < n; ++i) dl_e[i] = 0.0f;
      continue;
    }
    const float* es_g = st.es + g * n;
    float* des_g = des + g * n;
    if (expert_loss == ExpertLossKind::kPaper) {
      float z = 0.0f, bs = 0.0f;
      for (int32_t i = 0; i < n; ++i) z += es_g[i];
      for (int32_t i = 0; i < n; ++i) bs += be[g * n + i] * es_g[i] / (z + eps);
      for (int32_t i = 0; i < n; ++i) des_g[i] += (be[g * n + i] - bs) / (z + eps);
    }
    float dot = 0.0f;
    for (int32_t i = 0; i < n; ++i) dot += es_g[i] * des_g[i];
    for (int32_t i = 0; i < n; ++i) dl_e[i] = es_g[i] * (des_g[i] - dot);
  }
  if (s.kind == RouterKind::kMohgePaper) {
    for (int32_t g = 0; g < G; ++g) dgs[g] = st.gsel[g] ? dgamma[g] : 0.0f;
  } else {
    const float sk = st.gs_kept_sum + kGroupNormEps;
    float dot = 0.0f;
    for (int32_t g = 0; g < G; ++g) dot += st.gsel[g] ? dgamma[g] * st.gs[g] : 0.0f;
    for (int32_t g = 0; g < G; ++g) dgs[g] = st.gsel[g] ? dgamma[g] / sk - dot / (sk * sk) : 0.0f;
  }
  if (group_loss == GroupLossKind::kPaper) {
    float r = 0.0f, as = 0.0f;
    for (int32_t g = 0; g < G; ++g) r += st.gs[g];
    for (int32_t g = 0; g < G; ++g) as += ag[g] * st.gs[g] / r;
    for (int32_t g = 0; g < G; ++g) dgs[g] += (ag[g] - as) / r;
  }
  for (int32_t g = 0; g < G; ++g) dl[g] = dgs[g] * st.gs[g] * (1.0f - st.gs[g]);
  if (group_loss == GroupLossKind::kReference) {
    softmax(logits, G, pi);
    float dot = 0.0f;
    for (int32_t g = 0; g < G; ++g) dot += ag[g] * pi[g];
    for (int32_t g = 0; g < G; ++g) dl[g] += pi[g] * (ag[g] - dot);
  }
}

/// The aux losses' per-assignment constants from the step's global counts (host):
/// ag[g] = α_G·c_g·f_g / T (MoHGE) and be[e] = α_E·f_e / T, with f of eqs. 8 and 12 (or the
/// switch loss's, over all E experts, for MoE and the reference L_E).
inline void router_aux_constants(const RouterShape& s, const RouterAuxParams& a, float* ag,
                                 float* be) {
  const double T = a.total_tokens;
  for (int32_t g = 0; g < s.groups; ++g) {
    const double f = static_cast<double>(s.groups) / (s.top_groups * T) * a.group_count[g];
    ag[g] = s.mohge() ? static_cast<float>(a.alpha_group * a.group_cost[g] * f / T) : 0.0f;
  }
  const bool global = !s.mohge() || a.expert_loss == ExpertLossKind::kReference;
  const double width = global ? static_cast<double>(s.experts()) : s.experts_per_group;
  for (int32_t e = 0; e < s.experts(); ++e) {
    const double f = width / (s.top_experts * T) * a.expert_count[e];
    be[e] = static_cast<float>(a.alpha_expert * f / T);
  }
}

/// The aux losses' values from Σ_t p-terms (psum_g: G, psum_e: E) and the global counts.
inline RouterAuxValues router_aux_values(const RouterShape& s, const RouterAuxParams& a,
                                         const double* psum_g, const double* psum_e) {
  const double T = a.total_tokens;
  RouterAuxValues v;
  for (int32_t g = 0; g < s.groups && s.mohge(); ++g) {
    const double f = static_cast<double>(s.groups) / (s.top_groups * T) * a.group_count[g];
    v.group += a.alpha_group * a.group_cost[g] * f * psum_g[g] / T;
  }
  const bool global = !s.mohge() || a.expert_loss == ExpertLossKind::kReference;
  const double width = global ? static_cast<double>(s.experts()) : s.experts_per_group;
  for (int32_t e = 0; e < s.experts(); ++e) {
    const double f = width / (s.top_experts * T) * a.expert_count[e];
    v.expert += a.alpha_expert * f * psum_e[e] / T;
  }
  return v;
}

}  // namespace mohge::device
