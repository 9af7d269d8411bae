// CheckpointRegistry actor: a checkpoint is registered complete only when every rank of the
// attempt has reported its shard written with checksums and the files are on disk with the
// reported sizes (DESIGN.md §8). Registration and retention go through the Store in one write:
// the new row, then the oldest complete checkpoints beyond `checkpoint.keep` have their files
// deleted and only then their rows marked deleted.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
#include "coordinator/hub.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

class CheckpointRegistry : public Actor {
 public:
  CheckpointRegistry(boost::asio::io_context& io, Hub& hub);
  /// A "checkpoint_written" message from a rank.
  void on_report(const nlohmann::json& m);

 private:
  struct PendingCheckpoint {
    int world = 0;
    int keep = 0;
    std::string path;
    std::set<int> ranks;
    std::vector<db::CheckpointFile> files;
  };
  void complete(int64_t job, int64_t step, PendingCheckpoint p);

  Hub& hub_;
  std::map<std::pair<int64_t, int64_t>, PendingCheckpoint> pending_;  // (job, step)
};

}  // namespace mohge::coord
