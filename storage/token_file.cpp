#include "storage/token_file.hpp"

#include <bit>
#include <cstdint>
#include <fstream>
#include <limits>

#include "storage/atomic_file.hpp"

namespace mohge {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "token files are little-endian; a big-endian host would need byte swapping");

Result<std::vector<uint16_t>> token_file_read(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return Error{ErrorCode::kNotFound,
                 path.string() + " does not exist (run `mohge prepare-data` first?)", ""};
  }
  const uintmax_t size = fs::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) return Error{ErrorCode::kNotFound, "cannot read " + path.string(), ""};
  constexpr uintmax_t kHeaderBytes = kTokenFileHeaderInts * sizeof(int32_t);
  if (size < kHeaderBytes) {
    return Error{ErrorCode::kDataLoss,
                 path.string() + " is " + std::to_string(size) +
                     " bytes, shorter than the 1024-byte token file header (truncated?)",
                 ""};
  }
  int32_t header[kTokenFileHeaderInts];
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  if (header[0] != kTokenFileMagic) {
    return invalid_argument("", path.string() + " has magic " + std::to_string(header[0]) +
                                    ", expected " + std::to_string(kTokenFileMagic) +
                                    " (not a token file in the llm.c layout)");
  }
  if (header[1] != kTokenFileVersion) {
    return invalid_argument("", path.string() + " has version " + std::to_string(header[1]) +
                                    ", expected " + std::to_string(kTokenFileVersion) +
                                    " (uint16 tokens)");
  }
  const int64_t count = header[2];
  if (count < 0) {
    return Error{ErrorCode::kDataLoss,
                 path.string() + ": the header's token count " + std::to_string(count) +
                     " is negative (corrupt)",
                 ""};
  }
  const uintmax_t expected = kHeaderBytes + static_cast<uintmax_t>(count) * sizeof(uint16_t);
  if (size != expected) {
    return Error{ErrorCode::kDataLoss,
                 path.string() + ": the header says " + std::to_string(count) + " tokens (" +
                     std::to_string(expected) + " bytes) but the file has " + std::to_string(size) +
                     " bytes (truncated or corrupt)",
                 ""};
  }
  std::vector<uint16_t> tokens(static_cast<size_t>(count));
  in.read(reinterpret_cast<char*>(tokens.data()), static_cast<std::streamsize>(count * 2));
  if (!in) return Error{ErrorCode::kDataLoss, "short read from " + path.string(), ""};
  return tokens;
}

Status token_file_write(const fs::path& path, std::span<const uint16_t> tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return invalid_argument("", path.string() + ": " + std::to_string(tokens.size()) +
                                    " tokens do not fit the int32 count of the header");
  }
  return atomic_write_file(path, [&](std::ostream& out) {
    int32_t header[kTokenFileHeaderInts] = {};
    header[0] = kTokenFileMagic;
    header[1] = kTokenFileVersion;
    header[2] = static_cast<int32_t>(tokens.size());
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    out.write(reinterpret_cast<const char*>(tokens.data()),
              static_cast<std::streamsize>(tokens.size() * sizeof(uint16_t)));
  });
}

}  // namespace mohge
