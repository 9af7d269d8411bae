// MetricsSink actor: turns the ranks' per-step records (the lines of metrics.jsonl, DESIGN.md
// §7) and log lines into rows, batches them, and writes them through the Store a few times a
// second (one transaction per batch). It also keeps each job's latest routing record and
// tells the Scheduler the job's progress.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
#include "api/messages.hpp"
#include "coordinator/hub.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

/// The metric rows of one record: every numeric field (loss, aux_group, val_loss, …), and from
/// its per-layer routing: imbalance and imbalance_group_per_rank (mean over layers),
/// group_share.<g> (mean over layers) and flops.<rank> (sum over layers).
class MetricsSink : public Actor {
 public:
  MetricsSink(boost::asio::io_context& io, Hub& hub);
  void start();
  /// Checked metric records of a job attempt's rank 0 (the Scheduler authorized the sender);
  /// `seq` is acknowledged to the worker after the rows are committed.
  void on_metrics(const std::string& worker, int64_t job, int attempt, std::optional<int64_t> seq,
                  nlohmann::json records);
  /// Log lines of a job's rank; acknowledged after the commit.
  void on_log(const std::string& worker, int64_t job, int rank, std::optional<int64_t> seq,
              proto::LogReport log);
  /// Writes what is buffered now (on the strand).
  void flush();
  /// Flushes, then runs `done` once the Store has committed those writes (so a job is never
  /// shown finished before its last metrics are readable).
  void flush_then(std::function<void()> done);

 private:
  // What arrived for one job since its last write; written in one transaction and
  // acknowledged to the workers only once that commits.
  struct JobBatch {
    std::vector<db::MetricRow> rows;
    std::vector<db::LogRow> logs;
    std::optional<std::pair<int64_t, nlohmann::json>> routing;  // the latest record
    std::map<std::string, std::vector<int64_t>> acks;           // worker → seqs
    int failures = 0;                                           // failed writes of what is in here
    bool empty() const { return rows.empty() && logs.empty() && !routing && acks.empty(); }
  };

  void schedule_flush();
  /// The write of `batch` ended: acknowledge it, or put it back for the next flush.
  void written(int64_t job, JobBatch batch, const Status& status);

  /// A batch is written this many times (one per flush, 200 ms apart) before it is given up:
  /// its reports stay unacknowledged, so the workers keep them and send them again after
  /// their next reconnect.
  static constexpr int kMaxWriteFailures = 50;

  Hub& hub_;
  boost::asio::steady_timer timer_;
  std::map<int64_t, JobBatch> batches_;  // job → not yet written
  size_t buffered_rows_ = 0;
};

}  // namespace mohge::coord
