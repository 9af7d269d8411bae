// The Store actor: owns the one writable SQLite connection (DESIGN.md §2). Every write of the
// coordinator is a function posted here, so writes are serialised without locks and SQLite
// never sees two writers ("database is locked" cannot happen between our own writers).
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "api/actor.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

class Store : public Actor {
 public:
  Store(boost::asio::any_io_executor ex, std::unique_ptr<db::Repository> repo)
      : Actor(std::move(ex)), repo_(std::move(repo)) {}

  /// Runs a write on the store's strand. A busy database is retried at once, up to kAttempts
  /// times over ~0.35 s, holding the strand so that later writes cannot overtake it (a job's
  /// row must not be overwritten by an older one). A failure that persists is logged with
  /// `what`, counted (failures(), shown by /healthz), and handed to `done` (on this strand:
  /// post onward), whose owner may retry later.
  void write(const char* what, std::function<Status(db::Repository&)> f,
             std::function<void(const Status&)> done = nullptr) {
    post([this, what, f = std::move(f), done = std::move(done)] {
      Status s = f(*repo_);
      for (int attempt = 1; !s.ok() && attempt < kAttempts && retryable(s.error()); ++attempt) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50 << (attempt - 1)));
        s = f(*repo_);
      }
      if (!s.ok()) {
        spdlog::error("store: {} failed: {}", what, s.error().to_string());
        std::lock_guard<std::mutex> lock(health_mu_);
        ++failed_writes_;
        last_error_ = std::string(what) + ": " + s.error().to_string();
      }
      if (done) done(s);
    });
  }

  /// Writes that failed for good since start, and the last one's error (any thread).
  std::pair<int64_t, std::string> failures() const {
    std::lock_guard<std::mutex> lock(health_mu_);
    return {failed_writes_, last_error_};
  }

  static constexpr int kAttempts = 4;

  /// Runs `f` on the strand and waits for it (REST threads and start-up only).
  template <class T>
  Result<T> call(std::function<Result<T>(db::Repository&)> f,
                 std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    return ask<T>([this, f = std::move(f)] { return f(*repo_); }, timeout);
  }

  /// Direct access before the io threads start (loading state at start-up).
  db::Repository& unsafe_repository() { return *repo_; }

 private:
  static bool retryable(const Error& e) { return e.code == ErrorCode::kUnavailable; }

  std::unique_ptr<db::Repository> repo_;
  // The failure count is read by REST threads for /healthz and written here: a small lock is
  // simpler than an ask() round trip to this (possibly busy) strand.
  mutable std::mutex health_mu_;
  int64_t failed_writes_ = 0;
  std::string last_error_;
};

}  // namespace mohge::coord
