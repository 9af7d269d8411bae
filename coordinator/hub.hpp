// What every coordinator actor may reach: the other actors (to post to them), the clock and
// the options. Built once by Coordinator; the actors outlive every handler that uses it.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

namespace mohge::coord {

class Store;
class WorkerRegistry;
class Scheduler;
class MetricsSink;
class CheckpointRegistry;
class JobViews;

struct CoordinatorOptions {
  std::string http = "127.0.0.1:8080";     // REST and dashboard
  std::string control = "127.0.0.1:7070";  // worker daemons dial this
  std::filesystem::path storage = ".";     // the shared storage root
  std::filesystem::path db;                // default storage/mohge.db
  std::filesystem::path web_root;          // dashboard files; empty: none
  double heartbeat_s = 1.0;                // workers heartbeat this often
  double heartbeat_timeout_s = 10.0;       // silent or disconnected this long: lost
  // When none of the online workers (two or more) has been heard for two heartbeats, the
  // coordinator's own link is the likelier cause: it declares none of them lost until this
  // long after it noticed (needs heartbeat_timeout_s > 3 heartbeats + 0.5 s).
  double isolation_grace_s = 60.0;
  double hello_timeout_s = 5.0;      // a new control connection must say hello by then
  double reattach_timeout_s = 20.0;  // after a restart, ranks must report back by then
  double comm_timeout_s = 60.0;      // data-plane deadline handed to the ranks
  size_t http_threads = 0;           // REST thread pool; 0: one per core (2..16)
  bool auth = true;
};

/// Seconds since the UNIX epoch. A function so tests can drive time by hand.
using ClockFn = std::function<double()>;

inline double system_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct Hub {
  CoordinatorOptions options;
  ClockFn now = system_now;
  Store* store = nullptr;
  WorkerRegistry* registry = nullptr;
  Scheduler* scheduler = nullptr;
  MetricsSink* metrics = nullptr;
  CheckpointRegistry* checkpoints = nullptr;
  JobViews* views = nullptr;
};

}  // namespace mohge::coord
