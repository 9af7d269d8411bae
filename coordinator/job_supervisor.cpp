#include "coordinator/job_supervisor.hpp"

#include <spdlog/spdlog.h>

#include "api/messages.hpp"
#include "api/protocol.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/worker_registry.hpp"
#include "storage/atomic_file.hpp"

namespace mohge::coord {

namespace fs = std::filesystem;
using nlohmann::json;

JobSupervisor::JobSupervisor(boost::asio::io_context& io, Hub& hub, Launch launch)
    : Actor(io.get_executor()),
      hub_(hub),
      launch_(std::move(launch)),
      ranks_(launch_.workers.size(), RankState::kUnknown),
      reattach_timer_(strand_) {}

void JobSupervisor::start() {
  post([self = shared_from_this()] {
    // The fence first: from now on only this attempt's ranks may write into the run folder.
    const fs::path run = self->hub_.options.storage / self->launch_.run_dir;
    std::error_code ec;
    fs::create_directories(run, ec);
    const Status fenced = atomic_write_file(run / proto::kAttemptFenceFile, [&](std::ostream& out) {
      out << self->launch_.attempt << "\n";
    });
    if (!fenced.ok()) {
      self->finished_ = true;
      self->hub_.scheduler->attempt_ended(
          self->launch_.job, self->launch_.attempt, AttemptOutcome::kFailed,
          "cannot write the attempt fence: " + fenced.error().to_string());
      return;
    }
    const int world = static_cast<int>(self->launch_.workers.size());
    for (int r = 0; r < world; ++r) {
      self->ranks_[r] = RankState::kRunning;
      self->hub_.registry->send(self->launch_.workers[r],
                                {{"type", proto::kLaunch},
                                 {"job", self->launch_.job},
                                 {"attempt", self->launch_.attempt},
                                 {"rank", r},
                                 {"world", world},
                                 {"spec", self->launch_.spec},
                                 {"run_dir", self->launch_.run_dir},
                                 {"resume", self->launch_.resume},
                                 {"comm_timeout_s", self->hub_.options.comm_timeout_s},
                                 {"peers", self->peers_json()}});
    }
  });
}

json JobSupervisor::peers_json() const {
  json out = json::array();
  for (const proto::Launch::Peer& p : launch_.peers)
    out.push_back({{"worker", p.worker}, {"host", p.host}});
  return out;
}

void JobSupervisor::reattach() {
  post([self = shared_from_this()] {
    self->running_reported_ = true;  // it was running before the restart
    self->reattach_timer_.expires_after(std::chrono::milliseconds(
        static_cast<int64_t>(self->hub_.options.reattach_timeout_s * 1000)));
    self->reattach_timer_.async_wait([self](boost::system::error_code ec) {
      if (ec || self->finished_) return;
      for (size_t r = 0; r < self->ranks_.size(); ++r) {
        if (self->ranks_[r] == RankState::kUnknown) {
          self->ranks_[r] = RankState::kLost;
          self->lost_ = true;
          if (self->lost_reason_.empty()) {
            self->lost_reason_ = "rank " + std::to_string(r) + " (worker " +
                                 self->launch_.workers[r] +
                                 ") did not report back after the coordinator restarted";
          }
        }
      }
      if (self->lost_) self->abort_all(self->lost_reason_);
      self->maybe_finish();
    });
  });
}

void JobSupervisor::rank_alive(int rank) {
  post([self = shared_from_this(), rank] {
    if (rank < 0 || rank >= static_cast<int>(self->ranks_.size())) return;
    if (self->ranks_[rank] == RankState::kUnknown) self->ranks_[rank] = RankState::kRunning;
    bool all = true;
    for (RankState s : self->ranks_) all = all && s != RankState::kUnknown;
    if (all) {
      self->reattach_timer_.cancel();
      self->hub_.scheduler->attempt_running(self->launch_.job, self->launch_.attempt,
                                            "reattached after the coordinator restarted");
    }
  });
}

void JobSupervisor::on_rv_publish(int rank, int round, const std::string& blob) {
  post([self = shared_from_this(), rank, round, blob] {
    const int world = static_cast<int>(self->ranks_.size());
    if (rank < 0 || rank >= world || round < 0 || round > 1000) return;
    if (static_cast<int>(self->rounds_.size()) <= round) self->rounds_.resize(round + 1);
    auto& blobs = self->rounds_[round];
    if (blobs.empty()) blobs.resize(world);
    blobs[rank] = blob;
    for (const auto& b : blobs)
      if (!b) return;
    json all = json::array();
    for (const auto& b : blobs) all.push_back(*b);
    for (int r = 0; r < world; ++r) {
      self->hub_.registry->send(self->launch_.workers[r], {{"type", proto::kRvAll},
                                                           {"job", self->launch_.job},
                                                           {"attempt", self->launch_.attempt},
                                                           {"round", round},
                                                           {"blobs", all}});
    }
    if (!self->running_reported_) {
      self->running_reported_ = true;
      self->hub_.scheduler->attempt_running(self->launch_.job, self->launch_.attempt,
                                            "all " + std::to_string(world) + " ranks joined");
    }
  });
}

void JobSupervisor::on_rank_exited(int rank, const proto::RankExited& exited) {
  post([self = shared_from_this(), rank, exited] {
    if (rank < 0 || rank >= static_cast<int>(self->ranks_.size())) return;
    if (self->ranks_[rank] == RankState::kExited || self->ranks_[rank] == RankState::kLost) return;
    self->ranks_[rank] = RankState::kExited;
    if (!exited.ok || !exited.stopped) self->stopped_ok_ = false;
    if (!exited.ok) {
      const std::string why = exited.error_message.empty() ? "unknown error" : exited.error_message;
      const std::string failure = "rank " + std::to_string(rank) + " failed: " + why;
      if (exited.error_code == error_code_name(ErrorCode::kUnreachable)) {
        if (self->first_network_failure_.empty()) self->first_network_failure_ = failure;
        const int world = static_cast<int>(self->launch_.workers.size());
        for (int peer : exited.unreachable) {
          if (peer < 0 || peer >= world || peer == rank) continue;
          self->unreachable_pairs_.emplace_back(self->launch_.workers[rank],
                                                self->launch_.workers[peer]);
        }
      } else if (exited.error_code != error_code_name(ErrorCode::kUnavailable)) {
        if (self->first_own_failure_.empty()) self->first_own_failure_ = failure;
      }
      if (self->first_failure_.empty()) {
        self->first_failure_ = failure;
        // Stop the others now rather than at their data-plane deadline.
        self->abort_all(self->first_failure_);
      }
    }
    self->maybe_finish();
  });
}

void JobSupervisor::worker_lost(const std::string& worker, const std::string& why) {
  post([self = shared_from_this(), worker, why] {
    bool mine = false;
    for (size_t r = 0; r < self->ranks_.size(); ++r) {
      if (self->launch_.workers[r] != worker) continue;
      mine = true;
      if (self->ranks_[r] == RankState::kExited) continue;
      self->ranks_[r] = RankState::kLost;
      self->lost_ = true;
      if (self->lost_reason_.empty()) self->lost_reason_ = why;
    }
    if (!mine) return;
    if (self->lost_) self->abort_all(why);
    self->maybe_finish();
  });
}

void JobSupervisor::cancel(const std::string& reason) {
  post([self = shared_from_this(), reason] {
    if (self->canceled_) return;
    self->canceled_ = true;
    self->cancel_reason_ = reason;
    for (size_t r = 0; r < self->ranks_.size(); ++r) {
      self->hub_.registry->send(self->launch_.workers[r], {{"type", proto::kCancel},
                                                           {"job", self->launch_.job},
                                                           {"attempt", self->launch_.attempt},
                                                           {"reason", reason}});
    }
    self->maybe_finish();
  });
}

void JobSupervisor::preempt() {
  post([self = shared_from_this()] {
    if (self->preempting_) return;
    self->preempting_ = true;
    for (size_t r = 0; r < self->ranks_.size(); ++r) {
      self->hub_.registry->send(self->launch_.workers[r], {{"type", proto::kCheckpoint},
                                                           {"job", self->launch_.job},
                                                           {"attempt", self->launch_.attempt},
                                                           {"stop", true}});
    }
  });
}

void JobSupervisor::abort_all(const std::string& reason) {
  for (size_t r = 0; r < ranks_.size(); ++r) {
    if (ranks_[r] != RankState::kRunning && ranks_[r] != RankState::kUnknown) continue;
    hub_.registry->send(launch_.workers[r], {{"type", proto::kAbort},
                                             {"job", launch_.job},
                                             {"attempt", launch_.attempt},
                                             {"reason", reason}});
  }
}

void JobSupervisor::maybe_finish() {
  if (finished_) return;
  for (RankState s : ranks_)
    if (s == RankState::kRunning || s == RankState::kUnknown) return;
  finished_ = true;
  reattach_timer_.cancel();
  AttemptOutcome outcome;
  std::string reason;
  if (canceled_) {
    outcome = AttemptOutcome::kCanceled;
    reason = cancel_reason_;
  } else if (lost_) {
    outcome = AttemptOutcome::kLost;
    reason = lost_reason_;
  } else if (!first_own_failure_.empty()) {
    outcome = AttemptOutcome::kFailed;
    reason = first_own_failure_;
  } else if (!first_network_failure_.empty()) {
    // A rank that could not reach a peer (a deadline, a transport error), and no rank failed
    // on its own: the network failed, not the job; recovered like a lost worker.
    outcome = AttemptOutcome::kUnreachable;
    reason = first_network_failure_;
  } else if (!first_failure_.empty()) {
    // A rank that could not reach its peers (a deadline, a transport error) failed because of
    // the network, not the job: recovered like a lost worker.
    outcome = AttemptOutcome::kFailed;
    reason = first_failure_;
  } else if (preempting_ && stopped_ok_) {
    outcome = AttemptOutcome::kPreempted;
    reason = "checkpointed and stopped for a higher-priority job";
  } else {
    outcome = AttemptOutcome::kSucceeded;
    reason = "all ranks finished";
  }
  hub_.scheduler->attempt_ended(launch_.job, launch_.attempt, outcome, reason,
                                outcome == AttemptOutcome::kUnreachable
                                    ? unreachable_pairs_
                                    : std::vector<std::pair<std::string, std::string>>{});
}

}  // namespace mohge::coord
