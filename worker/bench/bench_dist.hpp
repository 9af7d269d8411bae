// Distributed benchmarks (`mohge bench comm`, `mohge bench train --workers R`,
// `mohge bench balance`): they print figures, they assert nothing. The ranks run as forked
// local processes talking over UCX, like `mohge train --workers R`.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"

namespace mohge {

struct CommBenchRow {
  int64_t bytes_per_rank = 0;  // bytes each rank sends per operation
  double all_to_all_gbps = 0;  // per rank: bytes sent to the others / median time
  double p2p_gbps = 0;         // per rank: one tag send + receive of the same bytes with a partner
  double ratio = 0;            // all_to_all / p2p
};

struct CommBench {
  std::vector<CommBenchRow> rows;
  std::vector<std::string> transports;  // rank 0's view: per peer rank, what UCX uses
};

/// all_to_all_v (each rank spreads `bytes` evenly over the other ranks) next to plain
/// point-to-point tag send/recv between rank pairs (r, r xor 1), measured in the same processes.
/// `world` must be even.
Result<CommBench> bench_comm(int world, const std::vector<int64_t>& bytes);

/// The same benchmark as one rank of `world` ranks started by hand, one per host: rank 0
/// hosts the rendezvous at `rendezvous` (HOST:PORT, an address of its host that the others
/// reach); every rank presents `secret`. It measures the network, so shared memory is left
/// out (as for a job's ranks on different hosts). Rank 0 returns the figures; the others none.
Result<CommBench> bench_comm_rank(const std::string& rendezvous, const std::string& secret,
                                  int rank, int world, const std::vector<int64_t>& bytes);

struct DistTrainBench {
  double workers_tokens_per_s = 0;  // R workers × threads_per_worker
  double single_tokens_per_s = 0;   // one process × R·threads_per_worker threads
  double ratio = 0;
  double imbalance = 0;  // mean over timed steps and layers (this placement)
  double imbalance_group_per_rank = 0;
  int workers = 0;
  int threads_per_worker = 0;
  int64_t steps = 0;
};

/// Training steps of `spec` on `workers` local ranks and, in the same run, on one process with
/// as many threads in total, on the same global batches. With `from` (a checkpoint folder of
/// the same job), both continue from it instead of from initialisation — routing then has the
/// balance the trained router reached.
Result<DistTrainBench> bench_train_workers(const JobSpec& spec, const std::string& storage_root,
                                           int workers, int threads_per_worker, int64_t steps,
                                           const std::filesystem::path& from = {});

struct BalanceReport {
  int workers = 0;
  int64_t steps = 0;    // steps averaged (after the skipped warm-up)
  double all_size = 0;  // mean rank imbalance (max/mean expert FLOPs) per placement
  double group_per_rank = 0;
  double contiguous = 0;
  double all_size_max = 0;  // worst step-layer
  double group_per_rank_max = 0;
  // all-size-adaptive replayed on the same routing as the trainer runs it (a moving average
  // of the loads, re-planned every `every` steps, moved when the gain passes min_gain).
  double adaptive = 0;
  double adaptive_max = 0;
  int64_t every = 0;
  int64_t replans = 0;     // re-plans that moved experts
  double moved_bytes = 0;  // weights and both AdamW moments of the experts those moved
  // Sampling noise: static All-size under a perfectly uniform router that routes the same
  // number of assignments (the imbalance no placement can remove).
  double noise_floor = 0;
  // The best any All-size placement could do if it knew each step's loads in advance (the
  // planner on the step's own counts): what is left is the router's, not the placement's.
  double oracle = 0;
  // The adaptive replay and the oracle need expert groups (MoHGE); for other models they are
  // not computed (and the adaptive figures are static All-size's).
  bool grouped = false;
};

/// Rank imbalance of each placement over R ranks for the routing a run recorded in its
/// metrics.jsonl (expert assignments per layer and step), skipping the first `skip` steps.
/// The routing of an R-rank run equals the single-process run's (tests prove it), so any run
/// of the job serves.
Result<BalanceReport> bench_balance(const std::filesystem::path& run_dir, int workers, int64_t skip,
                                    int64_t every = -1);

}  // namespace mohge
