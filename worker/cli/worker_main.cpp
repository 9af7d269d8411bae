// mohge-worker, two ways:
//   the daemon:  mohge-worker --coordinator HOST:PORT --storage DIR [--name NAME]
//                             [--devices cpu|cuda:N[,M…]|cuda:all] [--threads N]
//                registers with the coordinator and runs the ranks it is given until stopped
//                (SIGINT/SIGTERM); with several GPUs, one worker per GPU in this process
//                (NAME-gpuN, each with its own connection, heartbeats and ranks);
//   one rank:    mohge-worker --job SPEC.json --rank r --world R --rendezvous HOST:PORT
//                             [--storage DIR] [--out RUN] [--threads N] [--resume]
//                             [--stop-after N] [--comm-timeout S] [--quiet]
//                             [--device cpu|cuda] [--gpu N]
//                (what `mohge train --workers R` launches).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <optional>

#include "worker/cli/commands.hpp"
#include "worker/comm/ucx_communicator.hpp"
#include "worker/daemon/daemon.hpp"
#include "worker/dist/rank_runner.hpp"

#include <csignal>
#include <thread>

int main(int argc, char** argv) {
  mohge::ucx_process_defaults();  // before any thread
  CLI::App app{"mohge-worker: one rank of a distributed MoHGE training job"};
  std::string job, rendezvous, storage = ".", out;
  int rank = 0, world = 1, threads = 0, gpu = 0;
  std::string device;
  bool resume = false, quiet = false;
  int64_t stop_after = 0;
  double timeout = 60.0;
  std::string coordinator, name, devices = "cpu", join_secret_file;
  app.add_option("--coordinator", coordinator,
                 "Daemon mode: HOST:PORT of the coordinator's control address");
  app.add_option("--name", name, "Daemon mode: unique worker name (default: host name)");
  app.add_option("--devices", devices,
                 "Daemon mode: cpu, cuda:N, a list cuda:N,M,… or cuda:all (one worker per GPU)")
      ->capture_default_str();
  app.add_option("--join-secret-file", join_secret_file,
                 "Daemon mode: file holding the cluster join secret (default STORAGE/join.secret; "
                 "MOHGE_JOIN_SECRET overrides)");
  app.add_option("--job", job, "One rank: job spec JSON");
  app.add_option("--rank", rank, "One rank: this rank")->check(CLI::NonNegativeNumber);
  app.add_option("--world", world, "One rank: number of ranks")->check(CLI::PositiveNumber);
  app.add_option("--rendezvous", rendezvous,
                 "One rank: HOST:PORT of the rendezvous (rank 0 hosts it)");
  app.add_option("--storage", storage, "Storage root")->capture_default_str();
  app.add_option("--out", out, "Run folder (default STORAGE/runs/<name>)");
  app.add_option("--threads", threads, "Compute threads (default: all cores)");
  app.add_flag("--resume", resume, "Continue from the run's latest checkpoint");
  app.add_option("--stop-after", stop_after, "Stop after this step, writing a checkpoint");
  app.add_option("--comm-timeout", timeout, "Deadline of every data-plane wait, seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--quiet", quiet, "No live progress line");
  app.add_option("--device", device, "One rank: cpu or cuda (default: the spec's resources.device)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--gpu", gpu, "One rank on cuda: the visible GPU it uses")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (!coordinator.empty()) {
    spdlog::set_default_logger(spdlog::stderr_color_mt("mohge-worker"));
    spdlog::set_pattern("[worker %H:%M:%S] %v");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    const mohge::Result<std::string> secret = mohge::join_secret_load(
        join_secret_file.empty() ? std::filesystem::path(storage) / "join.secret"
                                 : std::filesystem::path(join_secret_file));
    if (!secret.ok()) return mohge::cli::report(secret.error());
    const mohge::Result<std::vector<std::string>> each = mohge::split_devices(devices);
    if (!each.ok()) return mohge::cli::report(each.error());
    const std::string base = name.empty() ? mohge::host_name() : name;
    std::vector<std::unique_ptr<mohge::WorkerDaemon>> daemons;
    for (const std::string& d : each.value()) {
      // One GPU keeps the given name; several become NAME-gpuN (names are unique per worker).
      const std::string own = each.value().size() == 1 ? base : base + "-gpu" + d.substr(5);
      daemons.push_back(std::make_unique<mohge::WorkerDaemon>(
          mohge::DaemonOptions{.coordinator = coordinator,
                               .storage = storage,
                               .name = own,
                               .devices = d,
                               .threads = threads,
                               .join_secret = secret.value()}));
    }
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&set, &sig);
      spdlog::info("stopping ({})", sig == SIGINT ? "SIGINT" : "SIGTERM");
      for (auto& d : daemons) d->stop();
    });
    mohge::daemon_log_forwarding_install();  // before the daemons' threads log
    std::vector<mohge::Status> results(daemons.size());
    std::vector<std::thread> runners;
    for (size_t i = 0; i < daemons.size(); ++i) {
      runners.emplace_back([&, i] {
        results[i] = daemons[i]->run();
        // A daemon that ends on its own (refused by the coordinator) ends the process.
        if (!results[i].ok()) pthread_kill(waiter.native_handle(), SIGTERM);
      });
    }
    for (auto& r : runners) r.join();
    // Every daemon ended: wake the waiter if no signal did.
    pthread_kill(waiter.native_handle(), SIGTERM);
    waiter.join();
    for (const mohge::Status& s : results)
      if (!s.ok()) return mohge::cli::report(s.error());
    return 0;
  }
  if (job.empty() || rendezvous.empty()) {
    return mohge::cli::report(mohge::invalid_argument(
        "--job",
        "give --coordinator HOST:PORT (daemon) or --job, --rank, --world and "
        "--rendezvous (one rank)"));
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("mohge-worker"));
  spdlog::set_pattern("[rank " + std::to_string(rank) + " %H:%M:%S] %v");
  mohge::Result<mohge::JobSpec> spec = mohge::load_job_spec(job);
  if (!spec.ok()) return mohge::cli::report(spec.error());
  mohge::RankConfig c;
  c.spec = spec.value();
  if (!device.empty()) c.spec.resources.device = device;
  c.gpu = gpu;
  c.rank = rank;
  c.world = world;
  c.rendezvous = rendezvous;
  // The job's rendezvous secret comes from the environment, never the command line (other
  // users can read a process's arguments); `mohge train --workers` sets it for its ranks.
  if (const char* secret = std::getenv("MOHGE_RENDEZVOUS_SECRET"); secret != nullptr)
    c.rendezvous_secret = secret;
  if (c.rendezvous_secret.empty()) {
    return mohge::cli::report(mohge::invalid_argument(
        "MOHGE_RENDEZVOUS_SECRET",
        "set it to the same secret on every rank of the job (a random string of 32+ characters)"));
  }
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
