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

/// The per-job figures (null where the job has no data for one).
struct JobFigures {
  std::optional<double> val_loss, tokens_per_s, imbalance, activated_expert, activated;
};

std::optional<double> window_mean(const ExperimentJobData& j, size_t k) {
  if (k >= j.windowed.size() || j.windowed[k].count == 0) return std::nullopt;
  return j.windowed[k].sum / static_cast<double>(j.windowed[k].count);
}

JobFigures figures(const ExperimentJobData& j) {
  JobFigures f;
  f.val_loss = j.val_loss;
  f.tokens_per_s = window_mean(j, 0);
  f.imbalance = window_mean(j, 1);
  f.activated_expert = window_mean(j, 2);
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
  for (const auto& [name, value] : j.difficulty) {
    if (!name.starts_with(kDifficulty)) continue;
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
    if (*end != '\0' || bucket < 0 || bucket >= kDifficultyBuckets || group < 0 ||
        group >= j.groups)
      continue;
    out[kind][static_cast<int>(bucket)][static_cast<int>(group)] = value;
  }
  return out;
}

}  // namespace

int64_t experiment_window_start(const std::string& metric, int64_t steps) {
  return metric == "activated_expert_params" ? steps * 9 / 10 : steps / 10;
}

const std::vector<std::string>& experiment_windowed_metrics() {
  static const std::vector<std::string> names = {"tokens_per_s", "imbalance",
                                                 "activated_expert_params"};
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
      for (const db::MetricPoint& p : j->val_curve)
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
        // Rows for buckets 0..last and columns for groups 0..last: a bucket or group some job
        // did not report is zeros, so every row stays under its bucket's label.
        int num_groups = 0;
        for (const auto& [b, shares] : buckets)
          num_groups = std::max(num_groups, shares.rbegin()->first + 1);
        json rows = json::array();
        for (int b = 0; b <= buckets.rbegin()->first; ++b) {
          json r = json::array();
          const auto it = buckets.find(b);
          for (int grp = 0; grp < num_groups; ++grp) {
            const bool has = it != buckets.end() && it->second.contains(grp);
            r.push_back(has ? it->second.at(grp) / diff_n : 0.0);
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
