#include "coordinator/experiment_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "api/experiment_spec.hpp"

namespace mohge::coord {

using nlohmann::json;

namespace {

constexpr std::string_view kDifficulty = "difficulty.";

/// {"mean", "std", "n"}: null mean without values, null std with fewer than two.
json summary(const std::vector<double>& v) {
  if (v.empty()) return {{"mean", nullptr}, {"std", nullptr}, {"n", 0}};
  double mean = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(v.size());
  json std_json = nullptr;
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - mean) * (x - mean);
    std_json = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return {{"mean", mean}, {"std", std_json}, {"n", v.size()}};
}

const std::vector<db::MetricPoint>& series_of(const ExperimentJobData& j, const std::string& name) {
  static const std::vector<db::MetricPoint> none;
  const auto it = j.series.find(name);
  return it == j.series.end() ? none : it->second;
}

/// Mean of the points with step > `after`; nullopt when there are none.
std::optional<double> mean_after(const std::vector<db::MetricPoint>& s, double after) {
  double sum = 0;
  int64_t n = 0;
  for (const db::MetricPoint& p : s) {
    if (static_cast<double>(p.step) > after && std::isfinite(p.value)) {
      sum += p.value;
      ++n;
    }
  }
  if (n == 0) return std::nullopt;
  return sum / static_cast<double>(n);
}

/// The per-job figures (null where the job has no data for one).
struct JobFigures {
  std::optional<double> val_loss, tokens_per_s, imbalance, activated_expert, activated;
};

JobFigures figures(const ExperimentJobData& j) {
  JobFigures f;
  const auto& val = series_of(j, "val_loss");
  if (!val.empty() && std::isfinite(val.back().value)) f.val_loss = val.back().value;
  const double steps = static_cast<double>(std::max<int64_t>(j.steps, 1));
  f.tokens_per_s = mean_after(series_of(j, "tokens_per_s"), 0.1 * steps);
  if (!f.tokens_per_s) f.tokens_per_s = mean_after(series_of(j, "tokens_per_s"), 0);
  f.imbalance = mean_after(series_of(j, "imbalance"), 0.1 * steps);
  if (!f.imbalance) f.imbalance = mean_after(series_of(j, "imbalance"), 0);
  f.activated_expert = mean_after(series_of(j, "activated_expert_params"), 0.9 * steps);
  if (!f.activated_expert)
    f.activated_expert = mean_after(series_of(j, "activated_expert_params"), 0);
  if (f.activated_expert) {
    f.activated = static_cast<double>(j.params.total - j.params.ffn) + *f.activated_expert;
  }
  return f;
}

json optional_json(const std::optional<double>& v) {
  return v ? json(*v) : json(nullptr);
}

/// The last difficulty table of a job: kind → bucket → group → share; empty when none.
std::map<std::string, std::map<int, std::map<int, double>>> difficulty_of(
    const ExperimentJobData& j) {
  std::map<std::string, std::map<int, std::map<int, double>>> out;
  for (const auto& [name, points] : j.series) {
    if (!name.starts_with(kDifficulty) || points.empty()) continue;
    // difficulty.<kind>.<bucket>.<group>
    const std::string rest = name.substr(kDifficulty.size());
    const size_t a = rest.find('.');
    const size_t b = a == std::string::npos ? a : rest.find('.', a + 1);
    if (b == std::string::npos) continue;
    const std::string kind = rest.substr(0, a);
    if (kind != "frequency" && kind != "token_loss") continue;
    char* end = nullptr;
    const long bucket = std::strtol(rest.c_str() + a + 1, &end, 10);
    if (end != rest.c_str() + b) continue;
    const long group = std::strtol(rest.c_str() + b + 1, &end, 10);
    if (*end != '\0' || bucket < 0 || bucket > 64 || group < 0 || group > 1024) continue;
    out[kind][static_cast<int>(bucket)][static_cast<int>(group)] = points.back().value;
  }
  return out;
}

}  // namespace

const std::vector<std::string>& experiment_table_metrics() {
  static const std::vector<std::string> names = {"val_loss", "tokens_per_s", "imbalance",
                                                 "activated_expert_params", "difficulty.*"};
  return names;
}

json experiment_table(const std::vector<ExperimentJobData>& jobs) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<const ExperimentJobData*>> by_group;
  for (const ExperimentJobData& j : jobs) {
    if (!by_group.contains(j.group)) order.push_back(j.group);
    by_group[j.group].push_back(&j);
  }
  json per_job = json::array();
  json groups = json::array();
  for (const std::string& g : order) {
    const auto& members = by_group[g];
    std::vector<double> val, tps, imb, act, act_expert, total, ffn, routed;
    json ids = json::array();
    int finished = 0;
    // Validation curve: step → values over every job of the group.
    std::map<int64_t, std::vector<double>> curve;
    // Difficulty tables of the finished seeds, summed, with their count.
    std::map<std::string, std::map<int, std::map<int, double>>> diff_sum;
    int diff_n = 0;
    for (const ExperimentJobData* j : members) {
      ids.push_back(j->id);
      const JobFigures f = figures(*j);
      per_job.push_back({{"id", j->id},
                         {"group", j->group},
                         {"state", j->state},
                         {"val_loss", optional_json(f.val_loss)},
                         {"tokens_per_s", optional_json(f.tokens_per_s)},
                         {"imbalance", optional_json(f.imbalance)},
                         {"activated_params", optional_json(f.activated)},
                         {"activated_expert_params", optional_json(f.activated_expert)}});
      for (const db::MetricPoint& p : series_of(*j, "val_loss"))
        if (std::isfinite(p.value)) curve[p.step].push_back(p.value);
      if (j->state != "SUCCEEDED") continue;
      ++finished;
      total.push_back(static_cast<double>(j->params.total));
      ffn.push_back(static_cast<double>(j->params.ffn));
      routed.push_back(static_cast<double>(j->params.routed));
      if (f.val_loss) val.push_back(*f.val_loss);
      if (f.tokens_per_s) tps.push_back(*f.tokens_per_s);
      if (f.imbalance) imb.push_back(*f.imbalance);
      if (f.activated) act.push_back(*f.activated);
      if (f.activated_expert) act_expert.push_back(*f.activated_expert);
      const auto d = difficulty_of(*j);
      if (!d.empty()) {
        ++diff_n;
        for (const auto& [kind, buckets] : d)
          for (const auto& [b, shares] : buckets)
            for (const auto& [grp, v] : shares) diff_sum[kind][b][grp] += v;
      }
    }
    json curve_json = {{"steps", json::array()},
                       {"mean", json::array()},
                       {"std", json::array()},
                       {"n", json::array()}};
    for (const auto& [step, values] : curve) {
      const json s = summary(values);
      curve_json["steps"].push_back(step);
      curve_json["mean"].push_back(s["mean"]);
      curve_json["std"].push_back(s["std"]);
      curve_json["n"].push_back(s["n"]);
    }
    const ExperimentJobData& first = *members.front();
    json coords = json::object();
    for (const auto& [path, value] : first.coords.items())
      if (path != kSeedPath) coords[path] = value;
    json row = {{"group", g},
                {"variant", first.variant},
                {"coords", coords},
                {"jobs", ids},
                {"seeds", members.size()},
                {"seeds_finished", finished},
                {"val_loss", summary(val)},
                {"tokens_per_s", summary(tps)},
                {"imbalance", summary(imb)},
                {"activated_params", summary(act)},
                {"activated_expert_params", summary(act_expert)},
                {"params_total", summary(total)},
                {"params_ffn", summary(ffn)},
                {"params_routed", summary(routed)},
                {"val_curve", curve_json}};
    if (diff_n > 0) {
      json diff = json::object();
      for (const auto& [kind, buckets] : diff_sum) {
        json rows = json::array();
        for (const auto& [b, shares] : buckets) {
          json r = json::array();
          int expect = 0;
          for (const auto& [grp, v] : shares) {
            while (expect++ < grp) r.push_back(0.0);
            r.push_back(v / diff_n);
          }
          rows.push_back(r);
        }
        diff[kind] = rows;
      }
      row["difficulty"] = diff;
    }
    groups.push_back(row);
  }
  return {{"groups", groups}, {"jobs", per_job}};
}

}  // namespace mohge::coord
