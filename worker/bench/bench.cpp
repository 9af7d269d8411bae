#include "worker/bench/bench.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "kernels/backend.hpp"
#include "kernels/cpu/cpu_backend.hpp"
#include "worker/model/ffn.hpp"
#include "worker/model/rng.hpp"
#include "worker/model/transformer.hpp"
#include "worker/train/batches.hpp"
#include "worker/train/optimizer.hpp"
#include "worker/train/trainer.hpp"

namespace mohge {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `fn` twice to warm up, then at least `min_reps` times and `min_seconds`; returns the
// median seconds of one run.
template <class Fn>
double time_median(Fn&& fn, int min_reps, double min_seconds) {
  fn();
  fn();
  std::vector<double> times;
  const auto start = Clock::now();
  while (static_cast<int>(times.size()) < min_reps || seconds_since(start) < min_seconds) {
    const auto t0 = Clock::now();
    fn();
    times.push_back(seconds_since(t0));
  }
  return median(times);
}

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

}  // namespace

double backend_gemm_ceiling_gflops(Backend& be, const std::vector<GemmShape>& shapes) {
  double best = 0.0;
  for (const GemmShape& s : shapes) {
    const double flop = 2.0 * static_cast<double>(s.m * s.n * s.k);
    Buffer<float> a(be, s.m * s.k), b(be, s.n * s.k), c(be, s.m * s.n);
    be.copy_from_host(a.data(), random_floats(s.m * s.k, 1).data(),
                      sizeof(float) * static_cast<size_t>(s.m * s.k));
    be.copy_from_host(b.data(), random_floats(s.n * s.k, 2).data(),
                      sizeof(float) * static_cast<size_t>(s.n * s.k));
    const double t = time_median(
        [&] {
          be.gemm({.trans_a = false,
                   .trans_b = true,
                   .m = s.m,
                   .n = s.n,
                   .k = s.k,
                   .a = a.data(),
                   .lda = s.k,
                   .b = b.data(),
                   .ldb = s.k,
                   .c = c.data(),
                   .ldc = s.n});
          be.synchronize();
        },
        10, 0.3);
    best = std::max(best, flop / t / 1e9);
  }
  return best;
}

double gemm_ceiling_gflops(const std::vector<GemmShape>& shapes, int threads, Precision precision) {
  CpuBackend be(threads, precision);
  // One multi-threaded call at a time, as any backend; then, below, the CPU's other way.
  double best = backend_gemm_ceiling_gflops(be, shapes);
  for (const GemmShape& s : shapes) {
    const double flop = 2.0 * static_cast<double>(s.m * s.n * s.k);
    // One single-threaded call per thread, concurrently.
    {
      std::vector<std::vector<float>> a, b, c;
      for (int i = 0; i < threads; ++i) {
        a.push_back(random_floats(s.m * s.k, 3 + i));
        b.push_back(random_floats(s.n * s.k, 7 + i));
        c.emplace_back(static_cast<size_t>(s.m * s.n));
      }
      const double t = time_median(
          [&] {
#pragma omp parallel num_threads(threads)
            {
              const int i = omp_get_thread_num();
              cpu_gemm_serial({.trans_a = false,
                               .trans_b = true,
                               .m = s.m,
                               .n = s.n,
                               .k = s.k,
                               .a = a[i].data(),
                               .lda = s.k,
                               .b = b[i].data(),
                               .ldb = s.k,
                               .c = c[i].data(),
                               .ldc = s.n},
                              precision);
            }
          },
          10, 0.3);
      best = std::max(best, threads * flop / t / 1e9);
    }
  }
  return best;
}

Result<LayerBenchResult> bench_layer(const JobSpec& spec, int64_t tokens, int threads) {
  const ModelSpec& m = spec.model;
  const FfnSpec& f = m.ffn;
  Result<std::unique_ptr<Backend>> backend = make_job_backend(spec, threads);
  if (!backend.ok()) return backend.error();
  Backend& be = *backend.value();
  ParamStore params;
  std::unique_ptr<FeedForward> ffn = ffn_create(m, 0, be, params);
  params.allocate(be);
  params.initialize(spec.train.seed);
  const int64_t D = m.d_model;
  // Inputs and outputs in the backend's memory, so the same bench runs on any backend.
  Buffer<float> x(be, tokens * D), dy(be, tokens * D), y(be, tokens * D), dx(be, tokens * D);
  const size_t bytes = sizeof(float) * static_cast<size_t>(tokens * D);
  be.copy_from_host(x.data(), random_floats(tokens * D, 11).data(), bytes);
  be.copy_from_host(dy.data(), random_floats(tokens * D, 12).data(), bytes);
  FfnWorkspace ws;
  auto fwd_bwd = [&] {
    be.fill_zero(y.data(), tokens * D);
    be.fill_zero(dx.data(), tokens * D);
    ffn->forward(x.data(), y.data(), tokens, {});
    ffn->backward(x.data(), dy.data(), dx.data(), tokens, ws);
    be.synchronize();
  };
  const double t = time_median(fwd_bwd, 10, 3.0);

  // FLOPs of one forward at the measured routing; backward is twice the forward.
  double fwd = 0.0;
  std::vector<GemmShape> shapes;
  if (const LayerRouting* r = ffn->routing()) {
    const double logits = f.kind == "mohge" ? f.groups + f.num_experts() : f.num_experts();
    fwd += 2.0 * static_cast<double>(tokens * D) * logits;
    fwd += 2.0 * static_cast<double>(tokens) * r->activated_expert_params;
    const int64_t rows = tokens * f.top_experts / std::max(1, f.num_experts());
    int64_t wsum = 0;
    for (int e = 0; e < f.num_experts(); ++e) wsum += f.expert_hidden_width(e);
    const int64_t wmean = wsum / std::max(1, f.num_experts());
    shapes = {{rows, 2 * wmean, D}, {rows, D, wmean}};
    if (f.shared_experts > 0) shapes.push_back({tokens, 2 * f.shared_width, D});
  } else {
    fwd = 2.0 * static_cast<double>(tokens) * static_cast<double>(ffn->expert_params());
    shapes = {{tokens, 2 * f.width, D}, {tokens, D, f.width}};
  }
  LayerBenchResult res;
  res.ms_per_fwd_bwd = t * 1e3;
  res.gflop = 3.0 * fwd / 1e9;
  res.gflops = res.gflop / t;
  res.ceiling_gflops = be.name() == "cpu"
                           ? gemm_ceiling_gflops(shapes, be.num_threads(), be.precision())
                           : backend_gemm_ceiling_gflops(be, shapes);
  res.fraction_of_ceiling = res.gflops / res.ceiling_gflops;
  if (const LayerRouting* r = ffn->routing()) {
    // The grouped experts alone, with the row counts of the router's last decision.
    std::vector<int64_t> rows, widths;
    int64_t total_rows = 0, act = 0, hid = 0, w_gu = 0, w_d = 0;
    double flop = 0.0;
    for (int e = 0; e < f.num_experts(); ++e) {
      rows.push_back(static_cast<int64_t>(r->expert_assignments[static_cast<size_t>(e)]));
      widths.push_back(f.expert_hidden_width(e));
      total_rows += rows.back();
      act += rows.back() * 2 * widths.back();
      hid += rows.back() * widths.back();
      w_gu += 2 * widths.back() * D;
      w_d += D * widths.back();
      flop += 3.0 * 6.0 * static_cast<double>(rows.back() * D * widths.back());
    }
    Buffer<float> ex(be, total_rows * D), edy(be, total_rows * D), ey(be, total_rows * D),
        edx(be, total_rows * D), wgu(be, w_gu), wd(be, w_d), dwgu(be, w_gu), dwd(be, w_d),
        eact(be, act), ehid(be, hid), edact(be, act), edhid(be, hid);
    be.copy_from_host(ex.data(), random_floats(total_rows * D, 13).data(),
                      sizeof(float) * static_cast<size_t>(total_rows * D));
    be.copy_from_host(edy.data(), random_floats(total_rows * D, 14).data(),
                      sizeof(float) * static_cast<size_t>(total_rows * D));
    be.copy_from_host(wgu.data(), random_floats(w_gu, 15).data(),
                      sizeof(float) * static_cast<size_t>(w_gu));
    be.copy_from_host(wd.data(), random_floats(w_d, 16).data(),
                      sizeof(float) * static_cast<size_t>(w_d));
    std::vector<ExpertSlice> slices(rows.size());
    int64_t xr = 0, a = 0, h = 0, g = 0, d = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      ExpertSlice& s = slices[e];
      s.rows = rows[e];
      s.width = widths[e];
      s.x = ex.data() + xr * D;
      s.y = ey.data() + xr * D;
      s.d_y = edy.data() + xr * D;
      s.d_x = edx.data() + xr * D;
      s.w_gate_up = wgu.data() + g;
      s.d_w_gate_up = dwgu.data() + g;
      s.w_down = wd.data() + d;
      s.d_w_down = dwd.data() + d;
      s.act = eact.data() + a;
      s.d_act = edact.data() + a;
      s.hidden = ehid.data() + h;
      s.d_hidden = edhid.data() + h;
      xr += rows[e];
      a += rows[e] * 2 * widths[e];
      h += rows[e] * widths[e];
      g += 2 * widths[e] * D;
      d += D * widths[e];
    }
    const GroupedSwigluParams gp{
        .dim = D, .slices = slices.data(), .num_slices = static_cast<int64_t>(slices.size())};
    const double te = time_median(
        [&] {
          be.grouped_swiglu_forward(gp);
          be.grouped_swiglu_backward(gp);
          be.synchronize();
        },
        10, 3.0);
    res.experts_ms_per_fwd_bwd = te * 1e3;
    res.experts_gflops = flop / te / 1e9;
    res.experts_fraction_of_ceiling = res.experts_gflops / res.ceiling_gflops;
  }
  res.tokens = tokens;
  res.threads = be.num_threads();
  res.precision = spec.train.precision;
  return res;
}

Result<TrainBenchResult> bench_train(const JobSpec& spec, const std::string& storage_root,
                                     int64_t steps, int threads, bool* used_real_data) {
  namespace fs = std::filesystem;
  const ModelSpec& m = spec.model;
  const int64_t B = spec.train.batch_size, T = m.seq_len, N = B * T;
  Result<std::unique_ptr<Backend>> backend = make_job_backend(spec, threads);
  if (!backend.ok()) return backend.error();
  Backend& be = *backend.value();
  Transformer model(m, be);
  model.initialize(spec.train.seed);
  AdamW opt(spec.train, model.params(), be);

  std::vector<int32_t> inputs, targets;
  fs::path train_path(spec.data.train);
  if (!train_path.is_absolute()) train_path = fs::path(storage_root) / train_path;
  std::unique_ptr<TokenWindows> windows;
  std::unique_ptr<TrainBatches> batches;
  if (fs::exists(train_path)) {
    Result<TokenWindows> w = TokenWindows::load(train_path, T, m.vocab_size, "data.train");
    if (!w.ok()) return w.error();
    windows = std::make_unique<TokenWindows>(std::move(w).value());
    batches = std::make_unique<TrainBatches>(*windows, B, spec.train.seed);
  }
  *used_real_data = batches != nullptr;
  Rng rng(spec.train.seed);
  auto next = [&] {
    if (batches) return batches->next(inputs, targets);
    inputs.resize(static_cast<size_t>(N));
    targets.resize(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      inputs[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(m.vocab_size)));
      targets[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(m.vocab_size)));
    }
  };
  int64_t step = 0;
  double flops_sum = 0.0;
  auto train_step = [&] {
    next();
    model.forward(inputs.data(), targets.data(), B, T);
    model.params().zero_grad();
    model.backward();
    opt.step(lr_at(spec.train, step++), opt.grad_norm());
    flops_sum += model.flops_per_token(T) * static_cast<double>(N);
  };
  train_step();
  train_step();
  flops_sum = 0.0;
  std::vector<double> times;
  for (int64_t i = 0; i < steps; ++i) {
    const auto t0 = Clock::now();
    train_step();
    times.push_back(seconds_since(t0));
  }
  const double t = median(times);
  TrainBenchResult r;
  r.steps = steps;
  r.threads = be.num_threads();
  r.ms_per_step = t * 1e3;
  r.tokens_per_s = static_cast<double>(N) / t;
  r.model_gflop_per_step = flops_sum / static_cast<double>(steps) / 1e9;
  r.achieved_gflops = r.model_gflop_per_step / t;
  const FfnSpec& f = m.ffn;
  int64_t width = f.kind == "dense" ? f.width : f.expert_hidden_width(0);
  if (f.kind == "mohge") width = (f.widths.front() + f.widths.back()) / 2;
  const std::vector<GemmShape> model_shapes = {
      {N, 3 * m.d_model, m.d_model}, {N, m.vocab_size, m.d_model}, {N, 2 * width, m.d_model}};
  r.ceiling_gflops = be.name() == "cpu"
                         ? gemm_ceiling_gflops(model_shapes, be.num_threads(), be.precision())
                         : backend_gemm_ceiling_gflops(be, model_shapes);
  r.mfu = r.achieved_gflops / r.ceiling_gflops;
  return r;
}

}  // namespace mohge
