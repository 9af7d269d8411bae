// Published, read-only views of every job for the REST edge: the Scheduler (the jobs' only
// owner) serialises a job's JSON whenever the job changes and publishes it here; REST threads
// read the latest text without a round trip through the Scheduler's strand. This is what
// makes GET /jobs/{id} cheap (DESIGN.md §8's API figures): one shared lock and a copy of a
// pointer per request.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

namespace mohge::coord {

class JobViews {
 public:
  struct View {
    int64_t user_id = 0;
    std::shared_ptr<const std::string> json;  // the job as GET /jobs/{id} returns it
  };

  /// Called by the Scheduler only.
  void publish(int64_t job, int64_t user_id, std::string json) {
    auto text = std::make_shared<const std::string>(std::move(json));
    std::unique_lock<std::shared_mutex> lock(mu_);
    views_[job] = View{user_id, std::move(text)};
  }

  /// Any thread.
  std::optional<View> get(int64_t job) const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    const auto it = views_.find(job);
    if (it == views_.end()) return std::nullopt;
    return it->second;
  }

 private:
  // Many REST readers, one writer that swaps a pointer: a reader-writer lock held for a map
  // lookup is the simplest correct choice.
  mutable std::shared_mutex mu_;
  std::unordered_map<int64_t, View> views_;
};

}  // namespace mohge::coord
