// The metric rows the coordinator stores for one metrics.jsonl record (DESIGN §7), and safe
// readers of the numbers inside records and routing JSON. Pure functions: nothing they read
// can make them throw, whatever its shape.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/repository.hpp"

namespace mohge::coord {

/// The metric rows of one record (DESIGN §7): its top-level numbers, and the averages over
/// its layers. Values of an unexpected shape are skipped, never thrown on.
std::vector<db::MetricRow> metric_rows_from_record(int64_t job, const nlohmann::json& record);

/// obj[key] when obj is an object and that is a number; 0 otherwise.
double number_at(const nlohmann::json& obj, const char* key);
/// obj[key] when obj is an object and that is an array; an empty array otherwise.
const nlohmann::json& array_at(const nlohmann::json& obj, const char* key);
/// v when it is a number; 0 otherwise.
double number_or_zero(const nlohmann::json& v);

}  // namespace mohge::coord
