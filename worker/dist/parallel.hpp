// What a model needs to know about expert parallelism: the communicators of the job's ranks
// and where each routed expert lives. A default ParallelContext is the single process.
//
// Two planes (DESIGN.md §6): `comm` carries the small control collectives on host values
// (row counts, losses, norms, router counts, the stop flag); `data_comm` carries what lives
// in backend memory (token rows, replicated gradients). On CPU ranks both are the one UCX
// communicator; GPU ranks add an NCCL communicator as the data plane.
#pragma once

#include <stdexcept>

#include "api/result.hpp"
#include "worker/comm/communicator.hpp"
#include "worker/dist/placement.hpp"

namespace mohge {

struct ParallelContext {
  Communicator* comm = nullptr;                // null: one process, no communication
  const ExpertPlacement* placement = nullptr;  // required when world() > 1
  Communicator* data_comm = nullptr;           // null: the data plane is `comm`
  /// The communicator for backend memory.
  Communicator& data() const { return data_comm != nullptr ? *data_comm : *comm; }
  int rank() const { return comm != nullptr ? comm->rank() : 0; }
  int world() const { return comm != nullptr ? comm->world() : 1; }
  bool distributed() const { return world() > 1; }
};

/// A collective failed in the middle of a forward or backward pass (a peer died, a deadline
/// passed). Thrown through the model and turned back into the Error by the trainer, which is
/// the boundary that reports it.
class CollectiveError : public std::runtime_error {
 public:
  explicit CollectiveError(Error e) : std::runtime_error(e.to_string()), error_(std::move(e)) {}
  const Error& error() const { return error_; }

 private:
  Error error_;
};

/// Throws CollectiveError when `s` failed.
inline void collective_check(const Status& s) {
  if (!s.ok()) throw CollectiveError(s.error());
}

}  // namespace mohge
