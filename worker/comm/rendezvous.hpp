// Rendezvous: how the ranks of a job find each other (UCX worker addresses, the NCCL unique
// id) and learn that a peer died. Behind an interface: today a small TCP service hosted by
// rank 0 (`--rendezvous HOST:PORT`); in the service issue the coordinator takes it over.
//
// Liveness: every rank keeps its connection to the service open for the whole job. When a
// rank's process dies its connection drops, and the service tells every other rank
// "rank r exited"; their AbortSignal fires and every data-plane wait fails with that reason.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "api/result.hpp"
#include "worker/comm/communicator.hpp"

namespace mohge {

class Rendezvous {
 public:
  virtual ~Rendezvous() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  /// Publishes this rank's blob and returns every rank's blob (index = rank) once all have
  /// published. Rounds are numbered by call order; all ranks make the same calls.
  virtual Result<std::vector<std::string>> exchange(const std::string& blob, double timeout_s) = 0;
  /// Fires when a peer dies or the job is stopped.
  virtual AbortSignal& abort_signal() = 0;
  /// This rank finished cleanly: its disconnect from now on is not a failure. Call it only
  /// on success; destroying the rendezvous without leave() or fail() reads as "rank exited".
  virtual void leave() = 0;
  /// This rank failed: every other rank's abort signal fires with `reason` (name the rank in
  /// it) at once, instead of waiting for a deadline.
  virtual void fail(const std::string& reason) = 0;
};

/// The TCP rendezvous service (rank 0 runs it). Starts listening in the constructor's thread
/// and serves on a background thread until every rank has left or stop() is called.
class RendezvousServer {
 public:
  /// host:port to listen on (port 0 picks a free port; see port()). Errors name the address.
  /// Only connections presenting `secret` (the job's, shared by its ranks; not empty) join;
  /// others are refused and closed, and cost at most one small frame each.
  static Result<std::unique_ptr<RendezvousServer>> start(const std::string& host_port, int world,
                                                         const std::string& job,
                                                         const std::string& secret);
  ~RendezvousServer();
  int port() const;
  /// Waits until every rank has left, failed or disconnected (so rank 0 does not take the
  /// service down under ranks still finishing), at most `timeout_s`. True when they all did.
  bool wait_done(double timeout_s);
  void stop();

 private:
  struct Impl;
  explicit RendezvousServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Connects rank `rank` of `world` to the service at host:port, retrying until `timeout_s`
/// (ranks may start before rank 0 listens). `job` and `secret` must match the server's.
Result<std::unique_ptr<Rendezvous>> rendezvous_connect(const std::string& host_port, int rank,
                                                       int world, const std::string& job,
                                                       const std::string& secret, double timeout_s);

/// Splits "host:port"; the error names `field`.
Result<std::pair<std::string, int>> parse_host_port(const std::string& host_port,
                                                    const std::string& field);

}  // namespace mohge
