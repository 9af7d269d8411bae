// JobSupervisor actor: one placed attempt of one job. It launches the ranks on their workers,
// runs the job's data-plane rendezvous (it collects every rank's blob for a round and sends
// the set back), relays stop orders (cancel, preempt) and aborts, and when every rank has
// exited or been lost reports the attempt's outcome to the Scheduler.
//
// Outcome rules: a lost worker → kLost (the Scheduler decides RECOVERING or FAILED); a cancel
// → kCanceled; all ranks stopped at a preemption checkpoint → kPreempted; all ranks finished →
// kSucceeded; otherwise kFailed with the first failing rank's reason.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
#include "api/messages.hpp"
#include "coordinator/hub.hpp"

namespace mohge::coord {

class JobSupervisor : public Actor, public std::enable_shared_from_this<JobSupervisor> {
 public:
  struct Launch {
    int64_t job = 0;
    int attempt = 0;
    std::vector<std::string> workers;  // rank order
    nlohmann::json spec;
    std::string run_dir;  // relative to the storage root
    bool resume = false;  // resume from the run's latest checkpoint when one exists
    std::vector<proto::Launch::Peer> peers;  // rank order: each rank's worker and host
  };

  JobSupervisor(boost::asio::io_context& io, Hub& hub, Launch launch);

  /// Sends the launch orders.
  void start();
  /// After a coordinator restart: no launch; ranks must report back (hello or exit) within
  /// the reattach deadline, else the attempt counts as lost.
  void reattach();
  /// A worker's hello said it runs `rank` of this attempt.
  void rank_alive(int rank);
  void on_rv_publish(int rank, int round, const std::string& blob);
  void on_rank_exited(int rank, const proto::RankExited& exited);
  void worker_lost(const std::string& worker, const std::string& why);
  void cancel(const std::string& reason);
  void preempt();

 private:
  enum class RankState { kUnknown, kRunning, kExited, kLost };
  void abort_all(const std::string& reason);
  nlohmann::json peers_json() const;
  void maybe_finish();

  Hub& hub_;
  Launch launch_;
  std::vector<RankState> ranks_;
  std::vector<std::vector<std::optional<std::string>>> rounds_;  // round → rank → blob
  bool running_reported_ = false;
  bool canceled_ = false;
  bool preempting_ = false;
  bool lost_ = false;
  bool stopped_ok_ = true;  // every exited rank stopped at a preemption checkpoint
  bool finished_ = false;
  std::string first_failure_;
  // Failures by kind, for the outcome once every rank is done: a rank's own failure (any code
  // but "unavailable" and "unreachable") fails the job; otherwise a rank that could not reach
  // a peer ("unreachable") makes it the network's; "unavailable" (aborted because another
  // rank failed, a rendezvous timeout) decides nothing by itself.
  std::string first_own_failure_, first_network_failure_;
  std::vector<std::pair<std::string, std::string>> unreachable_pairs_;  // worker pairs
  std::string lost_reason_;
  std::string cancel_reason_;
  boost::asio::steady_timer reattach_timer_;
};

}  // namespace mohge::coord
