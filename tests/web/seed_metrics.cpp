// Test helper for the dashboard's long-job check: adds to a coordinator's database (while the
// coordinator is stopped) one finished job owned by user 1 with `steps` steps of every metric
// the trainer reports for a 2-rank, 8-group MoHGE job, and its last routing record.
//   seed_metrics DB STEPS   → prints the job id
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/repository.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: seed_metrics DB STEPS\n");
    return 2;
  }
  using nlohmann::json;
  using namespace mohge::db;
  const int64_t steps = std::stoll(argv[2]);
  auto repo = Repository::open(argv[1]);
  if (!repo.ok()) {
    std::fprintf(stderr, "%s\n", repo.error().to_string().c_str());
    return 1;
  }
  Repository& r = *repo.value();
  JobRow job;
  job.user_id = 1;
  job.name = "long-job";
  job.spec = {{"name", "long-job"}, {"train", {{"steps", steps}}}};
  job.state = "SUCCEEDED";
  job.reason = "seeded for the dashboard's long-job check";
  job.workers = 2;
  job.steps = steps;
  job.step = steps;
  job.submitted_at = 1.0;
  job.finished_at = 2.0;
  auto inserted = r.insert_job(job, "seeded", 1.0);
  if (!inserted.ok()) {
    std::fprintf(stderr, "%s\n", inserted.error().to_string().c_str());
    return 1;
  }
  const int64_t id = inserted.value().id;
  std::vector<MetricRow> rows;
  for (int64_t s = 1; s <= steps; ++s) {
    const double t = static_cast<double>(s) / static_cast<double>(steps);
    const double loss = 2.0 + 6.0 * std::exp(-5.0 * t) + 0.05 * std::sin(0.37 * s);
    for (const auto& [name, v] : std::vector<std::pair<std::string, double>>{
             {"loss", loss},
             {"aux_group", 2e-4},
             {"aux_expert", 4e-2},
             {"lr", 1e-3},
             {"grad_norm", 0.5},
             {"tokens_per_s", 3000.0 + 100.0 * std::sin(0.1 * s)},
             {"step_ms", 1400.0},
             {"activated_expert_params", 6e6},
             {"imbalance", 1.0 + 0.1 * std::exp(-8.0 * t)},
             {"imbalance_group_per_rank", 1.45 + 0.05 * std::sin(0.01 * s)}}) {
      rows.push_back({id, name, s, v});
    }
    for (int g = 0; g < 8; ++g) rows.push_back({id, "group_share." + std::to_string(g), s, 0.125});
    for (int k = 0; k < 2; ++k) rows.push_back({id, "flops." + std::to_string(k), s, 5e9});
    if (s % 100 == 0) rows.push_back({id, "val_loss", s, loss + 0.1});
    if (rows.size() > 100000) {
      if (auto st = r.insert_metrics(rows); !st.ok()) return 1;
      rows.clear();
    }
  }
  if (auto st = r.insert_metrics(rows); !st.ok()) return 1;
  json ranks = json::array();
  for (int k = 0; k < 2; ++k)
    ranks.push_back({{"rank", k}, {"flops", 5e9}, {"tokens", {100, 90, 80, 70, 60, 50, 40, 30}}});
  json layer = {
      {"layer", 0},
      {"imbalance", 1.01},
      {"imbalance_group_per_rank", 1.45},
      {"group_share", json::array({0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125})},
      {"ranks", ranks}};
  (void)r.set_routing(
      id, steps,
      {{"step", steps}, {"layers", json::array({layer})}, {"activated_expert_params", 6e6}});
  std::printf("%lld\n", static_cast<long long>(id));
  return 0;
}
