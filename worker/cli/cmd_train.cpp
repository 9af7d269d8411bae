// mohge train --config SPEC.json [--storage DIR] [--out RUN] [--threads N] [--resume]
//             [--workers R] [--device cpu|cuda]
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <thread>

#include "worker/cli/commands.hpp"
#include "worker/cli/common.hpp"
#include "worker/cli/launcher.hpp"
#include "worker/train/trainer.hpp"

namespace mohge::cli {

namespace {

struct TrainArgs {
  std::string config;
  std::string storage = ".";
  std::string out;
  int threads = 0;
  int workers = 1;
  bool resume = false;
  bool quiet = false;
  int64_t stop_after = 0;
  double comm_timeout = 60.0;
  std::string device;  // overrides the spec's resources.device when set
};

int run_train(const TrainArgs& a) {
  Result<JobSpec> spec = load_job_spec(a.config);
  if (!spec.ok()) return report(spec.error());
  if (!a.device.empty()) spec.value().resources.device = a.device;
  if (a.workers > 1) {
    LaunchOptions l;
    l.config = a.config;
    l.storage = a.storage;
    l.run_dir = a.out.empty()
                    ? (std::filesystem::path(a.storage) / "runs" / spec.value().name).string()
                    : a.out;
    l.workers = a.workers;
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    l.threads_per_worker = a.threads > 0 ? a.threads : std::max(1, cores / a.workers);
    l.resume = a.resume;
    l.quiet = a.quiet;
    l.stop_after = a.stop_after;
    l.comm_timeout_s = a.comm_timeout;
    l.device = spec.value().resources.device;
    return launch_local_workers(l);
  }
  Result<std::unique_ptr<Backend>> backend = make_backend(spec.value(), a.threads);
  if (!backend.ok()) return report(backend.error());
  TrainOptions opt;
  opt.storage_root = a.storage;
  opt.run_dir = a.out;
  opt.resume = a.resume;
  opt.progress = !a.quiet;
  opt.stop_after = a.stop_after;
  Result<std::unique_ptr<Trainer>> trainer = Trainer::create(spec.value(), opt, *backend.value());
  if (!trainer.ok()) return report(trainer.error());
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<double> first_val, last_val;
  double activated = 0.0;
  Status s = trainer.value()->run([&](const StepReport& r) {
    activated = r.activated_expert_params;
    if (r.val_loss) {
      if (!first_val) first_val = r.val_loss;
      last_val = r.val_loss;
    }
  });
  if (!s.ok()) return report(s.error());
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 60.0;
  if (last_val) {
    spdlog::info(
        "done in {:.1f} min: validation loss {:.4f} (perplexity {:.1f}), first eval {:.4f}",
        minutes, *last_val, std::exp(*last_val), *first_val);
  }
  const Transformer& model = trainer.value()->model();
  spdlog::info(
      "parameters: {} total, {} in experts; activated expert parameters per token at the "
      "last step: {:.0f}",
      model.total_params(), model.expert_params(), activated);
  spdlog::info("run folder: {} (metrics.jsonl, checkpoints/)", trainer.value()->run_dir().string());
  return 0;
}

}  // namespace

void add_train(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model from a job spec in this process");
  cmd->add_option("--config", args->config, "Job spec JSON (DESIGN.md §8)")->required();
  cmd->add_option("--storage", args->storage, "Storage root; data paths are relative to it")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Run folder (default STORAGE/runs/<name>)");
  cmd->add_option("--threads", args->threads, "Compute threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--resume", args->resume, "Continue from the run's latest checkpoint");
  cmd->add_option("--stop-after", args->stop_after,
                  "Stop after this step, writing a checkpoint (continue with --resume)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet", args->quiet, "No live progress line");
  cmd->add_option("--workers", args->workers,
                  "Train with this many local worker processes (expert parallel over UCX)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--device", args->device,
                  "cpu or cuda (default: the spec's resources.device); with --workers R on "
                  "cuda, rank r uses visible GPU r")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--comm-timeout", args->comm_timeout,
                  "With --workers: deadline of every data-plane wait, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([args, &exit_code] { exit_code = run_train(*args); });
}

}  // namespace mohge::cli
