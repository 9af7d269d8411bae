#include "api/paths.hpp"

#include <filesystem>

namespace mohge {

bool path_is_confined(const std::string& path) {
  if (path.empty() || path.size() > 1024 || path.find('\0') != std::string::npos) return false;
  const std::filesystem::path p(path);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

}  // namespace mohge
