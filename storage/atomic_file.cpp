#include "storage/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

namespace mohge {

namespace fs = std::filesystem;

Status atomic_write_file(const fs::path& path, const std::function<void(std::ostream&)>& write) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
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
  // Durable before it becomes visible under its final name.
  if (int fd = ::open(tmp.c_str(), O_RDONLY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return Error{ErrorCode::kInternal,
                 "cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message(),
                 ""};
  }
  return {};
}

}  // namespace mohge
