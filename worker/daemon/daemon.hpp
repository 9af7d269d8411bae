// The worker daemon (DESIGN.md §2): `mohge-worker --coordinator HOST:PORT --storage DIR`.
// It dials the coordinator, says hello (name, host, devices, backend, version, and the ranks it
// is running — so a restarted coordinator can reattach them), heartbeats, and carries out
// orders: launch a rank of a job (rank_run on its own thread, with the job's data-plane
// rendezvous going through the coordinator), cancel it, checkpoint-and-stop it (preemption),
// abort it. It streams the rank's per-step records, log lines, checkpoint reports (files with
// sizes and SHA-256) and its exit back. When the coordinator is unreachable the ranks keep
// training; reports wait in an outbox and are sent after reconnecting (the coordinator
// ignores duplicates).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "api/result.hpp"

namespace mohge {

struct DaemonOptions {
  std::string coordinator;              // HOST:PORT of the coordinator's control address
  std::filesystem::path storage = ".";  // the shared storage root (same as the coordinator's)
  std::string name;                     // unique worker name (default: host name)
  std::string devices = "cpu";          // "cpu" or "cuda:N"
  int threads = 0;                      // compute threads per rank (0: all cores)
  double reconnect_max_s = 5.0;         // reconnect back-off ceiling
  std::string join_secret;              // the cluster join secret (see join_secret_load)
};

/// `--devices` as one entry per worker: "cpu"; "cuda" or "cuda:N" (one GPU); "cuda:N,M,…" or
/// "cuda:all" (every visible GPU) → "cuda:N", "cuda:M", … Errors name --devices.
Result<std::vector<std::string>> split_devices(const std::string& devices);

/// Adds the sink that forwards a rank's log lines to its job (once per process). Call it
/// before any daemon thread starts: spdlog's sink list is not safe to change while others log
/// (run() calls it too, for a process with one daemon).
void daemon_log_forwarding_install();

/// This host's name.
std::string host_name();

/// The cluster join secret for a daemon: MOHGE_JOIN_SECRET when set, else the first line of
/// `file` (the coordinator writes it as join.secret in the storage root). Never take it from
/// the command line: other users can read a process's arguments.
Result<std::string> join_secret_load(const std::filesystem::path& file);

class WorkerDaemon {
 public:
  explicit WorkerDaemon(DaemonOptions options);
  ~WorkerDaemon();
  /// Runs until stop() (or a refusal by the coordinator, returned as the error).
  Status run();
  /// Thread-safe; async-signal-unsafe (call from a signal-waiting thread).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mohge
