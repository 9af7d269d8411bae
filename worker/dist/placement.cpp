#include "worker/dist/placement.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mohge {

Result<ExpertPlacement> placement_plan(const ModelSpec& model, const std::string& kind, int world) {
  const FfnSpec& f = model.ffn;
  if (world < 1) return invalid_argument("resources.workers", "must be at least 1");
  ExpertPlacement p;
  p.kind = kind;
  p.world = world;
  const int E = f.num_experts();
  p.owner.assign(static_cast<size_t>(E), 0);
  p.experts.assign(static_cast<size_t>(world), {});
  const std::string R = std::to_string(world);
  if (kind != "all-size" && kind != "group-per-rank" && kind != "contiguous" &&
      kind != "all-size-adaptive") {
    return invalid_argument("placement",
                            "must be one of \"all-size\", \"all-size-adaptive\", "
                            "\"group-per-rank\", \"contiguous\", got \"" +
                                kind + "\"");
  }
  if (f.kind == "mohge" && (kind == "all-size" || kind == "all-size-adaptive")) {
    const int n = f.experts_per_group;
    if (n % world != 0) {
      return invalid_argument("model.ffn.experts_per_group",
                              "must be divisible by resources.workers (" + R +
                                  ") for all-size placement, got " + std::to_string(n));
    }
    for (int e = 0; e < E; ++e) p.owner[static_cast<size_t>(e)] = (e % n) / (n / world);
  } else if (f.kind == "mohge" && kind == "group-per-rank") {
    if (f.groups % world != 0) {
      return invalid_argument("model.ffn.groups", "must be divisible by resources.workers (" + R +
                                                      ") for group-per-rank placement, got " +
                                                      std::to_string(f.groups));
    }
    for (int e = 0; e < E; ++e)
      p.owner[static_cast<size_t>(e)] = (e / f.experts_per_group) / (f.groups / world);
  } else if (E > 0) {  // contiguous, and every placement of a uniform MoE
    if (E % world != 0) {
      return invalid_argument(f.kind == "moe" ? "model.ffn.experts" : "model.ffn.experts_per_group",
                              "the " + std::to_string(E) +
                                  " routed experts must split evenly over "
                                  "resources.workers (" +
                                  R + ")");
    }
    for (int e = 0; e < E; ++e) p.owner[static_cast<size_t>(e)] = e / (E / world);
  }
  placement_index(model, p);
  return p;
}

void placement_index(const ModelSpec& model, ExpertPlacement& p) {
  p.experts.assign(static_cast<size_t>(p.world), {});
  p.expert_params.assign(static_cast<size_t>(p.world), 0);
  for (size_t e = 0; e < p.owner.size(); ++e) {
    const int r = p.owner[e];
    p.experts[static_cast<size_t>(r)].push_back(static_cast<int>(e));
    p.expert_params[static_cast<size_t>(r)] += int64_t{3} * model.d_model *
                                               model.ffn.expert_hidden_width(static_cast<int>(e)) *
                                               model.layers;
  }
}

namespace {

// The planner's search over per-group assignments. Loads are per expert; a group's n experts
// go n/R to each rank.
class AdaptivePlanner {
 public:
  AdaptivePlanner(int groups, int n, int world, const std::vector<double>& load)
      : G_(groups), n_(n), R_(world), c_(n / world), load_(load) {}

  // Owner (E) minimising the largest rank load.
  std::vector<int> solve() {
    std::vector<int> owner = greedy();
    improve(owner);
    best_max_ = max_load(owner);
    best_ = owner;
    // No placement beats max(mean rank load, heaviest expert): stop there.
    double sum = 0.0;
    for (double l : load_) {
      sum += l;
      bound_ = std::max(bound_, l);
    }
    bound_ = std::max(bound_, sum / R_);
    if (best_max_ > bound_ * (1 + 1e-12) && search_space() <= 1e6) {  // few: prove it optimal
      std::vector<double> rank_load(static_cast<size_t>(R_), 0.0);
      std::vector<int> cur(load_.size(), -1);
      used_.assign(static_cast<size_t>(G_ * R_), 0);
      exact(0, rank_load, cur);
    }
    return best_;
  }

  double max_load(const std::vector<int>& owner) const {
    std::vector<double> r(static_cast<size_t>(R_), 0.0);
    for (size_t e = 0; e < owner.size(); ++e) r[static_cast<size_t>(owner[e])] += load_[e];
    return *std::max_element(r.begin(), r.end());
  }

 private:
  double search_space() const {
    // Assignments of one group: n! / (c!)^R; all groups: that to the power G.
    double per_group = 1.0;
    for (int i = 2; i <= n_; ++i) per_group *= i;
    for (int r = 0; r < R_; ++r)
      for (int i = 2; i <= c_; ++i) per_group /= i;
    return std::pow(per_group, G_);
  }

  // Groups by decreasing spread of their loads; in each, experts by decreasing load go to the
  // least loaded rank with room left in that group (ties: lower expert id, lower rank).
  std::vector<int> greedy() const {
    std::vector<int> order(static_cast<size_t>(G_));
    std::iota(order.begin(), order.end(), 0);
    auto spread = [&](int g) {
      const auto b = load_.begin() + static_cast<std::ptrdiff_t>(g) * n_;
      const auto [lo, hi] = std::minmax_element(b, b + n_);
      return *hi - *lo;
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return spread(a) > spread(b); });
    std::vector<int> owner(load_.size(), 0);
    std::vector<double> rank_load(static_cast<size_t>(R_), 0.0);
    for (int g : order) {
      std::vector<int> ex(static_cast<size_t>(n_));
      std::iota(ex.begin(), ex.end(), g * n_);
      std::stable_sort(ex.begin(), ex.end(), [&](int a, int b) {
        return load_[static_cast<size_t>(a)] > load_[static_cast<size_t>(b)];
      });
      std::vector<int> room(static_cast<size_t>(R_), c_);
      for (int e : ex) {
        int pick = -1;
        for (int r = 0; r < R_; ++r) {
          if (room[static_cast<size_t>(r)] == 0) continue;
          if (pick < 0 || rank_load[static_cast<size_t>(r)] < rank_load[static_cast<size_t>(pick)])
            pick = r;
        }
        owner[static_cast<size_t>(e)] = pick;
        --room[static_cast<size_t>(pick)];
        rank_load[static_cast<size_t>(pick)] += load_[static_cast<size_t>(e)];
      }
    }
    return owner;
  }

  // Swaps of two experts of one group between the most loaded rank and another, while one
  // lowers the most loaded rank's load without raising the other's above it.
  void improve(std::vector<int>& owner) const {
    std::vector<double> r(static_cast<size_t>(R_), 0.0);
    for (size_t e = 0; e < owner.size(); ++e) r[static_cast<size_t>(owner[e])] += load_[e];
    for (int iter = 0; iter < 64 * static_cast<int>(owner.size()); ++iter) {
      const int top = static_cast<int>(std::max_element(r.begin(), r.end()) - r.begin());
      const double top_load = r[static_cast<size_t>(top)];
      double best_after = top_load;
      int best_a = -1, best_b = -1;
      for (size_t a = 0; a < owner.size(); ++a) {
        if (owner[a] != top) continue;
        const size_t g = a / static_cast<size_t>(n_);
        for (size_t b = g * static_cast<size_t>(n_); b < (g + 1) * static_cast<size_t>(n_); ++b) {
          const int other = owner[b];
          if (other == top) continue;
          const double d = load_[a] - load_[b];
          if (d <= 0) continue;
          const double after = std::max(top_load - d, r[static_cast<size_t>(other)] + d);
          if (after < best_after - 1e-12 * std::max(1.0, top_load)) {
            best_after = after;
            best_a = static_cast<int>(a);
            best_b = static_cast<int>(b);
          }
        }
      }
      if (best_a < 0) return;
      const int other = owner[static_cast<size_t>(best_b)];
      const double d = load_[static_cast<size_t>(best_a)] - load_[static_cast<size_t>(best_b)];
      r[static_cast<size_t>(top)] -= d;
      r[static_cast<size_t>(other)] += d;
      std::swap(owner[static_cast<size_t>(best_a)], owner[static_cast<size_t>(best_b)]);
    }
  }

  // Depth-first over experts in id order (group by group), each to a rank with room left in
  // its group; a branch whose largest rank load already reaches the best is cut.
  void exact(size_t e, std::vector<double>& rank_load, std::vector<int>& cur) {
    if (best_max_ <= bound_ * (1 + 1e-12)) return;  // optimal already
    if (e == load_.size()) {
      const double m = *std::max_element(rank_load.begin(), rank_load.end());
      if (m < best_max_ - 1e-12 * std::max(1.0, best_max_)) {
        best_max_ = m;
        best_ = cur;
      }
      return;
    }
    const size_t g = e / static_cast<size_t>(n_);
    for (int r = 0; r < R_; ++r) {
      int& used = used_[g * static_cast<size_t>(R_) + static_cast<size_t>(r)];
      if (used == c_) continue;
      // No symmetry cut beyond the bound (the spaces searched are small).
      rank_load[static_cast<size_t>(r)] += load_[e];
      if (rank_load[static_cast<size_t>(r)] < best_max_ - 1e-12 * std::max(1.0, best_max_)) {
        cur[e] = r;
        ++used;
        exact(e + 1, rank_load, cur);
        --used;
        cur[e] = -1;
      }
      rank_load[static_cast<size_t>(r)] -= load_[e];
    }
  }

  int G_, n_, R_, c_;
  const std::vector<double>& load_;
  std::vector<int> best_;
  double best_max_ = 0.0;
  double bound_ = 0.0;
  std::vector<int> used_;  // (G, R) experts of group g on rank r in the current branch
};

}  // namespace

namespace {

// The renaming of the plan's ranks (plan rank r → rank perm[r]) that keeps the most expert
// parameters on their current rank: every permutation for up to 8 ranks, else greedily the
// pair with the most shared parameters first.
std::vector<int> keep_most(const ModelSpec& model, int world, const std::vector<int>& plan,
                           const std::vector<int>& now) {
  const size_t R = static_cast<size_t>(world);
  std::vector<std::vector<double>> shared(R, std::vector<double>(R, 0.0));
  for (size_t e = 0; e < plan.size() && e < now.size(); ++e) {
    shared[static_cast<size_t>(plan[e])][static_cast<size_t>(now[e])] +=
        model.ffn.expert_hidden_width(static_cast<int>(e));
  }
  std::vector<int> perm(R);
  std::iota(perm.begin(), perm.end(), 0);
  if (R <= 8) {
    std::vector<int> best = perm, p = perm;
    double best_kept = -1.0;
    do {
      double kept = 0.0;
      for (size_t r = 0; r < R; ++r) kept += shared[r][static_cast<size_t>(p[r])];
      if (kept > best_kept) {  // strict: the first (lexicographically smallest) best wins
        best_kept = kept;
        best = p;
      }
    } while (std::next_permutation(p.begin(), p.end()));
    return best;
  }
  std::vector<bool> used_from(R, false), used_to(R, false);
  for (size_t step = 0; step < R; ++step) {
    double top = -1.0;
    size_t bf = 0, bt = 0;
    for (size_t f = 0; f < R; ++f) {
      if (used_from[f]) continue;
      for (size_t t = 0; t < R; ++t) {
        if (!used_to[t] && shared[f][t] > top) {
          top = shared[f][t];
          bf = f;
          bt = t;
        }
      }
    }
    used_from[bf] = used_to[bt] = true;
    perm[bf] = static_cast<int>(bt);
  }
  return perm;
}

}  // namespace

Result<ExpertPlacement> placement_adaptive_layer(const ModelSpec& model, int world,
                                                 const std::vector<double>& load,
                                                 const ExpertPlacement* current) {
  Result<ExpertPlacement> fixed = placement_plan(model, "all-size", world);
  if (!fixed.ok()) return fixed.error();
  const FfnSpec& f = model.ffn;
  if (f.kind != "mohge") return fixed;  // a uniform MoE has no groups to choose within
  if (load.size() != static_cast<size_t>(f.num_experts())) {
    return invalid_argument("placement", "adaptive placement needs one load per expert (" +
                                             std::to_string(f.num_experts()) + "), got " +
                                             std::to_string(load.size()));
  }
  for (double l : load) {
    if (!std::isfinite(l) || l < 0) {
      return invalid_argument("placement", "expert loads must be finite and non-negative");
    }
  }
  AdaptivePlanner planner(f.groups, f.experts_per_group, world, load);
  std::vector<int> owner = planner.solve();
  ExpertPlacement p = std::move(fixed).value();
  p.kind = "all-size-adaptive";
  if (planner.max_load(owner) < planner.max_load(p.owner)) p.owner = std::move(owner);
  if (current != nullptr && current->owner.size() == p.owner.size()) {
    const std::vector<int> perm = keep_most(model, world, p.owner, current->owner);
    for (int& o : p.owner) o = perm[static_cast<size_t>(o)];
  }
  placement_index(model, p);
  return p;
}

void placement_average_loads(std::vector<double>& average, const std::vector<double>& counts) {
  if (average.empty()) {
    average = counts;
    return;
  }
  for (size_t e = 0; e < average.size() && e < counts.size(); ++e)
    average[e] = 0.9 * average[e] + 0.1 * counts[e];
}

Result<PlacementReplan> placement_replan(const ModelSpec& model, const ExpertPlacement& current,
                                         const std::vector<std::vector<double>>& average_counts,
                                         double min_gain) {
  PlacementReplan out;
  out.next = current;
  out.next.layers.clear();
  for (int l = 0; l < model.layers; ++l) {
    std::vector<double> flops(average_counts.at(static_cast<size_t>(l)));
    for (size_t e = 0; e < flops.size(); ++e)
      flops[e] *= 6.0 * model.d_model * model.ffn.expert_hidden_width(static_cast<int>(e));
    const ExpertPlacement& now = current.layer(l);
    Result<ExpertPlacement> plan = placement_adaptive_layer(model, current.world, flops, &now);
    if (!plan.ok()) return plan.error();
    const double imbalance_now = placement_load_imbalance(now, flops);
    const double planned = placement_load_imbalance(plan.value(), flops);
    out.before += imbalance_now;
    if (planned < imbalance_now) {
      out.after += planned;
      out.next.layers.push_back(std::move(plan).value());
    } else {
      out.after += imbalance_now;
      ExpertPlacement keep = now;
      keep.layers.clear();
      keep.kind = "all-size-adaptive";
      out.next.layers.push_back(std::move(keep));
    }
  }
  out.before /= model.layers;
  out.after /= model.layers;
  out.worth = out.after < out.before && out.before - out.after >= min_gain * out.before;
  return out;
}

double placement_load_imbalance(const ExpertPlacement& p, const std::vector<double>& load) {
  std::vector<double> r(static_cast<size_t>(p.world), 0.0);
  for (size_t e = 0; e < load.size() && e < p.owner.size(); ++e)
    r[static_cast<size_t>(p.owner[e])] += load[e];
  return load_imbalance(r);
}

std::vector<double> placement_rank_flops(const ExpertPlacement& p, const ModelSpec& model,
                                         const std::vector<double>& expert_assignments) {
  std::vector<double> flops(static_cast<size_t>(p.world), 0.0);
  for (size_t e = 0; e < expert_assignments.size() && e < p.owner.size(); ++e) {
    flops[static_cast<size_t>(p.owner[e])] += expert_assignments[e] * 6.0 * model.d_model *
                                              model.ffn.expert_hidden_width(static_cast<int>(e));
  }
  return flops;
}

double load_imbalance(const std::vector<double>& per_rank) {
  if (per_rank.empty()) return 1.0;
  const double mean = std::accumulate(per_rank.begin(), per_rank.end(), 0.0) / per_rank.size();
  if (mean <= 0.0) return 1.0;
  return *std::max_element(per_rank.begin(), per_rank.end()) / mean;
}

}  // namespace mohge
