// Checkpoints (layout in storage/FORMAT.md, "Checkpoint folder layout"):
// RUN/checkpoints/step-NNNNNNNN/ holding the weights, the AdamW moments, job.json and
// trainer_state.json. A single process writes model.safetensors / optimizer.safetensors; R
// ranks write the Hugging Face sharded layout (model-0000r-of-0000R.safetensors with each
// rank's experts, rank 0's also holding the replicated tensors, plus
// model.safetensors.index.json; the same for the optimizer). Every checkpoint is written into
// a temporary folder and renamed into place when complete, so a folder named step-* is whole.
// Either layout loads into any number of ranks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "storage/sharded.hpp"
#include "worker/dist/parallel.hpp"
#include "worker/model/transformer.hpp"
#include "worker/train/batches.hpp"
#include "worker/train/optimizer.hpp"

namespace mohge {

/// What, besides weights and optimizer moments, a run needs to continue bit-exactly.
struct TrainerState {
  int64_t step = 0;    // completed steps
  BatchPosition data;  // position of the training batches (of the global batch)
  uint64_t seed = 0;   // train.seed of the run
  // all-size-adaptive: the owner of every expert in every layer (layers × E) when the
  // checkpoint was written, so a resume in the same world continues with it; empty otherwise.
  std::vector<std::vector<int>> placement;
};

/// The placement recorded in a checkpoint's trainer_state.json (empty when there is none).
Result<std::vector<std::vector<int>>> checkpoint_placement(const std::filesystem::path& checkpoint);

/// The writer of a run under the service: its attempt number (recorded in
/// trainer_state.json; 0 outside the service) and its fence, which fails once a newer attempt
/// owns the run folder (a worker declared lost and replaced while it was stopped). Every write
/// into the run checks it first; a failed check abandons the write.
struct RunFence {
  int attempt = 0;
  std::function<Status()> check;  // null: no fence (one process, the CLI)
  Status verify() const { return check ? check() : Status(); }
};

/// "step-00000500".
std::string checkpoint_folder_name(int64_t step);

/// Writes the checkpoint of `state.step` under `checkpoints_dir` atomically, then deletes the
/// oldest complete checkpoints beyond `keep`. `extra_files` (e.g. the tokenizer) are copied
/// into the folder. With a distributed `parallel`, every rank calls it (collectively) and
/// writes its shard. `fence` is verified before the folder is swept and created and again
/// before it is published (and retention applied). Returns the folder written.
Result<std::filesystem::path> checkpoint_write(
    const std::filesystem::path& checkpoints_dir, Transformer& model, AdamW& optimizer,
    const JobSpec& spec, const TrainerState& state, int keep,
    const std::vector<std::filesystem::path>& extra_files, const ParallelContext& parallel = {},
    const RunFence& fence = {});

/// Complete checkpoints under `checkpoints_dir`, oldest first (leftover temp folders are
/// ignored).
std::vector<std::filesystem::path> checkpoint_list(const std::filesystem::path& checkpoints_dir);

/// The job spec stored with a checkpoint (metadata `mohge_spec`), either layout.
Result<JobSpec> checkpoint_read_spec(const std::filesystem::path& checkpoint);

/// Copies every parameter of `params` from `source` (names and shapes must match). With
/// `require_all`, tensors of the source that `params` lacks are an error too (a complete
/// model loading a checkpoint of another spec).
Status params_load(TensorSource& source, ParamStore& params, Backend& backend, bool require_all);

/// Loads this rank's weights (and, when given, optimizer moments and trainer state) from a
/// checkpoint of either layout, written by any number of ranks.
Status checkpoint_load(const std::filesystem::path& checkpoint, Transformer& model,
                       AdamW* optimizer, TrainerState* state);

}  // namespace mohge
