#include "kernels/check.hpp"

namespace mohge {

void check_fail(const char* file, int line, const char* cond, const std::string& msg) {
  std::ostringstream os;
  os << file << ":" << line << ": check failed: " << cond;
  if (!msg.empty()) os << " (" << msg << ")";
  throw CheckError(os.str());
}

}  // namespace mohge
