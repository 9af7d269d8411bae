// The experiment request (api/experiment_spec.hpp) on any JSON a user may POST, and the
// comparison table (coordinator/experiment_table.hpp) on the jobs it expands to with series a
// worker may have reported: a plan or an error naming a field, never a throw or a crash; every
// expanded spec validates again after a round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "api/experiment_spec.hpp"
#include "coordinator/experiment_table.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  const mohge::Result<mohge::ExperimentPlan> plan = mohge::parse_experiment(j);
  if (!plan.ok()) return 0;
  std::vector<mohge::coord::ExperimentJobData> jobs;
  for (const mohge::ExperimentPoint& p : plan.value().points) {
    if (!mohge::parse_job_spec(mohge::job_spec_to_json(p.spec)).ok()) std::abort();
    mohge::coord::ExperimentJobData d;
    d.id = p.index + 1;
    d.state = p.index % 2 == 0 ? "SUCCEEDED" : "RUNNING";
    d.variant = p.variant;
    d.group = p.group;
    d.coords = p.coords;
    d.steps = p.spec.train.steps;
    d.params = mohge::model_param_counts(p.spec.model);
    d.groups = p.spec.model.ffn.groups;
    // Series from the request's own numbers and names (what a hostile worker could report).
    const double x = static_cast<double>(size) / 7.0;
    d.val_curve = {{1, x}, {d.steps, x / 2}};
    d.val_loss = x / 2;
    d.windowed = {{x * 100, 1, d.steps}, {x, p.index % 3, d.steps}};
    d.difficulty["difficulty.frequency." + p.variant + "." + p.group] = x;
    d.difficulty["difficulty.token_loss.0." + std::to_string(p.index)] = x;
    jobs.push_back(std::move(d));
  }
  (void)mohge::coord::experiment_table(jobs).dump();
  return 0;
}
