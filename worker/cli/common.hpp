// Helpers shared by the subcommands.
#pragma once

#include <memory>
#include <string>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "kernels/backend.hpp"

namespace mohge::cli {

/// The backend for a spec's resources.device; errors name the field when unavailable.
Result<std::unique_ptr<Backend>> make_backend(const JobSpec& spec, int threads);

}  // namespace mohge::cli
