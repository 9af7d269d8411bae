// The experiment request (DESIGN.md §16, api/openapi.yaml): a base job spec, optional named
// variants (each a set of spec-path → value overrides) and a grid (spec path → list of values).
// Expanding it gives one job spec per point: every variant crossed with every grid combination.
// parse_experiment() validates the request and every expanded spec before anything is created;
// a bad point is named by its coordinates ("variant \"moe\", train.seed=2: model.ffn.…").
//
// The seed axis: a grid axis whose path is `train.seed`. Points that differ only in it belong to
// the same *variant group* (one row of the comparison table, averaged over seeds).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/job_spec.hpp"
#include "api/result.hpp"

namespace mohge {

inline constexpr const char* kSeedPath = "train.seed";

struct ExperimentVariant {
  std::string name;    // [a-z0-9_.-]{1,64}; "base" when the request names none
  nlohmann::json set;  // {"model.ffn.alpha_group": 0, …} (spec path → value)
};

struct ExperimentAxis {
  std::string path;                    // dotted spec path ("train.seed")
  std::vector<nlohmann::json> values;  // 1..kMaxAxisValues
};

/// One job of the experiment.
struct ExperimentPoint {
  int index = 0;          // 0-based, in expansion order (variant-major, then axes in order)
  std::string variant;    // the variant's name
  nlohmann::json coords;  // {"train.seed": 2, …}: the grid values of this point
  std::string group;      // the variant group: variant name plus the non-seed coordinates
  JobSpec spec;           // validated; spec.name = "<experiment>/<group>[/seed=<s>]"
};

struct ExperimentPlan {
  std::string name;
  int max_parallel = 0;  // jobs of the experiment placed at once; 0 = no limit
  std::vector<ExperimentVariant> variants;
  std::vector<ExperimentAxis> grid;  // sorted by path
  std::vector<ExperimentPoint> points;
  /// The request with defaults filled in (stored, and compared for idempotent re-submits).
  nlohmann::json request;
};

inline constexpr int kMaxVariants = 64;
inline constexpr int kMaxAxes = 8;
inline constexpr int kMaxAxisValues = 100;
inline constexpr int kMaxPoints = 256;

/// Parses, expands and validates an experiment request. Errors name the field ("grid",
/// "variants[1].set", or a spec field prefixed with the point's coordinates in the message).
Result<ExperimentPlan> parse_experiment(const nlohmann::json& request);

/// Sets the value at a dotted path of `doc`, creating missing objects on the way; fails when a
/// step of the path is not an object. (Exposed for tests.)
Status json_set_path(nlohmann::json& doc, const std::string& path, const nlohmann::json& value);

}  // namespace mohge
