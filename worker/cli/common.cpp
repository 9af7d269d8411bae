#include "worker/cli/common.hpp"

#include <cstdio>

#include "worker/cli/commands.hpp"

namespace mohge::cli {

int report(const Error& error) {
  std::fprintf(stderr, "error: %s\n", error.to_string().c_str());
  return error.code == ErrorCode::kInvalidArgument || error.code == ErrorCode::kNotFound ||
                 error.code == ErrorCode::kAlreadyExists
             ? 2
             : 1;
}

Result<std::unique_ptr<Backend>> make_backend(const JobSpec& spec, int threads) {
  if (spec.resources.device == "cuda") {
    std::string why;
    if (!cuda_backend_available(&why)) {
      return invalid_argument("resources.device",
                              "\"cuda\" is not available here: " + why + "; use \"cpu\"");
    }
  }
  return make_cpu_backend(threads);
}

}  // namespace mohge::cli
