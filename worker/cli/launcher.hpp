// `mohge train --workers R`: runs the job as R local mohge-worker processes (one rank each,
// rendezvous on a free localhost port hosted by rank 0). Rank 0 shows the job's progress;
// the other ranks log to RUN/logs/rank-r.log, which is shown when a rank fails.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mohge::cli {

struct LaunchOptions {
  std::string config;  // job spec path
  std::string storage = ".";
  std::string run_dir;  // resolved run folder
  int workers = 2;
  int threads_per_worker = 1;
  bool resume = false;
  bool quiet = false;
  int64_t stop_after = 0;
  double comm_timeout_s = 60.0;
  std::string device;  // cpu or cuda; empty: the spec's. On cuda rank r uses visible GPU r.
};

/// Returns the exit code: 0 when every rank succeeded.
int launch_local_workers(const LaunchOptions& options);

/// Path of a binary installed next to the running executable.
std::string sibling_binary(const std::string& name);

/// A TCP port on 127.0.0.1 that was free a moment ago.
int pick_free_port();

}  // namespace mohge::cli
