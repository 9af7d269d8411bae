// Expert-parallel training across real processes over UCX on localhost: 2 and 4 ranks train
// exactly like one process on the same global batch; a rank killed mid-step is named by the
// others within the deadline; a checkpoint written by 4 ranks evaluates to the same loss in 2
// ranks and in one process, and training resumes from it in 2 ranks.
//
// Every rank (and the single-process baseline) runs in a forked child: the parent never starts
// OpenMP or UCX, so forking stays safe.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "storage/token_file.hpp"
#include "tests/worker/tiny_spec.hpp"
#include "worker/comm/rendezvous.hpp"
#include "worker/comm/ucx_communicator.hpp"
#include "worker/dist/local_ranks.hpp"
#include "worker/dist/placement.hpp"
#include "worker/dist/rank_runner.hpp"
#include "worker/dist/token_exchange.hpp"
#include "worker/model/rng.hpp"
#include "worker/train/checkpoint.hpp"

namespace mohge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

JobSpec spec_for(const std::string& kind) {
  json ffn = kind == "moe"
                 ? json{{"kind", "moe"},    {"experts", 4},        {"expert_width", 12},
                        {"top_experts", 2}, {"shared_experts", 1}, {"shared_width", 8}}
                 : json{{"kind", "mohge"},           {"groups", 4},      {"experts_per_group", 4},
                        {"widths", {6, 10, 14, 18}}, {"top_groups", 2},  {"top_experts", 3},
                        {"shared_experts", 1},       {"shared_width", 8}};
  if (kind == "mohge-bias") {  // aux-loss-free balance: the bias is the same on every rank
    ffn["balance"] = "bias";
    ffn["bias_rate"] = 0.01;
  }
  const json j = {{"name", "dist-" + kind},
                  {"model",
                   {{"vocab_size", 32},
                    {"seq_len", 8},
                    {"layers", 2},
                    {"d_model", 16},
                    {"heads", 2},
                    {"init_std", 0.2},
                    {"ffn", ffn}}},
                  {"data", {{"train", "train.bin"}, {"val", "val.bin"}}},
                  {"train",
                   {{"steps", 6},
                    {"batch_size", 8},
                    {"lr", 1e-2},
                    {"warmup_steps", 1},
                    {"eval_every", 3},
                    {"eval_batches", 2},
                    {"seed", 5}}},
                  {"checkpoint", {{"every", 3}, {"keep", 2}}}};
  return parse_job_spec(j).value();
}

// A CPU backend that remembers which memory is its own (every live allocate()), standing in
// for a device: on a GPU rank that memory is the GPU's and only NCCL may carry it.
class TrackingBackend final : public Backend {
 public:
  TrackingBackend() : inner_(make_cpu_backend(1)) {}
  bool owns(const void* p, size_t bytes) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = live_.upper_bound(a);
    if (it == live_.begin()) return false;
    --it;
    return a + bytes <= it->first + it->second;
  }
  std::string name() const override { return inner_->name(); }
  int num_threads() const override { return inner_->num_threads(); }
  Precision precision() const override { return inner_->precision(); }
  void* allocate(size_t bytes) override {
    void* p = inner_->allocate(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    live_[reinterpret_cast<uintptr_t>(p)] = bytes;
    return p;
  }
  void deallocate(void* p) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_.erase(reinterpret_cast<uintptr_t>(p));
    }
    inner_->deallocate(p);
  }
  void copy_to_host(void* d, const void* s, size_t n) override { inner_->copy_to_host(d, s, n); }
  void copy_from_host(void* d, const void* s, size_t n) override {
    inner_->copy_from_host(d, s, n);
  }
  void fill_zero(float* d, int64_t n) override { inner_->fill_zero(d, n); }
  void copy(float* d, const float* s, int64_t n) override { inner_->copy(d, s, n); }
  void synchronize() override { inner_->synchronize(); }
  void gemm(const GemmParams& p) override { inner_->gemm(p); }
  void axpy(int64_t n, float a, const float* x, float* y) override { inner_->axpy(n, a, x, y); }
  void scale(int64_t n, float a, float* x) override { inner_->scale(n, a, x); }
  double sum_squares(int64_t n, const float* x) override { return inner_->sum_squares(n, x); }
  void embedding_forward(const EmbeddingParams& p) override { inner_->embedding_forward(p); }
  void embedding_backward(const EmbeddingParams& p) override { inner_->embedding_backward(p); }
  void rmsnorm_forward(const RmsNormParams& p) override { inner_->rmsnorm_forward(p); }
  void rmsnorm_backward(const RmsNormParams& p) override { inner_->rmsnorm_backward(p); }
  void attention_forward(const AttentionParams& p) override { inner_->attention_forward(p); }
  void attention_backward(const AttentionParams& p) override { inner_->attention_backward(p); }
  void swiglu_forward(const SwigluParams& p) override { inner_->swiglu_forward(p); }
  void swiglu_backward(const SwigluParams& p) override { inner_->swiglu_backward(p); }
  double cross_entropy_forward(const CrossEntropyParams& p) override {
    return inner_->cross_entropy_forward(p);
  }
  void cross_entropy_backward(const CrossEntropyParams& p) override {
    inner_->cross_entropy_backward(p);
  }
  void router_forward(const RouterParams& p) override { inner_->router_forward(p); }
  void router_count(const RouterParams& p, double* g, double* e) override {
    inner_->router_count(p, g, e);
  }
  RouterAuxValues router_aux_forward(const RouterParams& p, const RouterAuxParams& a) override {
    return inner_->router_aux_forward(p, a);
  }
  void router_backward(const RouterParams& p, const RouterAuxParams& a) override {
    inner_->router_backward(p, a);
  }
  void remap_index(const int32_t* in, int64_t n, const int32_t* t, int32_t ts,
                   int32_t* out) override {
    inner_->remap_index(in, n, t, ts, out);
  }
  void dispatch_plan(const int32_t* idx, int64_t n, int32_t k, int32_t e,
                     DispatchPlan* plan) override {
    inner_->dispatch_plan(idx, n, k, e, plan);
  }
  void dispatch_forward(const DispatchParams& p) override { inner_->dispatch_forward(p); }
  void dispatch_backward(const DispatchParams& p) override { inner_->dispatch_backward(p); }
  void combine_forward(const CombineParams& p) override { inner_->combine_forward(p); }
  void combine_backward(const CombineParams& p) override { inner_->combine_backward(p); }
  void grouped_swiglu_forward(const GroupedSwigluParams& p) override {
    inner_->grouped_swiglu_forward(p);
  }
  void grouped_swiglu_backward(const GroupedSwigluParams& p) override {
    inner_->grouped_swiglu_backward(p);
  }
  void adamw_update(const AdamWParams& p) override { inner_->adamw_update(p); }

 private:
  std::unique_ptr<Backend> inner_;
  mutable std::mutex mu_;
  std::map<uintptr_t, size_t> live_;  // address → bytes
};

// One plane of a rank's communication over a shared communicator: the data plane must be
// handed only backend memory (what NCCL can carry on a GPU), the control plane only host
// memory (what stays on UCX). Every other use is written down as a violation.
class PlaneCheck final : public Communicator {
 public:
  PlaneCheck(Communicator& inner, const TrackingBackend& be, bool data)
      : inner_(inner), be_(be), data_(data) {}
  int rank() const override { return inner_.rank(); }
  int world() const override { return inner_.world(); }
  std::string name() const override { return data_ ? "data" : "control"; }
  int64_t bytes_sent() const override { return inner_.bytes_sent(); }
  Status all_to_all_v(const void* send, const int64_t* sb, void* recv, const int64_t* rb) override {
    int64_t s = 0, r = 0;
    for (int p = 0; p < world(); ++p) {
      s += sb[p];
      r += rb[p];
    }
    check("all_to_all_v send", send, s);
    check("all_to_all_v recv", recv, r);
    return inner_.all_to_all_v(send, sb, recv, rb);
  }
  Status send_recv(int peer, const void* send, int64_t sb, void* recv, int64_t rb) override {
    check("send_recv send", send, sb);
    check("send_recv recv", recv, rb);
    return inner_.send_recv(peer, send, sb, recv, rb);
  }
  Status all_reduce(float* d, int64_t n, ReduceOp op) override {
    check("all_reduce(float)", d, n * 4);
    return inner_.all_reduce(d, n, op);
  }
  Status all_reduce(double* d, int64_t n, ReduceOp op) override {
    check("all_reduce(double)", d, n * 8);
    return inner_.all_reduce(d, n, op);
  }
  Status broadcast(void* d, int64_t n, int root) override {
    check("broadcast", d, n);
    return inner_.broadcast(d, n, root);
  }
  Status barrier() override { return inner_.barrier(); }
  void abort(const std::string& why) override { inner_.abort(why); }
  Status finalize() override { return inner_.finalize(); }

  int64_t calls = 0;
  std::vector<std::string> violations;

 private:
  void check(const char* op, const void* p, int64_t bytes) {
    if (bytes <= 0) return;
    ++calls;
    if (be_.owns(p, static_cast<size_t>(bytes)) != data_)
      violations.push_back(name() + " plane: " + op + " of " + std::to_string(bytes) + " bytes " +
                           (data_ ? "outside" : "inside") + " backend memory");
  }

  Communicator& inner_;
  const TrackingBackend& be_;
  bool data_;
};

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("mohge-dist-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    Rng rng(11);
    for (const char* f : {"train.bin", "val.bin"}) {
      std::vector<uint16_t> t(2000);
      for (size_t i = 0; i < t.size(); ++i)
        t[i] = static_cast<uint16_t>(rng.uniform() < 0.7 ? (i * 5) % 32 : rng.below(32));
      ASSERT_TRUE(token_file_write(root_ / f, t).ok());
    }
  }
  void TearDown() override { fs::remove_all(root_); }

  // Trains `spec` with `world` ranks (world 1: the single-process trainer) into `run`;
  // returns each rank's exit code.
  std::vector<RankExit> train(const JobSpec& spec, int world, const std::string& run,
                              bool resume = false, int kill_rank = -1) {
    const int port = free_local_port();
    return run_local_ranks(world, [&](int rank) -> int {
      TrainOptions opt;
      opt.storage_root = root_;
      opt.run_dir = root_ / run;
      opt.resume = resume;
      opt.progress = false;
      std::function<void(const StepReport&)> on_step;
      if (rank == kill_rank) {
        // SIGKILL this rank right after step 2: the others are then in the middle of step 3,
        // waiting on it in a collective, and it dies without a word.
        on_step = [](const StepReport& r) {
          if (r.step == 2) ::kill(::getpid(), SIGKILL);
        };
      }
      Status s;
      if (world == 1) {
        auto be = make_job_backend(spec, 1);
        if (!be.ok()) {
          std::fprintf(stderr, "%s\n", be.error().to_string().c_str());
          return 1;
        }
        auto trainer = Trainer::create(spec, opt, *be.value());
        s = trainer.ok() ? trainer.value()->run() : Status(trainer.error());
      } else {
        RankConfig c;
        c.spec = spec;
        c.rank = rank;
        c.world = world;
        c.rendezvous = "127.0.0.1:" + std::to_string(port);
        c.rendezvous_secret = "test-" + std::to_string(port);
        c.threads = 1;
        c.gpu = rank;  // used by ranks on "cuda" only
        c.comm_timeout_s = 20.0;
        c.train = opt;
        s = rank_run(c, on_step);
      }
      if (!s.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, s.error().to_string().c_str());
        // The survivors of a killed rank must name it.
        if (kill_rank >= 0 &&
            s.error().message.find("rank " + std::to_string(kill_rank)) != std::string::npos)
          return 42;
        return 1;
      }
      return 0;
    });
  }

  std::vector<double> read_metric(const std::string& run, const std::string& key) {
    std::vector<double> out;
    std::ifstream in(root_ / run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const json j = json::parse(line);
      if (j.contains(key)) out.push_back(j[key].get<double>());
    }
    return out;
  }

  fs::path root_;
};

void expect_success(const std::vector<RankExit>& exits) {
  for (size_t r = 0; r < exits.size(); ++r) EXPECT_EQ(exits[r].code, 0) << "rank " << r;
}

class Equivalence : public Distributed,
                    public ::testing::WithParamInterface<std::tuple<std::string, int>> {};

TEST_P(Equivalence, RanksTrainExactlyLikeOneProcess) {
  const auto [kind, world] = GetParam();
  const JobSpec spec = spec_for(kind);
  expect_success(train(spec, 1, "single"));
  expect_success(train(spec, world, "ranks"));
  const auto single = read_metric("single", "loss");
  const auto ranks = read_metric("ranks", "loss");
  ASSERT_EQ(single.size(), 6u);
  ASSERT_EQ(ranks.size(), 6u);
  for (size_t i = 0; i < single.size(); ++i)
    EXPECT_NEAR(ranks[i], single[i], 1e-5 * std::abs(single[i])) << "step " << i + 1;
  const auto aux_single = read_metric("single", "aux_expert");
  const auto aux_ranks = read_metric("ranks", "aux_expert");
  for (size_t i = 0; i < aux_single.size(); ++i)
    EXPECT_NEAR(aux_ranks[i], aux_single[i], 1e-5 * std::abs(aux_single[i])) << "step " << i + 1;
  const auto val_single = read_metric("single", "val_loss");
  const auto val_ranks = read_metric("ranks", "val_loss");
  ASSERT_EQ(val_single.size(), 2u);
  for (size_t i = 0; i < val_single.size(); ++i)
    EXPECT_NEAR(val_ranks[i], val_single[i], 1e-5 * val_single[i]);
}

// The split a GPU rank depends on, checked on CPU: token rows and replicated gradients go
// through the data plane in backend memory, and only there (on a GPU that is NCCL on device
// memory); counts, losses and norms go through the control plane in host memory. Both planes
// are used, nothing crosses, and the run still equals one process.
TEST_F(Distributed, TokenRowsAndGradientsTravelOnTheDataPlaneAndCountsOnTheControlPlane) {
  for (const std::string kind : {"mohge", "moe"}) {
    const JobSpec spec = spec_for(kind);
    expect_success(train(spec, 1, "single-" + kind));
    const int port = free_local_port();
    const auto exits = run_local_ranks(2, [&](int rank) -> int {
      const std::string addr = "127.0.0.1:" + std::to_string(port);
      std::unique_ptr<RendezvousServer> server;
      if (rank == 0) server = RendezvousServer::start(addr, 2, "planes", "s3cret").value();
      auto rv = rendezvous_connect(addr, rank, 2, "planes", "s3cret", 20.0).value();
      auto comm = make_ucx_communicator(*rv, {.timeout_s = 20.0,
                                              .peer_names = {},
                                              .no_shared_memory = false,
                                              .unreachable = nullptr})
                      .value();
      TrackingBackend be;
      PlaneCheck control(*comm, be, false), data(*comm, be, true);
      TrainOptions opt;
      opt.storage_root = root_;
      opt.run_dir = root_ / ("planes-" + kind);
      opt.progress = false;
      opt.comm = &control;
      opt.data_comm = &data;
      Status s;
      {
        auto trainer = Trainer::create(spec, opt, be);
        s = trainer.ok() ? trainer.value()->run() : Status(trainer.error());
      }
      if (!s.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, s.error().to_string().c_str());
        return 1;
      }
      for (const PlaneCheck* p : {&control, &data}) {
        for (const std::string& v : p->violations)
          std::fprintf(stderr, "rank %d: %s\n", rank, v.c_str());
      }
      if (!control.violations.empty() || !data.violations.empty()) return 2;
      // Per step and layer: two dispatches, two combines; and one gradient all-reduce.
      if (data.calls < 6 * (4 * 2 + 1) * 2 || control.calls == 0) {
        std::fprintf(stderr, "rank %d: %lld data, %lld control transfers\n", rank,
                     static_cast<long long>(data.calls), static_cast<long long>(control.calls));
        return 3;
      }
      if (!comm->finalize().ok()) return 1;
      rv->leave();
      if (server) server->wait_done(20.0);
      return 0;
    });
    expect_success(exits);
    const auto single = read_metric("single-" + kind, "loss");
    const auto planes = read_metric("planes-" + kind, "loss");
    ASSERT_EQ(planes.size(), single.size());
    for (size_t i = 0; i < single.size(); ++i)
      EXPECT_NEAR(planes[i], single[i], 1e-5 * std::abs(single[i])) << kind << " step " << i + 1;
  }
}

// all-size-adaptive re-plans every 2 steps and moves experts (weights and AdamW moments)
// between ranks several times, yet every step's loss equals one process; a resume in the
// same world continues with the recorded placement, and a resume in another world starts
// from static All-size, both still equal to one process.
TEST_F(Distributed, AdaptivePlacementMovesExpertsWithoutChangingTheMath) {
  JobSpec spec = spec_for("mohge");
  spec.placement = "all-size-adaptive";
  spec.placement_every = 2;
  spec.placement_min_gain = 0.0;
  JobSpec longer = spec;
  longer.train.steps = 8;
  // One process: 6 steps, then resumed to 8 (the schedule is the resumed run's).
  expect_success(train(spec, 1, "single"));
  const auto single6 = read_metric("single", "loss");
  ASSERT_EQ(single6.size(), 6u);
  expect_success(train(longer, 1, "single", /*resume=*/true));
  const auto single = read_metric("single", "loss");
  ASSERT_EQ(single.size(), 8u);
  for (int world : {2, 4}) {
    const std::string run = "adaptive-" + std::to_string(world);
    expect_success(train(spec, world, run));
    const auto first = read_metric(run, "loss");
    ASSERT_EQ(first.size(), 6u);
    for (size_t i = 0; i < first.size(); ++i)
      EXPECT_NEAR(first[i], single6[i], 1e-5 * std::abs(single6[i])) << run << " step " << i + 1;
    // The moves: at steps 2 and 4 (not after the last step), each with experts and bytes.
    int events = 0;
    {
      std::ifstream in(root_ / run / "metrics.jsonl");
      std::string line;
      while (std::getline(in, line)) {
        const json j = json::parse(line);
        if (!j.contains("placement")) continue;
        ++events;
        EXPECT_GT(j["placement"]["experts_moved"].get<int>(), 0) << line;
        EXPECT_GT(j["placement"]["bytes"].get<int64_t>(), 0) << line;
        EXPECT_LT(j["placement"]["predicted_imbalance_after"].get<double>(),
                  j["placement"]["predicted_imbalance_before"].get<double>())
            << line;
      }
    }
    EXPECT_GE(events, 2) << world << " ranks";
    // The checkpoints record the placement they were written under, layer by layer.
    const json state = json::parse(
        std::ifstream(root_ / run / "checkpoints" / "step-00000006" / "trainer_state.json"));
    ASSERT_TRUE(state.contains("placement")) << state.dump();
    EXPECT_EQ(state["placement"].size(), static_cast<size_t>(spec.model.layers));
    EXPECT_NE(state["placement"][0].get<std::vector<int>>(),
              placement_plan(spec.model, "all-size", world).value().owner)
        << "the experts moved away from static All-size";
    // Resume to step 8 in the same world (the recorded placement) and in another one.
    fs::copy(root_ / run, root_ / (run + "-other"), fs::copy_options::recursive);
    expect_success(train(longer, world, run, /*resume=*/true));
    expect_success(train(longer, world == 2 ? 4 : 2, run + "-other", /*resume=*/true));
    for (const std::string& r : {run, run + "-other"}) {
      const auto ranks = read_metric(r, "loss");
      ASSERT_EQ(ranks.size(), 8u) << r;
      for (size_t i = 0; i < single.size(); ++i)
        EXPECT_NEAR(ranks[i], single[i], 1e-5 * std::abs(single[i])) << r << " step " << i + 1;
    }
  }
}

// GPU hosts with two or more GPUs (deploy/gpu-check.sh runs it there): two ranks on two GPUs,
// token rows and gradients over NCCL, train like one GPU. Elsewhere it skips with the reason.
// The GPUs are counted in a child: CUDA must not start in this process before it forks.
TEST_F(Distributed, TwoGpuRanksOverNcclTrainLikeOneGpu) {
  const auto counted =
      run_local_ranks(1, [](int) { return std::min<int>(cuda_devices().size(), 9); });
  const int gpus = counted[0].code;
  if (gpus < 2) GTEST_SKIP() << "needs 2 visible CUDA GPUs (" << gpus << " here)";
  for (const std::string kind : {"mohge", "moe"}) {
    JobSpec spec = spec_for(kind);
    spec.resources.device = "cuda";
    expect_success(train(spec, 1, "gpu-single-" + kind));
    expect_success(train(spec, 2, "gpu-ranks-" + kind));
    const auto single = read_metric("gpu-single-" + kind, "loss");
    const auto ranks = read_metric("gpu-ranks-" + kind, "loss");
    ASSERT_EQ(single.size(), 6u);
    ASSERT_EQ(ranks.size(), 6u);
    // Different row counts per grouped call may pick other cuBLAS kernels: 1e-4, not 1e-5.
    for (size_t i = 0; i < single.size(); ++i)
      EXPECT_NEAR(ranks[i], single[i], 1e-4 * std::abs(single[i])) << kind << " step " << i + 1;
  }
}

INSTANTIATE_TEST_SUITE_P(KindsAndWorlds, Equivalence,
                         ::testing::Combine(::testing::Values("mohge", "moe", "mohge-bias"),
                                            ::testing::Values(2, 4)),
                         [](const auto& param_info) {
                           std::string kind = std::get<0>(param_info.param);
                           std::replace(kind.begin(), kind.end(), '-', '_');
                           return kind + "_world" + std::to_string(std::get<1>(param_info.param));
                         });

TEST_F(Distributed, MetricsHoldPerRankLoadsImbalanceAndTheCounterfactual) {
  expect_success(train(spec_for("mohge"), 2, "run"));
  std::ifstream in(root_ / "run" / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  const json rec = json::parse(line);
  EXPECT_EQ(rec["workers"], 2);
  ASSERT_EQ(rec["layers"].size(), 2u);
  const json& layer = rec["layers"][0];
  ASSERT_EQ(layer["ranks"].size(), 2u);
  double tokens = 0.0, flops_max = 0.0, flops_sum = 0.0;
  for (const json& r : layer["ranks"]) {
    ASSERT_EQ(r["tokens"].size(), 4u);  // by group
    for (double v : r["tokens"]) tokens += v;
    flops_max = std::max(flops_max, r["flops"].get<double>());
    flops_sum += r["flops"].get<double>();
    EXPECT_GT(r["comm_bytes"].get<int64_t>(), 0);
    EXPECT_GT(r["compute_ms"].get<double>(), 0.0);
  }
  EXPECT_EQ(tokens, 8 * 8 * 3);  // every assignment of the global batch lands on some rank
  EXPECT_NEAR(layer["imbalance"].get<double>(), flops_max / (flops_sum / 2), 1e-9);
  EXPECT_TRUE(layer["imbalance_group_per_rank"].is_number());
}

TEST_F(Distributed, AKilledRankIsNamedByTheOthersWithinTheDeadline) {
  const auto exits = train(spec_for("mohge"), 2, "run", false, /*kill_rank=*/1);
  EXPECT_EQ(exits[1].code, -SIGKILL);
  EXPECT_EQ(exits[0].code, 42) << "rank 0 must fail naming rank 1";
  // Well inside the 20 s deadline: the rendezvous sees the dead process at once.
  EXPECT_LT(exits[0].seconds, 15.0);
}

TEST_F(Distributed, FourRankCheckpointEvaluatesTheSameInTwoRanksAndOneProcess) {
  const JobSpec spec = spec_for("mohge");
  expect_success(train(spec, 4, "four"));
  const fs::path ckpt = root_ / "four" / "checkpoints" / "step-00000006";
  ASSERT_TRUE(fs::exists(ckpt / "model.safetensors.index.json"));
  for (int r = 1; r <= 4; ++r)
    EXPECT_TRUE(fs::exists(ckpt / shard_file_name("model", r - 1, 4))) << r;
  const double trained = read_metric("four", "val_loss").back();

  // One process and two ranks load the 4-rank checkpoint and evaluate the validation set.
  for (int world : {1, 2}) {
    const int port = free_local_port();
    const fs::path out = root_ / ("eval-" + std::to_string(world));
    const auto exits = run_local_ranks(world, [&](int rank) -> int {
      auto be = make_cpu_backend(1);
      std::unique_ptr<RendezvousServer> server;
      std::unique_ptr<Rendezvous> rv;
      std::unique_ptr<Communicator> comm;
      ExpertPlacement placement;
      ParallelContext parallel;
      if (world > 1) {
        const std::string addr = "127.0.0.1:" + std::to_string(port);
        if (rank == 0) server = RendezvousServer::start(addr, world, "eval", "s3cret").value();
        rv = rendezvous_connect(addr, rank, world, "eval", "s3cret", 20.0).value();
        comm = make_ucx_communicator(*rv, {.timeout_s = 20.0,
                                           .peer_names = {},
                                           .no_shared_memory = false,
                                           .unreachable = nullptr})
                   .value();
        placement = placement_plan(spec.model, "all-size", world).value();
        parallel = ParallelContext{comm.get(), &placement};
      }
      Transformer model(spec.model, *be, parallel);
      if (Status s = checkpoint_load(ckpt, model, nullptr, nullptr); !s.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, s.error().to_string().c_str());
        return 1;
      }
      auto val = TokenWindows::load(root_ / "val.bin", 8, 32, "data.val").value();
      const EvalResult e = evaluate(model, val, 2, 8, parallel);
      if (rank == 0) std::ofstream(out) << std::setprecision(17) << e.loss;
      if (comm && !comm->finalize().ok()) return 1;
      if (rv) rv->leave();
      if (server) server->wait_done(20.0);
      return 0;
    });
    expect_success(exits);
    double loss = 0;
    std::ifstream(out) >> loss;
    EXPECT_NEAR(loss, trained, 1e-5 * trained) << world << " rank(s)";
  }

  // Training continues from it in 2 ranks.
  fs::copy(root_ / "four", root_ / "two", fs::copy_options::recursive);
  JobSpec longer = spec;
  longer.train.steps = 8;
  expect_success(train(longer, 2, "two", /*resume=*/true));
  EXPECT_EQ(read_metric("two", "loss").size(), 8u);
}

}  // namespace
}  // namespace mohge

namespace mohge {
namespace {

// A peer whose row counts are hostile: whatever all_to_all_v receives is `count`.
class HostileCounts final : public Communicator {
 public:
  explicit HostileCounts(int64_t count) : count_(count) {}
  int rank() const override { return 0; }
  int world() const override { return 2; }
  std::string name() const override { return "hostile"; }
  Status all_to_all_v(const void*, const int64_t*, void* recv, const int64_t* recv_bytes) override {
    auto* out = static_cast<int64_t*>(recv);
    const int64_t n = (recv_bytes[0] + recv_bytes[1]) / int64_t{sizeof(int64_t)};
    for (int64_t i = 0; i < n; ++i) out[i] = i == n - 1 ? count_ : 0;
    return {};
  }
  Status send_recv(int, const void*, int64_t, void*, int64_t) override { return {}; }
  Status all_reduce(float*, int64_t, ReduceOp) override { return {}; }
  Status all_reduce(double*, int64_t, ReduceOp) override { return {}; }
  Status broadcast(void*, int64_t, int) override { return {}; }
  Status barrier() override { return {}; }
  void abort(const std::string&) override {}
  Status finalize() override { return {}; }
  int64_t bytes_sent() const override { return 0; }

 private:
  int64_t count_;
};

// Row counts from a peer are checked before they size a buffer or a copy: a negative count or
// more rows than a micro-batch can route is refused, naming the rank.
TEST(TokenExchange, APeersImpossibleRowCountsAreRefusedBeforeAnyCopy) {
  const JobSpec spec = testing::tiny_spec("mohge");
  Result<ExpertPlacement> placement = placement_plan(spec.model, "all-size", 2);
  ASSERT_TRUE(placement.ok()) << placement.error().to_string();
  auto be = make_cpu_backend(1);
  DispatchPlan local;
  local.num_tokens = 4;
  local.top_k = spec.model.ffn.top_experts;
  local.num_experts = spec.model.ffn.num_experts();
  local.expert_offsets.assign(static_cast<size_t>(local.num_experts) + 1, 0);
  for (int64_t count : {int64_t{-1}, int64_t{1} << 40, local.num_tokens * local.top_k + 1}) {
    HostileCounts comm(count);
    TokenExchange ex(comm, comm, *be, placement.value(), spec.model.d_model);
    const Status s = ex.plan(local);
    ASSERT_FALSE(s.ok()) << count;
    EXPECT_NE(s.error().message.find("rank 1 announced"), std::string::npos) << s.error().message;
  }
  HostileCounts fair(local.num_tokens * local.top_k);
  TokenExchange ok(fair, fair, *be, placement.value(), spec.model.d_model);
  EXPECT_TRUE(ok.plan(local).ok());
}

}  // namespace
}  // namespace mohge
