// The job spec validator (api/job_spec.hpp) on any JSON a user may POST: it returns a spec or
// an error naming a field; it never throws or crashes, and a valid spec survives a round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "api/job_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  const mohge::Result<mohge::JobSpec> spec = mohge::parse_job_spec(j);
  if (!spec.ok()) return 0;
  // What the coordinator stores is parsed again by the worker: it must be valid too.
  const mohge::Result<mohge::JobSpec> again =
      mohge::parse_job_spec(mohge::job_spec_to_json(spec.value()));
  if (!again.ok()) std::abort();
  return 0;
}
