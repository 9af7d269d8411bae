#include "worker/cli/common.hpp"

#include <cstdio>

#include "worker/cli/commands.hpp"
#include "worker/train/trainer.hpp"

namespace mohge::cli {

int report(const Error& error) {
  std::fprintf(stderr, "error: %s\n", error.to_string().c_str());
  return error.code == ErrorCode::kInvalidArgument || error.code == ErrorCode::kNotFound ||
                 error.code == ErrorCode::kAlreadyExists
             ? 2
             : 1;
}

Result<std::unique_ptr<Backend>> make_backend(const JobSpec& spec, int threads) {
  return make_job_backend(spec, threads);
}

}  // namespace mohge::cli
