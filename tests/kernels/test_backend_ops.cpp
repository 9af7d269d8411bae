// One op suite for every backend (ggml's test-backend-ops pattern): each op of each backend
// variant built and present here runs on the same random inputs as the CPU fp32 backend, the
// reference, and its outputs are compared with stated tolerances. Inputs include odd sizes,
// experts with zero rows and exact ties in router scores.
//
// Variants (tests/backend_variants.hpp): the CPU backend in bf16 (test_kernels; needs
// avx512_bf16 or AMX), the CUDA backend in fp32 and bf16 (test_gpu, label `gpu`; needs a
// GPU). A variant this host cannot run is skipped with the reason.
//
// Tolerances, as max |got − want| / max |want| over each output:
//   ops without a GEMM, fp32 on both sides     1e-5 (the same formulas, other summation order)
//   ops with GEMMs, fp32                        1e-4
//   ops with GEMMs, bf16 inputs                 2e-2 (one bf16 rounding of each input: a
//                                               relative error of ≤ 2⁻⁸ per product, mostly
//                                               cancelling over the sums)
// Router selections (top-k ids, kept groups) and dispatch plans are compared exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/backend.hpp"
#include "tests/backend_variants.hpp"
#include "tests/test_util.hpp"

namespace mohge {
namespace {

using testing::BackendVariant;
using testing::random_vector;

// Named outputs of one op run, as floats (integer outputs converted exactly).
using Outputs = std::vector<std::pair<std::string, std::vector<float>>>;

class BackendOps : public ::testing::TestWithParam<BackendVariant> {
 protected:
  void SetUp() override {
    MOHGE_SKIP_UNLESS_AVAILABLE(GetParam());
    be_ = GetParam().make();
  }

  template <class T>
  Buffer<T> up(Backend& be, const std::vector<T>& host) {
    Buffer<T> b(be, static_cast<int64_t>(host.size()));
    if (!host.empty()) be.copy_from_host(b.data(), host.data(), sizeof(T) * host.size());
    return b;
  }
  template <class T>
  std::vector<float> down(Backend& be, const Buffer<T>& b) {
    std::vector<T> host(static_cast<size_t>(b.size()));
    if (!host.empty()) be.copy_to_host(host.data(), b.data(), sizeof(T) * host.size());
    return std::vector<float>(host.begin(), host.end());
  }

  double gemm_tolerance() const { return be_->precision() == Precision::kBf16 ? 2e-2 : 1e-4; }

  /// Runs `op` on the reference and on the variant and compares every output: exactly when
  /// `exact` names it, else within `tol`.
  void compare(const std::function<Outputs(Backend&)>& op, double tol,
               const std::vector<std::string>& exact = {}) {
    const Outputs want = op(*ref_);
    const Outputs got = op(*be_);
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const auto& [name, w] = want[i];
      const std::vector<float>& g = got[i].second;
      ASSERT_EQ(w.size(), g.size()) << name;
      if (std::find(exact.begin(), exact.end(), name) != exact.end()) {
        EXPECT_EQ(g, w) << name << " differs";
        continue;
      }
      double scale = 0.0, err = 0.0;
      size_t worst = 0;
      for (size_t j = 0; j < w.size(); ++j) {
        scale = std::max(scale, std::abs(static_cast<double>(w[j])));
        const double e = std::abs(static_cast<double>(g[j]) - w[j]);
        if (!(e <= err)) {  // NaN counts as the worst
          err = std::isnan(e) ? INFINITY : e;
          worst = j;
        }
      }
      const double rel = err / std::max(scale, 1e-6);
      EXPECT_LE(rel, tol) << name << ": max error " << err << " at [" << worst << "] (got "
                          << (w.empty() ? 0.f : g[worst]) << ", want "
                          << (w.empty() ? 0.f : w[worst]) << "), scale " << scale;
    }
  }

  std::unique_ptr<Backend> ref_ = make_cpu_backend(2, Precision::kFp32);
  std::unique_ptr<Backend> be_;
};

TEST_P(BackendOps, Gemm) {
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      const int64_t m = 37, n = 29, k = 67, lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1,
                    ldc = n + 5;
      const auto a = random_vector((ta ? k : m) * lda, 1);
      const auto b = random_vector((tb ? n : k) * ldb, 2);
      const auto c0 = random_vector(m * ldc, 3);
      compare(
          [&](Backend& be) -> Outputs {
            Buffer<float> A = up(be, a), B = up(be, b), C = up(be, c0);
            be.gemm({.trans_a = ta,
                     .trans_b = tb,
                     .m = m,
                     .n = n,
                     .k = k,
                     .alpha = 0.75f,
                     .a = A.data(),
                     .lda = lda,
                     .b = B.data(),
                     .ldb = ldb,
                     .beta = 0.5f,
                     .c = C.data(),
                     .ldc = ldc});
            return {{"c", down(be, C)}};
          },
          gemm_tolerance());
    }
  }
}

TEST_P(BackendOps, VectorOps) {
  const int64_t n = 70001;
  const auto x = random_vector(n, 4), y = random_vector(n, 5);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<float> X = up(be, x), Y = up(be, y), Z(be, n);
        be.axpy(n, -0.5f, X.data(), Y.data());
        be.scale(n / 2, 3.0f, Y.data());
        be.copy(Z.data(), Y.data(), n - 7);
        be.fill_zero(Z.data() + 10, 5);
        const double ss = be.sum_squares(n, X.data());
        return {{"y", down(be, Y)}, {"z", down(be, Z)}, {"sum_squares", {static_cast<float>(ss)}}};
      },
      1e-5);
}

TEST_P(BackendOps, EmbeddingForwardAndBackward) {
  const int64_t N = 13, D = 11, V = 9;
  std::vector<int32_t> tokens(N);
  for (int64_t t = 0; t < N; ++t) tokens[t] = static_cast<int32_t>((t * 5) % V);  // repeats
  const auto table = random_vector(V * D, 6), d_out = random_vector(N * D, 7);
  const auto d_table0 = random_vector(V * D, 8);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<int32_t> tok = up(be, tokens);
        Buffer<float> tab = up(be, table), out(be, N * D), dout = up(be, d_out),
                      dtab = up(be, d_table0);
        EmbeddingParams p{.num_tokens = N,
                          .dim = D,
                          .vocab = V,
                          .tokens = tok.data(),
                          .table = tab.data(),
                          .out = out.data(),
                          .d_out = dout.data(),
                          .d_table = dtab.data()};
        be.embedding_forward(p);
        be.embedding_backward(p);
        return {{"out", down(be, out)}, {"d_table", down(be, dtab)}};
      },
      1e-5);
}

TEST_P(BackendOps, RmsNormForwardAndBackward) {
  const int64_t N = 9, D = 35;
  const auto x = random_vector(N * D, 9), w = random_vector(D, 10), dy = random_vector(N * D, 11);
  const auto dx0 = random_vector(N * D, 12), dw0 = random_vector(D, 13);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<float> X = up(be, x), W = up(be, w), Y(be, N * D), R(be, N), DY = up(be, dy),
                      DX = up(be, dx0), DW = up(be, dw0);
        RmsNormParams p{.rows = N,
                        .dim = D,
                        .eps = 1e-5f,
                        .x = X.data(),
                        .weight = W.data(),
                        .y = Y.data(),
                        .rstd = R.data(),
                        .d_y = DY.data(),
                        .d_x = DX.data(),
                        .d_weight = DW.data()};
        be.rmsnorm_forward(p);
        be.rmsnorm_backward(p);
        return {{"y", down(be, Y)},
                {"rstd", down(be, R)},
                {"d_x", down(be, DX)},
                {"d_weight", down(be, DW)}};
      },
      1e-5);
}

TEST_P(BackendOps, AttentionWithRopeForwardAndBackward) {
  const int64_t B = 2, T = 7, H = 3, hd = 8, D = H * hd, N = B * T;
  const auto qkv = random_vector(N * 3 * D, 14), d_out = random_vector(N * D, 15);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<float> QKV = up(be, qkv), P(be, B * H * T * T), O(be, N * D), DO = up(be, d_out),
                      DQKV(be, N * 3 * D), S(be, int64_t{be.num_threads()} * T * T);
        AttentionParams p{.batch = B,
                          .seq = T,
                          .heads = H,
                          .head_dim = hd,
                          .rope_base = 10000.0f,
                          .qkv = QKV.data(),
                          .probs = P.data(),
                          .out = O.data(),
                          .d_out = DO.data(),
                          .d_qkv = DQKV.data(),
                          .scratch = S.data()};
        be.attention_forward(p);
        be.attention_backward(p);
        return {{"qkv_rotated", down(be, QKV)},
                {"probs", down(be, P)},
                {"out", down(be, O)},
                {"d_qkv", down(be, DQKV)}};
      },
      gemm_tolerance());
}

TEST_P(BackendOps, SwigluForwardAndBackward) {
  const int64_t rows = 5, W = 19;
  const auto act = random_vector(rows * 2 * W, 16, 3.0f), dh = random_vector(rows * W, 17);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<float> A = up(be, act), Hd(be, rows * W), DH = up(be, dh), DA(be, rows * 2 * W);
        SwigluParams p{.rows = rows,
                       .width = W,
                       .act = A.data(),
                       .hidden = Hd.data(),
                       .d_hidden = DH.data(),
                       .d_act = DA.data()};
        be.swiglu_forward(p);
        be.swiglu_backward(p);
        return {{"hidden", down(be, Hd)}, {"d_act", down(be, DA)}};
      },
      1e-5);
}

TEST_P(BackendOps, CrossEntropyWithIgnoredRows) {
  const int64_t N = 7, V = 1031;  // a vocabulary that is not a multiple of any block
  const auto logits = random_vector(N * V, 18, 4.0f);
  const std::vector<int32_t> targets = {3, -1, 1030, 0, 517, -1, 9};
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<int32_t> tg = up(be, targets);
        Buffer<float> Z = up(be, logits), lse(be, N), losses(be, N);
        CrossEntropyParams p{.rows = N,
                             .vocab = V,
                             .targets = tg.data(),
                             .logits = Z.data(),
                             .lse = lse.data(),
                             .losses = losses.data(),
                             .grad_scale = 0.25f};
        const double total = be.cross_entropy_forward(p);
        auto lse_host = down(be, lse), loss_host = down(be, losses);
        be.cross_entropy_backward(p);
        return {{"total", {static_cast<float>(total)}},
                {"lse", lse_host},
                {"losses", loss_host},
                {"d_logits", down(be, Z)}};
      },
      1e-5);
}

struct RouterCase {
  RouterKind kind;
  GroupLossKind group_loss;
  ExpertLossKind expert_loss;
};

TEST_P(BackendOps, RoutersCountsAuxLossesAndBackward) {
  const int64_t N = 37;
  for (const RouterCase rc :
       {RouterCase{RouterKind::kMohgePaper, GroupLossKind::kPaper, ExpertLossKind::kPaper},
        RouterCase{RouterKind::kMohgeReference, GroupLossKind::kReference,
                   ExpertLossKind::kReference},
        RouterCase{RouterKind::kMoeSoftmax, GroupLossKind::kPaper, ExpertLossKind::kPaper}}) {
    SCOPED_TRACE(static_cast<int>(rc.kind));
    const bool mohge = rc.kind != RouterKind::kMoeSoftmax;
    const int32_t G = mohge ? 4 : 1, n = mohge ? 3 : 7, Kg = mohge ? 2 : 1, K = mohge ? 3 : 2;
    const int64_t E = int64_t{G} * n, L = mohge ? G + E : E;
    const auto logits = testing::tied_router_logits(N, G, n, mohge, 19);
    const auto d_w = random_vector(N * K, 20);
    const std::vector<float> cost = {0.25f, 0.5f, 0.75f, 1.0f};
    compare(
        [&](Backend& be) -> Outputs {
          Buffer<float> lg = up(be, logits), w(be, N * K), dw = up(be, d_w), dl(be, N * L);
          Buffer<int32_t> idx(be, N * K);
          Buffer<uint8_t> gsel(be, N * G);
          RouterParams p{.kind = rc.kind,
                         .num_tokens = N,
                         .num_groups = G,
                         .experts_per_group = n,
                         .top_groups = Kg,
                         .top_experts = K,
                         .logits = lg.data(),
                         .topk_index = idx.data(),
                         .topk_weight = w.data(),
                         .group_selected = mohge ? gsel.data() : nullptr,
                         .d_topk_weight = dw.data(),
                         .d_logits = dl.data()};
          be.router_forward(p);
          std::vector<double> gc(static_cast<size_t>(G), 0.0), ec(static_cast<size_t>(E), 0.0);
          be.router_count(p, gc.data(), ec.data());
          RouterAuxParams aux{.group_loss = rc.group_loss,
                              .expert_loss = rc.expert_loss,
                              .alpha_group = mohge ? 0.3f : 0.0f,
                              .alpha_expert = 0.2f,
                              .eps = 1e-6f,
                              .total_tokens = static_cast<double>(N),
                              .group_cost = cost.data(),
                              .group_count = gc.data(),
                              .expert_count = ec.data()};
          const RouterAuxValues v = be.router_aux_forward(p, aux);
          be.router_backward(p, aux);
          Outputs out = {{"topk_index", down(be, idx)},
                         {"topk_weight", down(be, w)},
                         {"group_count", std::vector<float>(gc.begin(), gc.end())},
                         {"expert_count", std::vector<float>(ec.begin(), ec.end())},
                         {"aux", {static_cast<float>(v.group), static_cast<float>(v.expert)}},
                         {"d_logits", down(be, dl)}};
          if (mohge) out.push_back({"group_selected", down(be, gsel)});
          return out;
        },
        1e-5, {"topk_index", "group_selected", "group_count", "expert_count"});
  }
}

// The expert-id → exchange-slot map of expert parallelism, with ids outside the table (→ -1).
TEST_P(BackendOps, RemapIndexMapsIdsAndMarksOutOfRangeOnes) {
  const std::vector<int32_t> table = {3, 0, 4, 1, 2};
  std::vector<int32_t> in(1000);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int32_t>((i * 7) % 5);
  in[17] = 5;
  in[400] = -2;
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<int32_t> I = up(be, in), T = up(be, table), O(be, static_cast<int64_t>(in.size()));
        be.remap_index(I.data(), static_cast<int64_t>(in.size()), T.data(), 5, O.data());
        return {{"out", down(be, O)}};
      },
      0.0, {"out"});
  // And on the reference itself, the values (not only the agreement).
  Buffer<int32_t> I = up(*ref_, in), T = up(*ref_, table), O(*ref_, 1000);
  ref_->remap_index(I.data(), 1000, T.data(), 5, O.data());
  for (size_t i = 0; i < in.size(); ++i) {
    const int32_t want = in[i] >= 0 && in[i] < 5 ? table[static_cast<size_t>(in[i])] : -1;
    ASSERT_EQ(O.data()[i], want) << i;
  }
}

TEST_P(BackendOps, DispatchAndCombineWithAnEmptyExpert) {
  const int64_t N = 11, D = 13;
  const int32_t K = 3, E = 5;
  std::vector<int32_t> index(N * K);
  for (int64_t a = 0; a < N * K; ++a) {
    const int32_t e = static_cast<int32_t>((a * 7 + a / K) % E);
    index[a] = e == 2 ? 4 : e;  // expert 2 gets no rows
  }
  const auto x = random_vector(N * D, 21), ys = random_vector(N * K * D, 22);
  const auto w = random_vector(N * K, 23), dy = random_vector(N * D, 24);
  const auto y0 = random_vector(N * D, 25), dx0 = random_vector(N * D, 26);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<int32_t> idx = up(be, index);
        DispatchPlan plan;
        be.dispatch_plan(idx.data(), N, K, E, &plan);
        Buffer<float> X = up(be, x), XS(be, N * K * D), YS = up(be, ys), W = up(be, w),
                      Y = up(be, y0), DY = up(be, dy), DYS(be, N * K * D), DW(be, N * K),
                      DX = up(be, dx0);
        be.dispatch_forward({.dim = D, .plan = &plan, .x = X.data(), .x_sorted = XS.data()});
        be.dispatch_backward({.dim = D, .plan = &plan, .d_x_sorted = YS.data(), .d_x = DX.data()});
        CombineParams c{.dim = D,
                        .plan = &plan,
                        .weight = W.data(),
                        .y_sorted = YS.data(),
                        .y = Y.data(),
                        .d_y = DY.data(),
                        .d_y_sorted = DYS.data(),
                        .d_weight = DW.data()};
        be.combine_forward(c);
        be.combine_backward(c);
        return {{"expert_offsets",
                 std::vector<float>(plan.expert_offsets.begin(), plan.expert_offsets.end())},
                {"x_sorted", down(be, XS)},
                {"d_x", down(be, DX)},
                {"y", down(be, Y)},
                {"d_y_sorted", down(be, DYS)},
                {"d_weight", down(be, DW)}};
      },
      1e-5, {"expert_offsets", "x_sorted"});
}

TEST_P(BackendOps, HeterogeneousGroupedSwigluForwardAndBackward) {
  const int64_t D = 24;
  // Experts of four widths, one of them routed no rows, and a shared expert over all rows.
  const std::vector<int64_t> rows = {9, 0, 17, 5, 40};
  const std::vector<int64_t> widths = {8, 16, 24, 40, 12};
  const int64_t S = static_cast<int64_t>(rows.size());
  int64_t total_rows = 0, act = 0, hid = 0, wgu = 0, wd = 0;
  for (int64_t i = 0; i < S; ++i) {
    total_rows += rows[i];
    act += rows[i] * 2 * widths[i];
    hid += rows[i] * widths[i];
    wgu += 2 * widths[i] * D;
    wd += D * widths[i];
  }
  const auto x = random_vector(total_rows * D, 27), dy = random_vector(total_rows * D, 28);
  const auto w_gu = random_vector(wgu, 29, 0.3f), w_d = random_vector(wd, 30, 0.3f);
  const auto dwgu0 = random_vector(wgu, 31), dwd0 = random_vector(wd, 32);
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<float> X = up(be, x), DY = up(be, dy), WGU = up(be, w_gu), WD = up(be, w_d),
                      A(be, act), Hd(be, hid), Y(be, total_rows * D), DX(be, total_rows * D),
                      DA(be, act), DH(be, hid), DWGU = up(be, dwgu0), DWD = up(be, dwd0);
        std::vector<ExpertSlice> slices(static_cast<size_t>(S));
        int64_t r = 0, a = 0, h = 0, g = 0, d = 0;
        for (int64_t i = 0; i < S; ++i) {
          const int64_t W = widths[i];
          slices[i] = {.rows = rows[i],
                       .width = W,
                       .x = X.data() + r * D,
                       .w_gate_up = WGU.data() + g,
                       .w_down = WD.data() + d,
                       .act = A.data() + a,
                       .hidden = Hd.data() + h,
                       .y = Y.data() + r * D,
                       .d_y = DY.data() + r * D,
                       .d_x = DX.data() + r * D,
                       .d_act = DA.data() + a,
                       .d_hidden = DH.data() + h,
                       .d_w_gate_up = DWGU.data() + g,
                       .d_w_down = DWD.data() + d};
          r += rows[i];
          a += rows[i] * 2 * W;
          h += rows[i] * W;
          g += 2 * W * D;
          d += D * W;
        }
        const GroupedSwigluParams p{.dim = D, .slices = slices.data(), .num_slices = S};
        be.grouped_swiglu_forward(p);
        be.grouped_swiglu_backward(p);
        return {
            {"act", down(be, A)},  {"hidden", down(be, Hd)},        {"y", down(be, Y)},
            {"d_x", down(be, DX)}, {"d_w_gate_up", down(be, DWGU)}, {"d_w_down", down(be, DWD)}};
      },
      gemm_tolerance());
}

TEST_P(BackendOps, AdamW) {
  const int64_t n = 4099;
  const auto p0 = random_vector(n, 33), g = random_vector(n, 34);
  auto m0 = random_vector(n, 35, 0.1f), v0 = random_vector(n, 36, 0.1f);
  for (float& v : v0) v = v * v;
  compare(
      [&](Backend& be) -> Outputs {
        Buffer<float> P = up(be, p0), G = up(be, g), M = up(be, m0), V = up(be, v0);
        be.adamw_update({.size = n,
                         .param = P.data(),
                         .grad = G.data(),
                         .exp_avg = M.data(),
                         .exp_avg_sq = V.data(),
                         .lr = 1e-2f,
                         .beta1 = 0.9f,
                         .beta2 = 0.95f,
                         .eps = 1e-8f,
                         .weight_decay = 0.1f,
                         .step = 7,
                         .grad_scale = 0.5f});
        return {{"param", down(be, P)}, {"exp_avg", down(be, M)}, {"exp_avg_sq", down(be, V)}};
      },
      1e-5);
}

INSTANTIATE_TEST_SUITE_P(Variants, BackendOps, ::testing::ValuesIn(testing::backend_variants()),
                         testing::backend_variant_name);

}  // namespace
}  // namespace mohge
