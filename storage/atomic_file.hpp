// Writing a file so that readers see either the old file or the complete new one.
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>

#include "api/result.hpp"

namespace mohge {

/// Calls `write` on a temporary file next to `path`, flushes and fsyncs it, then renames it
/// over `path`. On failure the temporary file is removed and `path` is untouched; the error
/// names the file.
Status atomic_write_file(const std::filesystem::path& path,
                         const std::function<void(std::ostream&)>& write);

/// fsync of a file (directory = false) or of a folder, so that what was written, or renamed
/// into it, survives a crash. Errors name the path and errno.
Status sync_path(const std::filesystem::path& path, bool directory);

}  // namespace mohge
