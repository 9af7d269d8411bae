// The trainer behind `mohge train` and every rank of `mohge-worker`. Each step is the flat
// sequence
//   next batch → forward → zero grad → backward → all-reduce replicated grads → clip → AdamW
// followed by metrics (RUN/metrics.jsonl, written by rank 0), periodic evaluation and
// checkpoints. With R ranks (DESIGN.md §6) every rank reads the same global batch and trains on
// its B/R sequences; routed experts live on their owners and tokens travel to them; losses and
// gradients are those of the single process on the global batch.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "kernels/backend.hpp"
#include "worker/dist/parallel.hpp"
#include "worker/model/transformer.hpp"
#include "worker/train/batches.hpp"
#include "worker/train/checkpoint.hpp"

namespace mohge {

class AdamW;

/// Keeps the records of `path` (metrics.jsonl) up to step `last_step` (and drops torn lines).
/// The file is replaced by a new one, so a writer that still holds the old one open (a
/// superseded attempt's rank, stopped right after its fence check) writes into the old file.
Status metrics_truncate(const std::filesystem::path& path, int64_t last_step);

/// The backend a spec asks for: resources.device and train.precision; errors name the field
/// when this host cannot provide it. `gpu`: which visible GPU a "cuda" rank uses.
Result<std::unique_ptr<Backend>> make_job_backend(const JobSpec& spec, int threads, int gpu = 0);

struct TrainOptions {
  std::filesystem::path storage_root = ".";  // data paths of the spec are relative to it
  std::filesystem::path run_dir;             // default: storage_root/runs/<spec name>
  bool resume = false;                       // continue from the latest checkpoint
  bool progress = true;                      // live progress on stderr
  int64_t stop_after = 0;             // > 0: stop (with a checkpoint) once this step is reached
  Communicator* comm = nullptr;       // the job's ranks; null or a world of one: single process
  Communicator* data_comm = nullptr;  // backend memory (GPU ranks: NCCL); null: `comm`
  bool resume_if_present = false;     // resume when a checkpoint exists, else start fresh
  /// Set from another thread to stop at the next step boundary with a checkpoint (all ranks
  /// agree on the step through one all-reduce per step). Null: never.
  const std::atomic<bool>* stop_request = nullptr;
  /// Every metrics.jsonl record as it is written (rank 0 only).
  std::function<void(const nlohmann::json&)> on_record;
  /// Every checkpoint this rank took part in, once it is complete on disk (all ranks).
  std::function<void(int64_t step, const std::filesystem::path& folder)> on_checkpoint;
  /// Verified right before every write into the run folder (each metrics record, each
  /// checkpoint): a failure ends the run with that error (the service's attempt fence).
  RunFence fence;
  /// How many rank pairs use each transport kind ("tcp", "shm", "shm_tcp"; see
  /// transport_kinds): rank 0 adds it to the record of the first step of the run and of every
  /// resume (`"transport_pairs": {"tcp": 1}`); empty: not added.
  std::map<std::string, int> transport_pairs;
};

/// One training step's figures (also the record written to metrics.jsonl).
struct StepReport {
  int64_t step = 0;  // 1-based, completed steps
  double loss = 0, aux_group = 0, aux_expert = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, step_ms = 0;
  double comm_ms = 0;  // of step_ms, inside communication calls (waits for peers included)
  double activated_expert_params = 0;  // per token, summed over layers (measured routing)
  std::optional<double> val_loss;      // set on evaluation steps
  bool stopped = false;                // the run stops after this step (stop_after/stop_request)
};

/// Difficulty routing (the paper's Tables 4–5), measured on evaluation batches: for MoHGE
/// models, the share of token-expert assignments landing in each group, for tokens bucketed by
/// how frequent the input token is in the training data and by the token's loss.
struct DifficultyRouting {
  static constexpr int kBuckets = 4;
  /// Frequency buckets: input tokens ordered by training-set count, cut where the cumulative
  /// count passes 25/50/75 % of all tokens (bucket 0 = the most frequent tokens).
  std::vector<int8_t> frequency_bucket;  // (V)
  /// Loss buckets (nats): [0, 2), [2, 4), [4, 6), [6, ∞).
  static int loss_bucket(double loss) { return loss < 2 ? 0 : loss < 4 ? 1 : loss < 6 ? 2 : 3; }
  int groups = 0;                    // G
  std::vector<double> by_frequency;  // (kBuckets, G) assignment counts
  std::vector<double> by_loss;       // (kBuckets, G)

  /// Buckets from the training data's token counts.
  static DifficultyRouting from_counts(const std::vector<int64_t>& counts, int groups);
  /// {"frequency": [[share by group] per bucket], "token_loss": [...]} (shares of each bucket's
  /// assignments; rows of empty buckets are zeros).
  nlohmann::json to_json() const;
};

struct EvalResult {
  double loss = 0.0;   // mean next-token cross-entropy
  int64_t tokens = 0;  // targets evaluated
};

/// Mean loss over the first `batches`·`batch_size` windows (window k starts at token k·T;
/// fewer if the data is shorter). With a distributed `parallel` every rank evaluates its share
/// of each batch (collective) and all get the total. Throws CollectiveError on a failed
/// collective.
EvalResult evaluate(Transformer& model, const TokenWindows& data, int64_t batches,
                    int64_t batch_size, const ParallelContext& parallel = {},
                    DifficultyRouting* difficulty = nullptr);

class Trainer {
 public:
  /// Validates the data files against the spec and prepares the run folder. Errors name the
  /// offending field or file.
  static Result<std::unique_ptr<Trainer>> create(const JobSpec& spec, const TrainOptions& options,
                                                 Backend& backend);
  /// Rank of this trainer in its job (0 in a single process).
  int rank() const { return parallel_.rank(); }
  ~Trainer();

  /// Trains to train.steps (or options.stop_after). `on_step` sees every step's report.
  Status run(const std::function<void(const StepReport&)>& on_step = {});

  const std::filesystem::path& run_dir() const { return options_.run_dir; }
  Transformer& model() { return *model_; }

 private:
  Trainer(const JobSpec& spec, const TrainOptions& options, Backend& backend, TokenWindows train,
          TokenWindows val, std::unique_ptr<ExpertPlacement> placement);
  Status train_loop(const std::function<void(const StepReport&)>& on_step);
  // all-size-adaptive: folds this step's routing into the moving loads, and every
  // placement_every steps re-plans and moves experts when the predicted gain is worth it.
  // Returns the event record (or null when nothing moved).
  Result<nlohmann::json> adapt_placement(int64_t step, AdamW& optimizer);
  // Applies a placement recorded in a checkpoint (same world and shape; else ignored).
  void restore_placement(const std::vector<std::vector<int>>& owners);

  JobSpec spec_;
  TrainOptions options_;
  Backend& be_;
  TokenWindows train_;
  TokenWindows val_;
  std::unique_ptr<ExpertPlacement> placement_;  // null in a single process
  std::vector<std::vector<double>> load_ema_;   // (layers, E) moving average of expert tokens
  ParallelContext parallel_;
  std::unique_ptr<Transformer> model_;
};

}  // namespace mohge
