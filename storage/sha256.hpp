// SHA-256 in lowercase hex (OpenSSL): token hashes and checkpoint file checksums.
#pragma once

#include <filesystem>
#include <string>

#include "api/result.hpp"

namespace mohge {

/// Lowercase hex bytes.
std::string hex_encode(const unsigned char* bytes, size_t n);
/// SHA-256 of `data`.
std::string sha256_hex(const std::string& data);
/// SHA-256 of a file's bytes, read in 1 MiB blocks; kNotFound names an unreadable file.
Result<std::string> file_sha256(const std::filesystem::path& path);

}  // namespace mohge
