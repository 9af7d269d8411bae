// One rank of a distributed job: join the rendezvous (rank 0 hosts it unless told otherwise),
// build the UCX communicator (the control plane, and the data plane of CPU ranks) and, for
// GPU ranks, the NCCL communicator on the backend's stream (the data plane), train. Driven today by
// `mohge-worker --rank …` processes (which `mohge train --workers R` launches); the worker daemon
// of the service issue will call it for the ranks the coordinator assigns.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "worker/train/trainer.hpp"

namespace mohge {

struct RankConfig {
  JobSpec spec;
  int rank = 0;
  int world = 1;
  std::string rendezvous;         // HOST:PORT of the rendezvous service
  std::string rendezvous_secret;  // the job's secret, the same on every rank (not empty)
  bool host_rendezvous = true;    // rank 0 runs the service itself
  std::string job_id;             // ranks of different jobs never meet; default: spec.name
  int threads = 0;                // compute threads (0: all cores)
  int gpu = 0;                    // resources.device "cuda": the visible GPU of this rank
  double comm_timeout_s = 60.0;   // deadline of every data-plane wait
  // Per rank, who runs it ("worker w2 on host h2"), for error messages; empty: ranks only.
  std::vector<std::string> peer_names;
  // Per rank, its host's name: when they differ, no rank of the job uses shared memory (see
  // CommOptions::no_shared_memory). Empty: UCX decides alone.
  std::vector<std::string> peer_hosts;
  // Set on a failure with code kUnreachable: the peer ranks this rank could not reach.
  std::vector<int>* unreachable = nullptr;
  TrainOptions train;  // storage root, run folder, resume, progress, stop_after
};

class Rendezvous;

/// Runs the rank over a rendezvous the caller provides (the worker daemon's, which goes
/// through the coordinator). Reports success with rv.leave() and failure with rv.fail().
Status rank_run(const RankConfig& config, Rendezvous& rv,
                const std::function<void(const StepReport&)>& on_step = {});

/// Runs the rank to the end of training (or the first error, which names the failing peer
/// when a peer died). `on_step` sees every step's report on this rank.
Status rank_run(const RankConfig& config,
                const std::function<void(const StepReport&)>& on_step = {});

}  // namespace mohge
