// mohge bench layer|train --config FILE …: benchmarks that print one JSON line of figures.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "worker/bench/bench.hpp"
#include "worker/bench/bench_api.hpp"
#include "worker/bench/bench_dist.hpp"
#include "worker/cli/commands.hpp"
#include "worker/comm/communicator.hpp"

namespace mohge::cli {

namespace {

struct BenchArgs {
  std::string config;
  std::string storage = ".";
  int64_t tokens = 2048;
  int64_t steps = 10;
  int threads = 0;
  int workers = 1;
  int world = 2;
  std::string rendezvous;  // bench comm: one rank of a hand-started set
  int rank = 0;
  std::vector<int64_t> bytes = {64 << 10, 1 << 20, 4 << 20, 16 << 20};
  std::string run;
  std::string from;
  int64_t skip = 100;
  int64_t every = -1;     // bench balance: adaptive re-plan interval (-1: the run's)
  std::string precision;  // overrides the spec's train.precision when set
  std::string device;     // overrides the spec's resources.device when set
};

/// The spec of --config, with --precision applied.
Result<JobSpec> bench_spec(const BenchArgs& a) {
  Result<JobSpec> spec = load_job_spec(a.config);
  if (spec.ok() && !a.precision.empty()) spec.value().train.precision = a.precision;
  if (spec.ok() && !a.device.empty()) {
    spec.value().resources.device = a.device;
    spec.value().resources.workers = 1;  // the bench runs one process
  }
  return spec;
}

int run_bench_layer(const BenchArgs& a) {
  Result<JobSpec> spec = bench_spec(a);
  if (!spec.ok()) return report(spec.error());
  Result<LayerBenchResult> r = bench_layer(spec.value(), a.tokens, a.threads);
  if (!r.ok()) return report(r.error());
  const LayerBenchResult& b = r.value();
  const nlohmann::json out = {{"bench", "layer"},
                              {"ffn", spec.value().model.ffn.kind},
                              {"tokens", b.tokens},
                              {"threads", b.threads},
                              {"precision", b.precision},
                              {"device", spec.value().resources.device},
                              {"ms_per_fwd_bwd", b.ms_per_fwd_bwd},
                              {"gflop", b.gflop},
                              {"gflops", b.gflops},
                              {"ceiling_gflops", b.ceiling_gflops},
                              {"fraction_of_ceiling", b.fraction_of_ceiling},
                              {"experts_ms_per_fwd_bwd", b.experts_ms_per_fwd_bwd},
                              {"experts_gflops", b.experts_gflops},
                              {"experts_fraction_of_ceiling", b.experts_fraction_of_ceiling}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int run_bench_comm(const BenchArgs& a) {
  // Local ranks, or (with --rendezvous) this process as one rank of ranks started by hand.
  const char* secret = std::getenv("MOHGE_RENDEZVOUS_SECRET");
  Result<CommBench> bench = a.rendezvous.empty()
                                ? bench_comm(a.world, a.bytes)
                                : bench_comm_rank(a.rendezvous, secret != nullptr ? secret : "",
                                                  a.rank, a.world, a.bytes);
  if (!bench.ok()) return report(bench.error());
  nlohmann::json kinds = nlohmann::json::array();
  for (const std::string& t : bench.value().transports)
    kinds.push_back(t == "self" ? "self" : transport_kinds(t) + " (" + t + ")");
  for (const CommBenchRow& r : bench.value().rows) {
    const nlohmann::json out = {{"bench", "comm"},
                                {"transport", "ucx"},
                                {"peer_transports", kinds},
                                {"world", a.world},
                                {"bytes_per_rank", r.bytes_per_rank},
                                {"all_to_all_gbps", r.all_to_all_gbps},
                                {"p2p_gbps", r.p2p_gbps},
                                {"all_to_all_over_p2p", r.ratio}};
    std::printf("%s\n", out.dump().c_str());
  }
  return 0;
}

int run_bench_balance(const BenchArgs& a) {
  Result<BalanceReport> r = bench_balance(a.run, a.workers, a.skip, a.every);
  if (!r.ok()) return report(r.error());
  const BalanceReport& b = r.value();
  nlohmann::json out = {{"bench", "balance"},
                        {"run", a.run},
                        {"workers", b.workers},
                        {"steps", b.steps},
                        {"imbalance_all_size", b.all_size},
                        {"imbalance_group_per_rank", b.group_per_rank},
                        {"imbalance_contiguous", b.contiguous},
                        {"worst_all_size", b.all_size_max},
                        {"worst_group_per_rank", b.group_per_rank_max},
                        {"imbalance_all_size_adaptive", b.adaptive},
                        {"worst_all_size_adaptive", b.adaptive_max},
                        {"adaptive_every", b.every},
                        {"adaptive_replans", b.replans},
                        {"adaptive_moved_bytes", b.moved_bytes},
                        {"noise_floor", b.noise_floor},
                        {"oracle_all_size", b.oracle}};
  if (!b.grouped) {
    // Without expert groups there is no adaptive All-size to replay and no oracle.
    for (const char* k : {"imbalance_all_size_adaptive", "worst_all_size_adaptive",
                          "adaptive_replans", "adaptive_moved_bytes", "oracle_all_size"})
      out[k] = nullptr;
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int run_bench_train(const BenchArgs& a) {
  Result<JobSpec> spec = bench_spec(a);
  if (!spec.ok()) return report(spec.error());
  if (a.workers > 1) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    const int per_worker = a.threads > 0 ? a.threads : std::max(1, cores / a.workers);
    Result<DistTrainBench> r =
        bench_train_workers(spec.value(), a.storage, a.workers, per_worker, a.steps, a.from);
    if (!r.ok()) return report(r.error());
    const DistTrainBench& b = r.value();
    const nlohmann::json out = {{"bench", "train"},
                                {"config", spec.value().name},
                                {"workers", b.workers},
                                {"threads_per_worker", b.threads_per_worker},
                                {"steps", b.steps},
                                {"workers_tokens_per_s", b.workers_tokens_per_s},
                                {"single_process_tokens_per_s", b.single_tokens_per_s},
                                {"single_process_threads", b.workers * b.threads_per_worker},
                                {"workers_over_single", b.ratio},
                                {"imbalance", b.imbalance},
                                {"imbalance_group_per_rank", b.imbalance_group_per_rank}};
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  bool real_data = false;
  Result<TrainBenchResult> r = bench_train(spec.value(), a.storage, a.steps, a.threads, &real_data);
  if (!r.ok()) return report(r.error());
  const TrainBenchResult& b = r.value();
  const nlohmann::json out = {{"bench", "train"},
                              {"config", spec.value().name},
                              {"data", real_data ? "train file" : "random tokens"},
                              {"threads", b.threads},
                              {"steps", b.steps},
                              {"ms_per_step", b.ms_per_step},
                              {"tokens_per_s", b.tokens_per_s},
                              {"model_gflop_per_step", b.model_gflop_per_step},
                              {"achieved_gflops", b.achieved_gflops},
                              {"ceiling_gflops", b.ceiling_gflops},
                              {"mfu", b.mfu}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

void add_bench(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (print figures as JSON)");
  bench->require_subcommand(1);
  CLI::App* layer = bench->add_subcommand("layer", "Forward+backward of the config's FFN layer");
  layer->add_option("--config", args->config, "Job spec JSON")->required();
  layer->add_option("--tokens", args->tokens, "Tokens")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  layer->add_option("--threads", args->threads, "Compute threads (default: all cores)");
  layer->add_option("--precision", args->precision, "GEMM precision (default: the spec's)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  layer->add_option("--device", args->device, "cpu or cuda (default: the spec's)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  layer->callback([args, &exit_code] { exit_code = run_bench_layer(*args); });
  CLI::App* train = bench->add_subcommand("train", "Training tokens/s and model-FLOPs utilisation");
  train->add_option("--config", args->config, "Job spec JSON")->required();
  train->add_option("--storage", args->storage, "Storage root for the spec's data paths")
      ->capture_default_str();
  train->add_option("--steps", args->steps, "Timed steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--threads", args->threads,
                    "Compute threads (per worker with --workers; default: all cores shared)");
  train->add_option("--precision", args->precision, "GEMM precision (default: the spec's)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  train->add_option("--device", args->device, "cpu or cuda (default: the spec's)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  train
      ->add_option("--workers", args->workers,
                   "Also train on this many local worker processes and compare with one process")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  train->add_option("--from", args->from,
                    "With --workers: continue from this checkpoint of the job (trained routing)");
  train->callback([args, &exit_code] { exit_code = run_bench_train(*args); });
  CLI::App* comm = bench->add_subcommand(
      "comm", "all_to_all_v GB/s next to point-to-point send/recv GB/s over UCX");
  comm->add_option("--world", args->world, "Ranks (even)")->capture_default_str();
  comm->add_option("--rendezvous", args->rendezvous,
                   "Run one rank of ranks started by hand (one per host): HOST:PORT that rank 0 "
                   "listens on and the others dial; every rank needs MOHGE_RENDEZVOUS_SECRET");
  comm->add_option("--rank", args->rank, "With --rendezvous: this process's rank")
      ->check(CLI::NonNegativeNumber);
  comm->add_option("--bytes", args->bytes, "Bytes each rank sends per operation (list)")
      ->capture_default_str();
  comm->callback([args, &exit_code] { exit_code = run_bench_comm(*args); });
  CLI::App* balance = bench->add_subcommand(
      "balance", "Rank imbalance of each placement for the routing a run recorded");
  balance->add_option("--run", args->run, "Run folder (its metrics.jsonl and job.json)")
      ->required();
  balance->add_option("--workers", args->workers, "Ranks to place the experts on")->required();
  balance->add_option("--skip", args->skip, "Warm-up steps to leave out")->capture_default_str();
  balance->add_option(
      "--every", args->every,
      "Adaptive replay: re-plan every N steps (default: the run's placement_every)");
  balance->callback([args, &exit_code] { exit_code = run_bench_balance(*args); });
  auto api_opts = std::make_shared<ApiBenchOptions>();
  CLI::App* api = bench->add_subcommand(
      "api", "REST GET /jobs/{id} requests/s and p99 with many jobs; metrics rows/s into SQLite");
  api->add_option("--jobs", api_opts->jobs, "Jobs in the database")->capture_default_str();
  api->add_option("--connections", api_opts->connections, "Concurrent client connections")
      ->capture_default_str();
  api->add_option("--seconds", api_opts->seconds, "Measuring time")->capture_default_str();
  api->add_option("--server-threads", api_opts->server_threads, "REST thread pool")
      ->capture_default_str();
  api->add_option("--metric-rows", api_opts->metric_rows, "Rows for the ingestion figure")
      ->capture_default_str();
  api->callback([api_opts, &exit_code] {
    Result<ApiBenchResult> r = bench_api(*api_opts);
    if (!r.ok()) {
      exit_code = report(r.error());
      return;
    }
    const ApiBenchResult& b = r.value();
    std::printf("%s\n", nlohmann::json{{"bench", "api"},
                                       {"jobs", b.jobs},
                                       {"connections", api_opts->connections},
                                       {"server_threads", api_opts->server_threads},
                                       {"requests", b.requests},
                                       {"errors", b.errors},
                                       {"healthz_requests_per_s", b.healthz_requests_per_s},
                                       {"get_job_requests_per_s", b.requests_per_s},
                                       {"p50_ms", b.p50_ms},
                                       {"p99_ms", b.p99_ms},
                                       {"metric_rows_per_s", b.metric_rows_per_s}}
                            .dump()
                            .c_str());
  });
}

}  // namespace mohge::cli
