// The data-plane communicator between the R ranks of a job (DESIGN.md §2, §6): one interface,
// a UCX implementation (CPU hosts) and an NCCL one (GPUs).
//
// Every collective is called by all ranks in the same order. Every wait has a deadline
// (`CommOptions::timeout_s`); a dead or silent peer makes the call fail with an error that
// names the peer rank — never a hang. After a failure the communicator is unusable: call
// abort() (or let the destructor do it). Not thread-safe: one thread drives a communicator.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api/result.hpp"

namespace mohge {

enum class ReduceOp { kSum, kAverage };

struct CommOptions {
  double timeout_s = 60.0;  // deadline of every blocking wait
  // Who each rank is, for error messages ("rank 1 (worker w2 on host h2)"); empty: ranks only.
  std::vector<std::string> peer_names;
  // UCX: leave out the shared-memory transports (UCX_TLS=^sm: posix, sysv, cma, …). For ranks on
  // different hosts: UCX tells hosts apart by boot id, which containers (or network
  // namespaces) on one machine share, and would then try shared memory between "hosts" that
  // cannot share it. Ignored when the user set UCX_TLS.
  bool no_shared_memory = false;
  // Filled when creating the communicator fails with kUnreachable (its unreachable_peers()
  // are gone with it); may be null.
  std::vector<int>* unreachable = nullptr;
};

/// The kinds of transport a rank pair uses, from one entry of peer_transports(): what a user
/// needs to know (is this pair on shared memory, TCP, RDMA or the GPU's links). Each of
/// "self", "shm", "tcp", "rdma", "nccl", "other", in the order first met, joined by "+"
/// ("tcp/eth0" → "tcp"; "posix/memory+cma/memory" → "shm"); "unknown" for "".
std::string transport_kinds(const std::string& transports);

/// Raised from outside the data plane (a control connection saw a peer die, the job was
/// cancelled): every wait of the communicator fails promptly with this reason.
class AbortSignal {
 public:
  void raise(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);  // reason_ is written once, read by waiters
    if (!raised_.load()) reason_ = reason;
    raised_.store(true);
  }
  bool raised() const { return raised_.load(std::memory_order_relaxed); }
  std::string reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }

 private:
  std::atomic<bool> raised_{false};
  mutable std::mutex mu_;
  std::string reason_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string name() const = 0;  // "ucx", "nccl", "local"

  /// Sends send_bytes[p] bytes to every peer p and receives recv_bytes[p] bytes from it. The
  /// blocks for the peers lie back to back in rank order in `send` and `recv` (the caller
  /// knows the receive sizes, e.g. from an earlier exchange of counts). Sizes may be 0.
  virtual Status all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                              const int64_t* recv_bytes) = 0;
  /// Point to point: sends `send_bytes` to `peer` and receives `recv_bytes` from it (both
  /// sides call it with each other as peer). One tag send and one tag receive on UCX.
  virtual Status send_recv(int peer, const void* send, int64_t send_bytes, void* recv,
                           int64_t recv_bytes) = 0;
  /// In place; every rank ends with bit-identical values.
  virtual Status all_reduce(float* data, int64_t count, ReduceOp op) = 0;
  virtual Status all_reduce(double* data, int64_t count, ReduceOp op) = 0;
  virtual Status broadcast(void* data, int64_t bytes, int root) = 0;
  virtual Status barrier() = 0;
  /// Stops all communication now (peers will time out or see the abort signal).
  virtual void abort(const std::string& why) = 0;
  /// Orderly shutdown after the last collective.
  virtual Status finalize() = 0;

  /// Bytes this rank sent since construction (all operations).
  virtual int64_t bytes_sent() const = 0;
  /// Wall seconds this rank spent inside communication calls since construction (waiting for
  /// peers included): the communication share of a step is the difference over the step.
  virtual double busy_seconds() const { return 0.0; }
  /// Per peer rank (index = rank), the transports its messages travel on, as UCX or NCCL
  /// names them ("tcp/eth0", "posix/memory+cma/memory", "self", "nccl"); empty when unknown.
  virtual std::vector<std::string> peer_transports() const { return {}; }
  /// After an error with code kUnreachable: the peer ranks this rank could not reach.
  virtual std::vector<int> unreachable_peers() const { return {}; }
};

/// "rank 1" or, with names, "rank 1 (worker w2 on host h2)".
std::string peer_label(const CommOptions& options, int rank);

/// A world of one: collectives are copies or no-ops. Used by the single-process trainer.
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace mohge
