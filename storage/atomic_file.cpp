#include "storage/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace mohge {

namespace fs = std::filesystem;

Status atomic_write_file(const fs::path& path, const std::function<void(std::ostream&)>& write) {
  // Unique per call, so that two writers of the same file in one process (two first
  // downloads of a checkpoint) never share a temporary file.
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp =
      path.string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  std::error_code ec;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return Error{ErrorCode::kInvalidArgument, "cannot write " + tmp.string(), ""};
    write(out);
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      return Error{ErrorCode::kInternal, "write failed: " + tmp.string(), ""};
    }
  }
  // Durable before it becomes visible under its final name: a failed fsync (NFS reports
  // ENOSPC and EIO there, not at write) fails the write.
  if (Status st = sync_path(tmp, false); !st.ok()) {
    fs::remove(tmp, ec);
    return st;
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return Error{ErrorCode::kInternal,
                 "cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message(),
                 ""};
  }
  // The rename itself is durable only once its folder is synced.
  return sync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path(), true);
}

Status sync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) {
    return Error{ErrorCode::kInternal,
                 "cannot open " + path.string() + " to sync it: " + std::strerror(errno), ""};
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    return Error{ErrorCode::kInternal,
                 "fsync of " + path.string() + " failed: " + std::strerror(err), ""};
  }
  return {};
}

}  // namespace mohge
