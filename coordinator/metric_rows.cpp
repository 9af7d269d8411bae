#include "coordinator/metric_rows.hpp"

namespace mohge::coord {

using nlohmann::json;

double number_or_zero(const json& v) {
  return v.is_number() ? v.get<double>() : 0.0;
}

double number_at(const json& obj, const char* key) {
  if (!obj.is_object()) return 0.0;
  const auto it = obj.find(key);
  return it == obj.end() ? 0.0 : number_or_zero(*it);
}

const json& array_at(const json& obj, const char* key) {
  static const json empty = json::array();
  if (!obj.is_object()) return empty;
  const auto it = obj.find(key);
  return it != obj.end() && it->is_array() ? *it : empty;
}

std::vector<db::MetricRow> metric_rows_from_record(int64_t job, const json& record) {
  std::vector<db::MetricRow> rows;
  if (!record.is_object()) return rows;
  const auto step_it = record.find("step");
  if (step_it == record.end() || !step_it->is_number_integer()) return rows;
  const int64_t step = step_it->get<int64_t>();
  for (const auto& [k, v] : record.items()) {
    if (k == "step" || k == "workers" || !v.is_number()) continue;
    rows.push_back({job, k, step, v.get<double>()});
  }
  // Difficulty routing of an evaluation: difficulty.<frequency|token_loss>.<bucket>.<group>.
  if (const auto d = record.find("difficulty"); d != record.end() && d->is_object()) {
    for (const char* kind : {"frequency", "token_loss"}) {
      const json& rows_by_bucket = array_at(*d, kind);
      for (size_t b = 0; b < rows_by_bucket.size(); ++b) {
        if (!rows_by_bucket[b].is_array()) continue;
        for (size_t g = 0; g < rows_by_bucket[b].size(); ++g)
          rows.push_back({job,
                          std::string("difficulty.") + kind + "." + std::to_string(b) + "." +
                              std::to_string(g),
                          step, number_or_zero(rows_by_bucket[b][g])});
      }
    }
  }
  // A re-placement of an adaptive run: placement.<figure>; the rank pairs per transport kind
  // at the start of an attempt: transport_pairs.<kind>.
  for (const char* group : {"placement", "transport_pairs"}) {
    const auto p = record.find(group);
    if (p == record.end() || !p->is_object()) continue;
    for (const auto& [k, v] : p->items())
      if (v.is_number()) rows.push_back({job, std::string(group) + "." + k, step, v.get<double>()});
  }
  const json& layers = array_at(record, "layers");
  if (layers.empty()) return rows;
  double imbalance = 0, counterfactual = 0, fixed = 0;
  bool adaptive = false;
  std::vector<double> share, flops;
  for (const json& l : layers) {
    imbalance += number_at(l, "imbalance");
    counterfactual += number_at(l, "imbalance_group_per_rank");
    if (l.is_object() && l.contains("imbalance_all_size")) {
      adaptive = true;
      fixed += number_at(l, "imbalance_all_size");
    }
    const json& gs = array_at(l, "group_share");
    if (share.size() < gs.size()) share.resize(gs.size(), 0.0);
    for (size_t g = 0; g < gs.size(); ++g) share[g] += number_or_zero(gs[g]);
    const json& ranks = array_at(l, "ranks");
    if (flops.size() < ranks.size()) flops.resize(ranks.size(), 0.0);
    for (size_t r = 0; r < ranks.size(); ++r) flops[r] += number_at(ranks[r], "flops");
  }
  const double L = static_cast<double>(layers.size());
  rows.push_back({job, "imbalance", step, imbalance / L});
  rows.push_back({job, "imbalance_group_per_rank", step, counterfactual / L});
  if (adaptive) rows.push_back({job, "imbalance_all_size", step, fixed / L});
  for (size_t g = 0; g < share.size(); ++g)
    rows.push_back({job, "group_share." + std::to_string(g), step, share[g] / L});
  for (size_t r = 0; r < flops.size(); ++r)
    rows.push_back({job, "flops." + std::to_string(r), step, flops[r]});
  return rows;
}

}  // namespace mohge::coord
