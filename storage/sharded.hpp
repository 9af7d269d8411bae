// Checkpoint tensors in one safetensors file or in the Hugging Face sharded layout:
//   <stem>-00001-of-0000R.safetensors … plus <stem>.safetensors.index.json =
//   {"metadata": {"total_size": bytes, …}, "weight_map": {tensor name: shard file}}.
// TensorSource reads either layout by tensor name, so a checkpoint written by R ranks loads
// into any number of ranks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "api/result.hpp"
#include "storage/safetensors.hpp"

namespace mohge {

/// "model-00002-of-00004.safetensors" for shard index 1 of 4.
std::string shard_file_name(const std::string& stem, int shard, int num_shards);

/// Writes <stem>.safetensors.index.json atomically.
Status shard_index_write(const std::filesystem::path& path,
                         const std::map<std::string, std::string>& weight_map, int64_t total_size,
                         const std::map<std::string, std::string>& metadata);

class TensorSource {
 public:
  /// Opens `dir/<stem>.safetensors.index.json` when present, else `dir/<stem>.safetensors`.
  /// `dir` may also be one `.safetensors` file (what `mohge download` writes): it then is the
  /// source for stem "model", and there is nothing for any other stem.
  static Result<TensorSource> open(const std::filesystem::path& dir, const std::string& stem);
  TensorSource(TensorSource&&) noexcept;
  TensorSource& operator=(TensorSource&&) noexcept;
  ~TensorSource();

  bool sharded() const { return !weight_map_.empty(); }
  /// Tensor name → shard file (empty for a single file).
  const std::map<std::string, std::string>& weight_map_view() const { return weight_map_; }
  /// The index's "metadata" (sharded) or the file's "__metadata__".
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Every tensor name, sorted.
  std::vector<std::string> names() const;
  /// Reads an F32 tensor (opening its shard on first use); errors name the tensor and file.
  Status read_f32(const std::string& name, const std::vector<int64_t>& shape, float* dst);

 private:
  TensorSource() = default;
  std::filesystem::path dir_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::string> weight_map_;                  // empty for a single file
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;  // opened shards
};

/// Writes every tensor of `dir/<stem>` (either layout) into one safetensors file at `out`
/// (atomically), with the same names, shapes and metadata: the single-file form of a sharded
/// checkpoint. Errors name the file.
Status consolidate_safetensors(const std::filesystem::path& dir, const std::string& stem,
                               const std::filesystem::path& out);

}  // namespace mohge
