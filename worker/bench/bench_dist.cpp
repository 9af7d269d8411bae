#include "worker/bench/bench_dist.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "worker/comm/rendezvous.hpp"
#include "worker/comm/ucx_communicator.hpp"
#include "worker/dist/expert_moves.hpp"
#include "worker/dist/local_ranks.hpp"
#include "worker/dist/placement.hpp"
#include "worker/dist/rank_runner.hpp"
#include "worker/model/rng.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

fs::path scratch_dir(const std::string& what) {
  const fs::path p =
      fs::temp_directory_path() / ("mohge-bench-" + what + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Median seconds of `op` over `reps` runs after 3 warm-ups, each run started together.
template <class Op>
Result<double> time_collective(Communicator& comm, int reps, Op op) {
  std::vector<double> t;
  for (int i = 0; i < reps + 3; ++i) {
    if (Status s = comm.barrier(); !s.ok()) return s.error();
    const auto t0 = Clock::now();
    if (Status s = op(); !s.ok()) return s.error();
    if (i >= 3) t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return median(t);
}

// One rank of the comm benchmark; rank 0 hosts the rendezvous at `addr` and returns
// {"rows": [...], "transports": [...]}, the others null.
Result<json> comm_bench_one(int rank, int world, const std::string& addr, const std::string& secret,
                            const std::vector<int64_t>& sizes, bool no_shared_memory) {
  std::unique_ptr<RendezvousServer> server;
  if (rank == 0) {
    auto s = RendezvousServer::start(addr, world, "bench-comm", secret);
    if (!s.ok()) return s.error();
    server = std::move(s).value();
  }
  auto rv = rendezvous_connect(addr, rank, world, "bench-comm", secret, 60.0);
  if (!rv.ok()) return rv.error();
  auto comm = make_ucx_communicator(*rv.value(), {.timeout_s = 60.0,
                                                  .peer_names = {},
                                                  .no_shared_memory = no_shared_memory,
                                                  .unreachable = nullptr});
  if (!comm.ok()) return comm.error();
  Communicator& c = *comm.value();
  json rows = json::array();
  for (int64_t bytes : sizes) {
    std::vector<char> send(static_cast<size_t>(bytes), 1), recv(static_cast<size_t>(bytes));
    const int reps = bytes >= (4 << 20) ? 15 : 40;
    const int partner = rank ^ 1;
    Result<double> p2p = time_collective(
        c, reps, [&] { return c.send_recv(partner, send.data(), bytes, recv.data(), bytes); });
    // All-to-all-v: the same bytes spread evenly over the other ranks.
    const int64_t per_peer = bytes / (world - 1);
    std::vector<int64_t> counts(static_cast<size_t>(world), per_peer);
    counts[static_cast<size_t>(rank)] = 0;
    Result<double> a2a = time_collective(c, reps, [&] {
      return c.all_to_all_v(send.data(), counts.data(), recv.data(), counts.data());
    });
    if (!p2p.ok()) return p2p.error();
    if (!a2a.ok()) return a2a.error();
    const double sent = static_cast<double>(per_peer * (world - 1));
    rows.push_back({{"bytes", bytes},
                    {"p2p_gbps", static_cast<double>(bytes) / p2p.value() / 1e9},
                    {"a2a_gbps", sent / a2a.value() / 1e9}});
  }
  const std::vector<std::string> transports = c.peer_transports();
  if (Status s = c.finalize(); !s.ok()) return s.error();
  rv.value()->leave();
  if (server) server->wait_done(30.0);
  if (rank != 0) return json(nullptr);
  return json{{"rows", rows}, {"transports", transports}};
}

CommBench comm_bench_from_json(const json& j) {
  CommBench out;
  for (const json& r : j["rows"]) {
    CommBenchRow row;
    row.bytes_per_rank = r["bytes"].get<int64_t>();
    row.all_to_all_gbps = r["a2a_gbps"].get<double>();
    row.p2p_gbps = r["p2p_gbps"].get<double>();
    row.ratio = row.all_to_all_gbps / row.p2p_gbps;
    out.rows.push_back(row);
  }
  out.transports = j["transports"].get<std::vector<std::string>>();
  return out;
}

Status check_comm_world(int world) {
  if (world < 2 || world % 2 != 0) {
    return invalid_argument("--world",
                            "must be an even number of ranks (pairs for the "
                            "point-to-point figure), got " +
                                std::to_string(world));
  }
  return {};
}

// Runs the real trainer (no evaluation, one final checkpoint) and reads its step times and
// imbalance figures from metrics.jsonl.
struct TrainedFigures {
  std::vector<double> step_ms;
  double imbalance = 0, imbalance_group_per_rank = 0;
};

Result<TrainedFigures> read_figures(const fs::path& metrics, int64_t skip) {
  std::ifstream in(metrics);
  if (!in) return Error{ErrorCode::kInternal, "no metrics in " + metrics.string(), ""};
  TrainedFigures f;
  double n = 0;
  std::string line;
  while (std::getline(in, line)) {
    const json r = json::parse(line);
    if (!r.contains("step_ms") || r["step"].get<int64_t>() <= skip) continue;
    f.step_ms.push_back(r["step_ms"].get<double>());
    for (const json& l : r.value("layers", json::array())) {
      if (!l.contains("imbalance") || !l["imbalance_group_per_rank"].is_number()) continue;
      f.imbalance += l["imbalance"].get<double>();
      f.imbalance_group_per_rank += l["imbalance_group_per_rank"].get<double>();
      n += 1;
    }
  }
  if (n > 0) {
    f.imbalance /= n;
    f.imbalance_group_per_rank /= n;
  }
  return f;
}

JobSpec bench_spec(const JobSpec& spec, int64_t steps) {
  JobSpec s = spec;
  s.train.steps = steps;
  s.train.warmup_steps = std::min<int64_t>(s.train.warmup_steps, steps);
  s.train.eval_every = 0;
  s.train.eval_batches = 0;
  s.checkpoint.every = 0;
  s.checkpoint.keep = 1;
  return s;
}

}  // namespace

Result<CommBench> bench_comm(int world, const std::vector<int64_t>& sizes) {
  if (Status s = check_comm_world(world); !s.ok()) return s.error();
  const fs::path dir = scratch_dir("comm");
  const fs::path out = dir / "rows.json";
  const int port = free_local_port();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  const auto exits = run_local_ranks(
      world,
      [&](int rank) {
        Result<json> r =
            comm_bench_one(rank, world, addr, "bench-" + std::to_string(port), sizes, false);
        if (!r.ok()) {
          std::fprintf(stderr, "rank %d: %s\n", rank, r.error().to_string().c_str());
          return 1;
        }
        if (rank == 0) std::ofstream(out) << r.value().dump();
        return 0;
      },
      600.0);
  for (size_t r = 0; r < exits.size(); ++r) {
    if (exits[r].code != 0) {
      fs::remove_all(dir);
      return Error{ErrorCode::kInternal, "benchmark rank " + std::to_string(r) + " failed", ""};
    }
  }
  std::ifstream in(out);
  CommBench bench = comm_bench_from_json(json::parse(in));
  fs::remove_all(dir);
  return bench;
}

Result<CommBench> bench_comm_rank(const std::string& rendezvous, const std::string& secret,
                                  int rank, int world, const std::vector<int64_t>& sizes) {
  if (Status s = check_comm_world(world); !s.ok()) return s.error();
  if (rank < 0 || rank >= world)
    return invalid_argument("--rank", "must be in [0, " + std::to_string(world) + ")");
  if (secret.empty()) {
    return invalid_argument("MOHGE_RENDEZVOUS_SECRET",
                            "must be set to the same random string on every rank");
  }
  Result<json> r = comm_bench_one(rank, world, rendezvous, secret, sizes, true);
  if (!r.ok()) return r.error();
  if (r.value().is_null()) return CommBench{};
  return comm_bench_from_json(r.value());
}

Result<DistTrainBench> bench_train_workers(const JobSpec& spec, const std::string& storage_root,
                                           int workers, int threads_per_worker, int64_t steps,
                                           const fs::path& from) {
  constexpr int64_t kWarmup = 2;
  int64_t start = 0;
  const fs::path dir = scratch_dir("train");
  if (!from.empty()) {
    // Both runs resume from a copy of the checkpoint.
    std::ifstream state(from / "trainer_state.json");
    if (!state) return invalid_argument("--from", from.string() + " is not a checkpoint folder");
    start = json::parse(state).at("step").get<int64_t>();
    for (const char* run : {"workers", "single"}) {
      std::error_code ec;
      fs::create_directories(dir / run / "checkpoints", ec);
      fs::copy(from, dir / run / "checkpoints" / from.filename(), fs::copy_options::recursive, ec);
      if (ec)
        return invalid_argument("--from", "cannot copy " + from.string() + ": " + ec.message());
    }
  }
  JobSpec s = bench_spec(spec, start + steps + kWarmup);
  s.train.warmup_steps = spec.train.warmup_steps;
  const int port = free_local_port();
  // The R workers first (forked before this process starts any OpenMP thread)…
  const auto exits = run_local_ranks(
      workers,
      [&](int rank) {
        RankConfig c;
        c.spec = s;
        c.rank = rank;
        c.world = workers;
        c.rendezvous = "127.0.0.1:" + std::to_string(port);
        c.rendezvous_secret = "bench-" + std::to_string(::getpid()) + "-" + std::to_string(port);
        c.threads = threads_per_worker;
        c.train.storage_root = storage_root;
        c.train.run_dir = dir / "workers";
        c.train.progress = false;
        c.train.resume = start > 0;
        const Status st = rank_run(c);
        if (!st.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, st.error().to_string().c_str());
        return st.ok() ? 0 : 1;
      },
      3600.0);
  for (size_t r = 0; r < exits.size(); ++r) {
    if (exits[r].code != 0) {
      fs::remove_all(dir);
      return Error{ErrorCode::kInternal, "benchmark rank " + std::to_string(r) + " failed", ""};
    }
  }
  // …then one process with as many threads.
  auto backend = make_cpu_backend(workers * threads_per_worker);
  TrainOptions opt;
  opt.storage_root = storage_root;
  opt.run_dir = dir / "single";
  opt.progress = false;
  opt.resume = start > 0;
  auto trainer = Trainer::create(s, opt, *backend);
  if (!trainer.ok()) return trainer.error();
  if (Status st = trainer.value()->run(); !st.ok()) return st.error();

  Result<TrainedFigures> w = read_figures(dir / "workers" / "metrics.jsonl", start + kWarmup);
  Result<TrainedFigures> one = read_figures(dir / "single" / "metrics.jsonl", start + kWarmup);
  fs::remove_all(dir);
  if (!w.ok()) return w.error();
  if (!one.ok()) return one.error();
  const double tokens = static_cast<double>(s.train.batch_size) * s.model.seq_len;
  DistTrainBench b;
  b.workers = workers;
  b.threads_per_worker = threads_per_worker;
  b.steps = steps;
  b.workers_tokens_per_s = tokens / (median(w.value().step_ms) / 1e3);
  b.single_tokens_per_s = tokens / (median(one.value().step_ms) / 1e3);
  b.ratio = b.workers_tokens_per_s / b.single_tokens_per_s;
  b.imbalance = w.value().imbalance;
  b.imbalance_group_per_rank = w.value().imbalance_group_per_rank;
  return b;
}

Result<BalanceReport> bench_balance(const fs::path& run_dir, int workers, int64_t skip,
                                    int64_t every) {
  Result<JobSpec> spec = load_job_spec((run_dir / "job.json").string());
  if (!spec.ok()) return spec.error();
  const ModelSpec& m = spec.value().model;
  Result<ExpertPlacement> all = placement_plan(m, "all-size", workers);
  Result<ExpertPlacement> naive = placement_plan(m, "group-per-rank", workers);
  Result<ExpertPlacement> contiguous = placement_plan(m, "contiguous", workers);
  if (!all.ok()) return all.error();
  if (!naive.ok()) return naive.error();
  if (!contiguous.ok()) return contiguous.error();
  std::ifstream in(run_dir / "metrics.jsonl");
  if (!in) return Error{ErrorCode::kNotFound, "no metrics.jsonl in " + run_dir.string(), "--run"};
  BalanceReport rep;
  rep.workers = workers;
  rep.every = every >= 0 ? every : spec.value().placement_every;
  const bool adaptive_possible = m.ffn.kind == "mohge";
  rep.grouped = adaptive_possible;
  // The replayed adaptive placement (per layer once re-planned) and its moving loads.
  ExpertPlacement current = all.value();
  std::vector<std::vector<double>> ema(static_cast<size_t>(m.layers));
  auto flops_of = [&](std::vector<double> counts) {
    for (size_t e = 0; e < counts.size(); ++e)
      counts[e] *= 6.0 * m.d_model * m.ffn.expert_hidden_width(static_cast<int>(e));
    return counts;
  };
  Rng rng(12345);
  double noise = 0, noise_n = 0;
  double n = 0;
  std::string line;
  while (std::getline(in, line)) {
    const json r = json::parse(line);
    if (!r.contains("layers")) continue;
    const int64_t step = r["step"].get<int64_t>();
    const bool counted = step > skip;
    if (counted) ++rep.steps;
    for (const json& l : r["layers"]) {
      const auto counts = l["expert_assignments"].get<std::vector<double>>();
      const size_t layer = l["layer"].get<size_t>();
      if (layer >= ema.size()) continue;
      const double adaptive =
          load_imbalance(placement_rank_flops(current.layer(static_cast<int>(layer)), m, counts));
      placement_average_loads(ema[layer], counts);
      if (!counted) continue;
      if (adaptive_possible) {
        const std::vector<double> load = flops_of(counts);
        Result<ExpertPlacement> best = placement_adaptive_layer(m, workers, load);
        if (best.ok()) rep.oracle += placement_load_imbalance(best.value(), load);
      }
      // The noise floor: the same number of assignments spread uniformly over the experts.
      double total = 0;
      for (double c : counts) total += c;
      for (int sample = 0; sample < 8; ++sample) {
        std::vector<double> uniform(counts.size(), 0.0);
        for (int64_t a = 0; a < static_cast<int64_t>(total); ++a)
          uniform[rng.below(uniform.size())] += 1.0;
        noise += load_imbalance(placement_rank_flops(all.value(), m, uniform));
        noise_n += 1;
      }
      rep.adaptive += adaptive;
      rep.adaptive_max = std::max(rep.adaptive_max, adaptive);
      const double a = load_imbalance(placement_rank_flops(all.value(), m, counts));
      const double g = load_imbalance(placement_rank_flops(naive.value(), m, counts));
      rep.all_size += a;
      rep.group_per_rank += g;
      rep.contiguous += load_imbalance(placement_rank_flops(contiguous.value(), m, counts));
      rep.all_size_max = std::max(rep.all_size_max, a);
      rep.group_per_rank_max = std::max(rep.group_per_rank_max, g);
      n += 1;
    }
    // The re-plan after this step, as Trainer::adapt_placement makes it.
    const bool all_seen =
        std::all_of(ema.begin(), ema.end(), [](const auto& a) { return !a.empty(); });
    if (adaptive_possible && rep.every > 0 && step % rep.every == 0 && all_seen) {
      Result<PlacementReplan> plan =
          placement_replan(m, current, ema, spec.value().placement_min_gain);
      if (!plan.ok()) return plan.error();
      if (plan.value().worth) {
        // Weights and both AdamW moments of the experts whose owner or slot changes.
        rep.moved_bytes += 3.0 * 4.0 * expert_moves_size(m, current, plan.value().next).floats;
        current = std::move(plan.value().next);
        ++rep.replans;
      }
    }
  }
  if (n == 0) {
    return invalid_argument(
        "--skip", "leaves no step with routing in " + (run_dir / "metrics.jsonl").string());
  }
  rep.all_size /= n;
  rep.group_per_rank /= n;
  rep.contiguous /= n;
  rep.adaptive /= n;
  rep.noise_floor = noise / std::max(1.0, noise_n);
  rep.oracle /= n;
  return rep;
}

}  // namespace mohge
