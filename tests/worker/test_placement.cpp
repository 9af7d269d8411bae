// Expert placement: ownership of every placement, equal expert parameters per rank for
// all-size (the paper's allocation), the errors that name the fields, and the imbalance maths.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <set>
#include <tuple>

#include "tests/worker/tiny_spec.hpp"
#include "worker/dist/placement.hpp"

namespace mohge {
namespace {

ModelSpec brown_like() {
  nlohmann::json j = testing::tiny_spec_json("mohge");
  j["model"]["d_model"] = 256;
  j["model"]["heads"] = 8;
  j["model"]["layers"] = 4;
  j["model"]["ffn"]["groups"] = 8;
  j["model"]["ffn"]["experts_per_group"] = 4;
  j["model"]["ffn"]["widths"] = {128, 160, 192, 256, 320, 384, 416, 448};
  j["model"]["ffn"]["top_groups"] = 3;
  j["model"]["ffn"]["top_experts"] = 6;
  return parse_job_spec(j).value().model;
}

TEST(Placement, AllSizeGivesEveryRankOneExpertOfEachGroupAndEqualParameters) {
  const ModelSpec m = brown_like();  // G = 8, n = 4
  for (int R : {1, 2, 4}) {
    const ExpertPlacement p = placement_plan(m, "all-size", R).value();
    ASSERT_EQ(p.experts.size(), static_cast<size_t>(R));
    for (int r = 0; r < R; ++r) {
      std::set<int> groups;
      for (int e : p.experts[static_cast<size_t>(r)]) {
        groups.insert(e / 4);
        EXPECT_EQ(p.owner[static_cast<size_t>(e)], r);
        // Rank r owns experts i in [r·n/R, (r+1)·n/R) of every group.
        EXPECT_EQ((e % 4) / (4 / R), r);
      }
      EXPECT_EQ(groups.size(), 8u) << "rank " << r << " must hold every group";
      EXPECT_EQ(p.expert_params[static_cast<size_t>(r)], p.expert_params[0]);
    }
    int64_t total = 0;
    for (int64_t v : p.expert_params) total += v;
    EXPECT_EQ(total, int64_t{3} * 256 * 4 * 4 * (128 + 160 + 192 + 256 + 320 + 384 + 416 + 448));
  }
}

ModelSpec grouped(int groups, int n) {
  nlohmann::json j = testing::tiny_spec_json("mohge");
  std::vector<int> widths;
  for (int g = 0; g < groups; ++g) widths.push_back(8 + 4 * g);
  j["model"]["ffn"]["groups"] = groups;
  j["model"]["ffn"]["experts_per_group"] = n;
  j["model"]["ffn"]["widths"] = widths;
  j["model"]["ffn"]["top_groups"] = std::min(2, groups);
  j["model"]["ffn"]["top_experts"] = std::min(2, groups * n);
  return parse_job_spec(j).value().model;
}

std::vector<double> random_loads(size_t n, uint64_t seed, double skew) {
  std::vector<double> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (double& v : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = 1.0 + skew * static_cast<double>(x % 1000) / 1000.0;
  }
  return out;
}

// Every assignment of n/R experts of each group to each rank: the smallest largest rank load.
double brute_force_best(int groups, int n, int R, const std::vector<double>& load) {
  std::vector<int> owner(load.size(), 0);
  double best = INFINITY;
  std::function<void(size_t)> go = [&](size_t e) {
    if (e == load.size()) {
      std::vector<double> r(static_cast<size_t>(R), 0.0);
      for (size_t i = 0; i < load.size(); ++i) r[static_cast<size_t>(owner[i])] += load[i];
      best = std::min(best, *std::max_element(r.begin(), r.end()));
      return;
    }
    const size_t g0 = e / static_cast<size_t>(n) * static_cast<size_t>(n);
    for (int r = 0; r < R; ++r) {
      int used = 0;
      for (size_t i = g0; i < e; ++i) used += owner[i] == r;
      if (used == n / R) continue;
      owner[e] = r;
      go(e + 1);
    }
  };
  go(0);
  (void)groups;
  return best;
}

double max_rank_load(const ExpertPlacement& p, const std::vector<double>& load) {
  std::vector<double> r(static_cast<size_t>(p.world), 0.0);
  for (size_t e = 0; e < load.size(); ++e) r[static_cast<size_t>(p.owner[e])] += load[e];
  return *std::max_element(r.begin(), r.end());
}

void expect_all_size(const ExpertPlacement& p, int groups, int n) {
  for (int r = 0; r < p.world; ++r) {
    std::vector<int> per_group(static_cast<size_t>(groups), 0);
    for (int e : p.experts[static_cast<size_t>(r)]) ++per_group[static_cast<size_t>(e / n)];
    for (int g = 0; g < groups; ++g)
      EXPECT_EQ(per_group[static_cast<size_t>(g)], n / p.world) << "rank " << r << " group " << g;
    EXPECT_EQ(p.expert_params[static_cast<size_t>(r)], p.expert_params[0]);
  }
}

// A case whose optimum is known: the busy expert of each group on different ranks.
TEST(AdaptivePlacement, SplitsTheBusyExpertsOfTwoGroupsOverTwoRanks) {
  const ModelSpec m = grouped(2, 2);
  const std::vector<double> load = {10, 0, 10, 0};
  const ExpertPlacement fixed = placement_plan(m, "all-size", 2).value();
  EXPECT_DOUBLE_EQ(placement_load_imbalance(fixed, load), 2.0);  // both busy ones on rank 0
  const ExpertPlacement p = placement_adaptive_layer(m, 2, load).value();
  EXPECT_EQ(p.kind, "all-size-adaptive");
  EXPECT_DOUBLE_EQ(placement_load_imbalance(p, load), 1.0);
  EXPECT_NE(p.owner[0], p.owner[2]);
  expect_all_size(p, 2, 2);
}

// Where the choices are few the planner is exact: equal to trying every assignment.
TEST(AdaptivePlacement, MatchesExhaustiveSearchOnSmallCases) {
  for (const auto& [groups, n, R] : std::vector<std::tuple<int, int, int>>{
           {3, 4, 2}, {4, 4, 2}, {2, 4, 4}, {3, 2, 2}, {3, 6, 3}}) {
    const ModelSpec m = grouped(groups, n);
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      const std::vector<double> load = random_loads(static_cast<size_t>(groups * n), seed, 3.0);
      const ExpertPlacement p = placement_adaptive_layer(m, R, load).value();
      expect_all_size(p, groups, n);
      EXPECT_NEAR(max_rank_load(p, load), brute_force_best(groups, n, R, load), 1e-9)
          << groups << "x" << n << " on " << R << " ranks, seed " << seed;
    }
  }
}

// At Brown's size (8 groups × 4, 4 ranks: too many choices to try all) it keeps All-size,
// never does worse than static All-size, gives the same answer for the same loads, and
// comes close to the lower bound max(mean rank load, heaviest expert).
TEST(AdaptivePlacement, LargeCasesNeverLoseToStaticAndAreDeterministic) {
  const ModelSpec m = brown_like();
  for (int R : {2, 4}) {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      std::vector<double> load = random_loads(32, seed, seed % 2 ? 0.5 : 4.0);
      for (size_t e = 0; e < load.size(); ++e)
        load[e] *= m.ffn.expert_hidden_width(static_cast<int>(e));
      const ExpertPlacement fixed = placement_plan(m, "all-size", R).value();
      const ExpertPlacement p = placement_adaptive_layer(m, R, load).value();
      expect_all_size(p, 8, 4);
      EXPECT_LE(max_rank_load(p, load), max_rank_load(fixed, load));
      EXPECT_EQ(placement_adaptive_layer(m, R, load).value().owner, p.owner);
      double sum = 0, top = 0;
      for (double l : load) {
        sum += l;
        top = std::max(top, l);
      }
      const double bound = std::max(sum / R, top);
      EXPECT_LE(max_rank_load(p, load), 1.03 * bound) << R << " ranks, seed " << seed;
    }
  }
}

// Renaming ranks changes no load, so a re-plan keeps experts where they are when it can: a
// plan whose ranks were renamed is given back unchanged, with nothing to move.
TEST(AdaptivePlacement, KeepsExpertsOnTheirRanksWhenRenamingRanksCanDoIt) {
  const ModelSpec m = brown_like();
  for (int R : {2, 4}) {
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      std::vector<double> load = random_loads(32, seed, 2.0);
      const ExpertPlacement plan = placement_adaptive_layer(m, R, load).value();
      ExpertPlacement renamed = plan;
      for (int& o : renamed.owner) o = (o + 1) % R;
      placement_index(m, renamed);
      const ExpertPlacement again = placement_adaptive_layer(m, R, load, &renamed).value();
      EXPECT_EQ(again.owner, renamed.owner) << R << " ranks, seed " << seed;
      EXPECT_DOUBLE_EQ(max_rank_load(again, load), max_rank_load(plan, load));
    }
  }
}

TEST(AdaptivePlacement, RefusesLoadsItCannotUse) {
  const ModelSpec m = grouped(2, 2);
  EXPECT_EQ(placement_adaptive_layer(m, 2, {1, 2, 3}).error().field, "placement");
  EXPECT_FALSE(placement_adaptive_layer(m, 2, {1, -2, 3, 4}).ok());
  EXPECT_FALSE(placement_adaptive_layer(m, 2, {1, NAN, 3, 4}).ok());
  EXPECT_EQ(placement_adaptive_layer(m, 3, {1, 2, 3, 4}).error().field,
            "model.ffn.experts_per_group");
}

TEST(Placement, GroupPerRankAndContiguousPutWholeGroupsTogether) {
  const ModelSpec m = brown_like();
  const ExpertPlacement g = placement_plan(m, "group-per-rank", 4).value();
  EXPECT_EQ(g.experts[0], (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));  // groups 0 and 1
  EXPECT_EQ(g.experts[3], (std::vector<int>{24, 25, 26, 27, 28, 29, 30, 31}));
  EXPECT_GT(g.expert_params[3], 2 * g.expert_params[0]);  // the wide groups on one rank
  const ExpertPlacement c = placement_plan(m, "contiguous", 2).value();
  EXPECT_EQ(c.experts[1].front(), 16);
  EXPECT_EQ(c.experts[1].back(), 31);
}

TEST(Placement, ErrorsNameTheFields) {
  const ModelSpec m = brown_like();
  Result<ExpertPlacement> p = placement_plan(m, "all-size", 3);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().field, "model.ffn.experts_per_group");
  EXPECT_NE(p.error().message.find("divisible by resources.workers (3)"), std::string::npos);
  p = placement_plan(m, "group-per-rank", 3);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().field, "model.ffn.groups");
  p = placement_plan(m, "round-robin", 2);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().field, "placement");
}

TEST(Placement, UniformMoeSplitsExpertsInBlocks) {
  const ModelSpec m = testing::tiny_spec("moe").model;  // 4 experts
  const ExpertPlacement p = placement_plan(m, "all-size", 2).value();
  EXPECT_EQ(p.experts[0], (std::vector<int>{0, 1}));
  EXPECT_EQ(p.experts[1], (std::vector<int>{2, 3}));
  EXPECT_FALSE(placement_plan(m, "all-size", 3).ok());
}

TEST(Placement, ImbalanceOfTheSameRoutingUnderTwoPlacements) {
  const ModelSpec m = brown_like();
  // Every expert of every group gets the same load: all-size is perfectly balanced, while
  // group-per-rank puts the widest groups' FLOPs on one rank.
  const std::vector<double> uniform(32, 10.0);
  const auto all = placement_rank_flops(placement_plan(m, "all-size", 4).value(), m, uniform);
  const auto naive =
      placement_rank_flops(placement_plan(m, "group-per-rank", 4).value(), m, uniform);
  EXPECT_DOUBLE_EQ(load_imbalance(all), 1.0);
  // Ranks hold groups {0,1}, {2,3}, {4,5}, {6,7}: widths 288, 448, 704, 864 of 2304 in total.
  EXPECT_NEAR(load_imbalance(naive), 864.0 / (2304.0 / 4), 1e-12);
  EXPECT_DOUBLE_EQ(all[0], 10.0 * 6.0 * 256 * 2304);  // one expert of each group
  EXPECT_DOUBLE_EQ(load_imbalance({0.0, 0.0}), 1.0);
}

}  // namespace
}  // namespace mohge
