// CheckpointRegistry actor: a checkpoint is registered complete only when every rank of the
// attempt has reported its shard written with checksums and the files are on disk with the
// reported sizes (DESIGN.md §8). Registration and retention go through the Store in one write:
// the new row, then the oldest complete checkpoints beyond `checkpoint.keep` have their files
// deleted and only then their rows marked deleted.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
#include "api/messages.hpp"
#include "coordinator/hub.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

class CheckpointRegistry : public Actor {
 public:
  CheckpointRegistry(boost::asio::io_context& io, Hub& hub);
  /// A checked "checkpoint_written" report from `rank` of the job's current attempt (the
  /// Scheduler authorized the sender and its folder). The reports of a checkpoint are
  /// acknowledged to their workers (`seq`) only once its row is committed, so a failed write
  /// loses nothing: the workers send them again after their next reconnect.
  void on_report(const std::string& worker, std::optional<int64_t> seq, int64_t job, int rank,
                 std::string run_dir, proto::CheckpointWritten report);

  /// True when `path` (relative to `root`) resolves inside `root/run_dir/checkpoints`,
  /// symlinks of its existing parts followed.
  static bool inside_checkpoints(const std::filesystem::path& root, const std::string& run_dir,
                                 const std::string& path);

  /// Incomplete checkpoints are forgotten after this long, and at most this many are kept.
  static constexpr double kPendingTtlS = 3600;
  static constexpr size_t kMaxPending = 1024;

 private:
  struct PendingCheckpoint {
    double first_at = 0;  // hub_.now() of its first report
    std::string run_dir;
    int world = 0;
    int keep = 0;
    std::string path;
    std::set<int> ranks;
    std::vector<db::CheckpointFile> files;
    std::map<std::string, std::vector<int64_t>> acks;  // worker → seqs of its reports
  };
  void ack(const std::map<std::string, std::vector<int64_t>>& acks);
  void complete(int64_t job, int64_t step, PendingCheckpoint p);

  Hub& hub_;
  std::map<std::pair<int64_t, int64_t>, PendingCheckpoint> pending_;  // (job, step)
};

}  // namespace mohge::coord
