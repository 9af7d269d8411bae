// safetensors files (https://github.com/huggingface/safetensors), loadable by Python's
// `safetensors` and by `torch`:
//
//   [8 bytes]  N, the header length, uint64 little-endian
//   [N bytes]  JSON header, UTF-8, padded with spaces to a multiple of 8:
//              {"__metadata__": {string: string},            (optional)
//               name: {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
//   [rest]     the data section: tensor bytes, row-major, little-endian; offsets are relative
//              to its start; the tensors tile it exactly (no overlap, no hole, nothing after).
//
// We write F32 tensors (and I64 for integer state) in the order added, contiguously.
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
  uint64_t begin = 0, end = 0;  // byte offsets into the data section, [begin, end)
};

/// Collects tensors, then writes one file. The data pointers are borrowed: they must stay
/// valid until write() returns. Not thread-safe.
class SafetensorsWriter {
 public:
  /// `data` holds prod(shape) values, row-major.
  void add_f32(std::string name, std::vector<int64_t> shape, const float* data);
  void add_i64(std::string name, std::vector<int64_t> shape, const int64_t* data);
  void set_metadata(std::string key, std::string value);
  /// Writes `path` atomically (temp file in the same folder + fsync + rename). Fails without
  /// touching `path`, naming it and the tensor, when a name is empty, repeated or
  /// "__metadata__", a shape has a negative dimension or overflows, data is missing, a name or
  /// metadata string is not UTF-8 (kInvalidArgument), or the file cannot be written.
  Status write(const std::filesystem::path& path) const;

 private:
  struct Pending {
    SafetensorsEntry entry;
    const void* data;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// A safetensors file read into memory. Immutable after open(); const methods may be called
/// from several threads.
class SafetensorsFile {
 public:
  /// Reads and validates the whole file: header length (within the file and the format's
  /// 100 MB limit), JSON, metadata of strings, known dtypes, non-negative shapes, byte counts
  /// matching dtype size × shape product, offsets tiling the data section exactly. Errors name
  /// the path and the problem: kNotFound for a missing file, kDataLoss for a damaged one.
  static Result<SafetensorsFile> open(const std::filesystem::path& path);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Every tensor, in data-section order (the order our writer added them).
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  bool contains(const std::string& name) const;
  /// nullptr if absent.
  const SafetensorsEntry* find(const std::string& name) const;
  /// Copies an F32 tensor into dst (prod(expected_shape) floats); fails with kInvalidArgument
  /// naming the path and the tensor if it is absent, not F32, or its shape differs from
  /// `expected_shape`.
  Status read_f32(const std::string& name, const std::vector<int64_t>& expected_shape,
                  float* dst) const;
  /// The same for an I64 tensor.
  Status read_i64(const std::string& name, const std::vector<int64_t>& expected_shape,
                  int64_t* dst) const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;  // name → position in entries_
  std::map<std::string, std::string> metadata_;
  std::vector<char> data_;  // the data section
};

}  // namespace mohge
