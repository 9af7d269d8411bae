// The Store actor: owns the one writable SQLite connection (DESIGN.md §2). Every write of the
// coordinator is a function posted here, so writes are serialised without locks and SQLite
// never sees two writers ("database is locked" cannot happen between our own writers).
#pragma once

#include <spdlog/spdlog.h>

#include <functional>
#include <memory>

#include "api/actor.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

class Store : public Actor {
 public:
  Store(boost::asio::any_io_executor ex, std::unique_ptr<db::Repository> repo)
      : Actor(std::move(ex)), repo_(std::move(repo)) {}

  /// Runs a write on the store's strand; a failure is logged with `what`.
  void write(const char* what, std::function<Status(db::Repository&)> f) {
    post([this, what, f = std::move(f)] {
      Status s = f(*repo_);
      if (!s.ok()) spdlog::error("store: {} failed: {}", what, s.error().to_string());
    });
  }

  /// Runs `f` on the strand and waits for it (REST threads and start-up only).
  template <class T>
  Result<T> call(std::function<Result<T>(db::Repository&)> f,
                 std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    return ask<T>([this, f = std::move(f)] { return f(*repo_); }, timeout);
  }

  /// Direct access before the io threads start (loading state at start-up).
  db::Repository& unsafe_repository() { return *repo_; }

 private:
  std::unique_ptr<db::Repository> repo_;
};

}  // namespace mohge::coord
