// mohge bench layer|train --config FILE …: benchmarks that print one JSON line of figures.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "worker/bench/bench.hpp"
#include "worker/cli/commands.hpp"

namespace mohge::cli {

namespace {

struct BenchArgs {
  std::string config;
  std::string storage = ".";
  int64_t tokens = 2048;
  int64_t steps = 10;
  int threads = 0;
};

int run_bench_layer(const BenchArgs& a) {
  Result<JobSpec> spec = load_job_spec(a.config);
  if (!spec.ok()) return report(spec.error());
  Result<LayerBenchResult> r = bench_layer(spec.value(), a.tokens, a.threads);
  if (!r.ok()) return report(r.error());
  const LayerBenchResult& b = r.value();
  const nlohmann::json out = {{"bench", "layer"},
                              {"ffn", spec.value().model.ffn.kind},
                              {"tokens", b.tokens},
                              {"threads", b.threads},
                              {"ms_per_fwd_bwd", b.ms_per_fwd_bwd},
                              {"gflop", b.gflop},
                              {"gflops", b.gflops},
                              {"ceiling_gflops", b.ceiling_gflops},
                              {"fraction_of_ceiling", b.fraction_of_ceiling}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int run_bench_train(const BenchArgs& a) {
  Result<JobSpec> spec = load_job_spec(a.config);
  if (!spec.ok()) return report(spec.error());
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
  layer->callback([args, &exit_code] { exit_code = run_bench_layer(*args); });
  CLI::App* train = bench->add_subcommand("train", "Training tokens/s and model-FLOPs utilisation");
  train->add_option("--config", args->config, "Job spec JSON")->required();
  train->add_option("--storage", args->storage, "Storage root for the spec's data paths")
      ->capture_default_str();
  train->add_option("--steps", args->steps, "Timed steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--threads", args->threads, "Compute threads (default: all cores)");
  train->callback([args, &exit_code] { exit_code = run_bench_train(*args); });
}

}  // namespace mohge::cli
