// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]},
// "__metadata__": {string: string}} padded with spaces to a multiple of 8 bytes, then the
// tensor bytes. We write F32 tensors (and I64/I32 for integer state) in the order added.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "api/result.hpp"

namespace mohge {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "I32", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

/// Collects tensors, then writes one file. The data pointers are borrowed: they must stay
/// valid until write() returns. Not thread-safe.
class SafetensorsWriter {
 public:
  void add_f32(std::string name, std::vector<int64_t> shape, const float* data);
  void add_i64(std::string name, std::vector<int64_t> shape, const int64_t* data);
  void set_metadata(std::string key, std::string value);
  /// Writes `path` atomically (temp file in the same folder + fsync + rename).
  Status write(const std::filesystem::path& path) const;

 private:
  struct Pending {
    SafetensorsEntry entry;
    const void* data;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// A safetensors file read into memory. Opening validates the header (JSON, offsets within
/// the file, non-overlapping, byte counts matching dtype × shape).
class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::filesystem::path& path);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  bool contains(const std::string& name) const;
  /// nullptr if absent.
  const SafetensorsEntry* find(const std::string& name) const;
  /// Copies an F32 tensor into dst; fails (naming the tensor) if it is absent, not F32, or
  /// its shape differs from `expected_shape`.
  Status read_f32(const std::string& name, const std::vector<int64_t>& expected_shape,
                  float* dst) const;
  Status read_i64(const std::string& name, const std::vector<int64_t>& expected_shape,
                  int64_t* dst) const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::vector<char> data_;  // the data section
};

}  // namespace mohge
