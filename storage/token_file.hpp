// Pre-tokenized datasets in the llm.c token layout:
//   header: 256 × int32 little-endian: [0] magic 20240520, [1] version 1, [2] token count,
//           the rest 0;
//   body:   `token count` × uint16 token ids.
// A file whose size disagrees with its header is refused (truncated or padded).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "api/result.hpp"

namespace mohge {

constexpr int32_t kTokenFileMagic = 20240520;
constexpr int32_t kTokenFileVersion = 1;
constexpr int64_t kTokenFileHeaderInts = 256;

/// Reads a whole token file. Errors (kInvalidArgument for a wrong magic or version,
/// kDataLoss for a size mismatch, kNotFound for a missing file) name the path and the problem.
Result<std::vector<uint16_t>> token_file_read(const std::filesystem::path& path);

/// Writes `tokens` atomically (temp file + rename). Errors name the path.
Status token_file_write(const std::filesystem::path& path, std::span<const uint16_t> tokens);

}  // namespace mohge
