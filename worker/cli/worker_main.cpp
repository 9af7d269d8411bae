// mohge-worker: runs one rank of a job.
//   mohge-worker --job SPEC.json --rank r --world R --rendezvous HOST:PORT
//                [--storage DIR] [--out RUN] [--threads N] [--resume] [--stop-after N]
//                [--comm-timeout S] [--quiet]
// (The long-running daemon that registers with a coordinator comes with the service issue.)
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <cmath>
#include <optional>

#include "worker/cli/commands.hpp"
#include "worker/dist/rank_runner.hpp"

int main(int argc, char** argv) {
  CLI::App app{"mohge-worker: one rank of a distributed MoHGE training job"};
  std::string job, rendezvous, storage = ".", out;
  int rank = 0, world = 1, threads = 0;
  bool resume = false, quiet = false;
  int64_t stop_after = 0;
  double timeout = 60.0;
  app.add_option("--job", job, "Job spec JSON")->required();
  app.add_option("--rank", rank, "This rank")->required()->check(CLI::NonNegativeNumber);
  app.add_option("--world", world, "Number of ranks")->required()->check(CLI::PositiveNumber);
  app.add_option("--rendezvous", rendezvous, "HOST:PORT of the rendezvous (rank 0 hosts it)")
      ->required();
  app.add_option("--storage", storage, "Storage root")->capture_default_str();
  app.add_option("--out", out, "Run folder (default STORAGE/runs/<name>)");
  app.add_option("--threads", threads, "Compute threads (default: all cores)");
  app.add_flag("--resume", resume, "Continue from the run's latest checkpoint");
  app.add_option("--stop-after", stop_after, "Stop after this step, writing a checkpoint");
  app.add_option("--comm-timeout", timeout, "Deadline of every data-plane wait, seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--quiet", quiet, "No live progress line");
  CLI11_PARSE(app, argc, argv);

  spdlog::set_default_logger(spdlog::stderr_color_mt("mohge-worker"));
  spdlog::set_pattern("[rank " + std::to_string(rank) + " %H:%M:%S] %v");
  mohge::Result<mohge::JobSpec> spec = mohge::load_job_spec(job);
  if (!spec.ok()) return mohge::cli::report(spec.error());
  mohge::RankConfig c;
  c.spec = spec.value();
  c.rank = rank;
  c.world = world;
  c.rendezvous = rendezvous;
  c.threads = threads;
  c.comm_timeout_s = timeout;
  c.train.storage_root = storage;
  c.train.run_dir = out;
  c.train.resume = resume;
  c.train.progress = !quiet;
  c.train.stop_after = stop_after;
  std::optional<double> first_val, last_val;
  const mohge::Status s = mohge::rank_run(c, [&](const mohge::StepReport& r) {
    if (r.val_loss) {
      if (!first_val) first_val = r.val_loss;
      last_val = r.val_loss;
    }
  });
  if (s.ok() && rank == 0 && last_val) {
    spdlog::info("done: validation loss {:.4f} (perplexity {:.1f}), first eval {:.4f}", *last_val,
                 std::exp(*last_val), *first_val);
  }
  if (!s.ok()) {
    spdlog::error("rank {} failed: {}", rank, s.error().to_string());
    return mohge::cli::report(s.error());
  }
  return 0;
}
