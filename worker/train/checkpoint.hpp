// Checkpoints of a single-process run (layout in storage/FORMAT.md, "Checkpoint folder
// layout"): RUN/checkpoints/step-NNNNNNNN/ holding model.safetensors, optimizer.safetensors,
// job.json and trainer_state.json, written into a temporary folder and renamed into place, so
// a folder named step-* is always complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "worker/model/transformer.hpp"
#include "worker/train/batches.hpp"
#include "worker/train/optimizer.hpp"

namespace mohge {

class SafetensorsFile;

/// What, besides weights and optimizer moments, a run needs to continue bit-exactly.
struct TrainerState {
  int64_t step = 0;    // completed steps
  BatchPosition data;  // position of the training batches
  uint64_t seed = 0;   // train.seed of the run
};

/// "step-00000500".
std::string checkpoint_folder_name(int64_t step);

/// Writes the checkpoint of `state.step` under `checkpoints_dir` atomically, then deletes the
/// oldest complete checkpoints beyond `keep`. `extra_files` (e.g. the tokenizer) are copied
/// into the folder. Returns the folder written.
Result<std::filesystem::path> checkpoint_write(
    const std::filesystem::path& checkpoints_dir, Transformer& model, AdamW& optimizer,
    const JobSpec& spec, const TrainerState& state, int keep,
    const std::vector<std::filesystem::path>& extra_files);

/// Complete checkpoints under `checkpoints_dir`, oldest first (leftover temp folders are
/// ignored).
std::vector<std::filesystem::path> checkpoint_list(const std::filesystem::path& checkpoints_dir);

/// The job spec stored in a checkpoint (model.safetensors metadata `mohge_spec`).
Result<JobSpec> checkpoint_read_spec(const std::filesystem::path& checkpoint);

/// Copies every parameter of `params` from `file` (names and shapes must match exactly;
/// tensors of the file that the model lacks are an error too).
Status params_load(const SafetensorsFile& file, ParamStore& params, Backend& backend);

/// Loads model weights (and, when given, optimizer moments and trainer state).
Status checkpoint_load(const std::filesystem::path& checkpoint, Transformer& model,
                       AdamW* optimizer, TrainerState* state);

}  // namespace mohge
