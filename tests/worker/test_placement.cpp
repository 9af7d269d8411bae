// Expert placement: ownership of every placement, equal expert parameters per rank for
// all-size (the paper's allocation), the errors that name the fields, and the imbalance maths.
#include <gtest/gtest.h>

#include <set>

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
