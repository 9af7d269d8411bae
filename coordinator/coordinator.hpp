// The coordinator daemon (DESIGN.md §2, §8): opens the SQLite system of record, starts the
// actors (Store, WorkerRegistry, Scheduler with its JobSupervisors, MetricsSink,
// CheckpointRegistry) on a small Asio thread pool, listens for worker daemons on the control
// address and for REST on the HTTP address. Implements ApiService by forwarding each call to
// the actor that owns the state, with a timeout.
#pragma once

#include <memory>
#include <string>

#include "api/result.hpp"
#include "coordinator/hub.hpp"

namespace mohge::coord {

class Coordinator {
 public:
  /// Opens the database (applying migrations), creates the first admin token on first start
  /// (written to STORAGE/admin.token, mode 0600, and printed once), loads the state, and
  /// starts serving. Errors name the flag or file at fault.
  static Result<std::unique_ptr<Coordinator>> start(const CoordinatorOptions& options);
  ~Coordinator();
  /// Stops serving: REST first, then the control plane; buffered metrics are written.
  void stop();
  std::string http_url() const;

 private:
  struct Impl;
  explicit Coordinator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A new random API token secret ("mohge_" + 48 hex characters).
std::string new_token_secret();

}  // namespace mohge::coord
