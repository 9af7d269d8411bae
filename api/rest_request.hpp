// Parsing what a REST request's URL says, apart from the server: the path's segments, ids in
// them, and the query's parameters. Pure functions of the raw text (fuzzed in tests/fuzz):
// malformed input is an Error, never an exception.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/result.hpp"

namespace mohge {

/// A raw path split into percent-decoded segments ("/api/v1/jobs/3" → api, v1, jobs, 3).
/// kNotFound for a malformed encoding, or a segment that could leave its place once decoded
/// ("..", ".", or one holding '/', '\' or NUL).
Result<std::vector<std::string>> rest_path_segments(const std::string& raw_path);

/// An id from a path segment: 1 to 18 digits, positive (no signs, spaces, dots or slashes);
/// kNotFound otherwise, naming `what`.
Result<int64_t> rest_parse_id(const std::string& segment, const char* what);

/// The parameters of a raw query string, percent-decoded.
struct RestQuery {
  std::map<std::string, std::string> params;

  /// The parameter as an integer in [lo, hi]; `fallback` when absent or empty; kInvalidArgument
  /// naming the parameter otherwise.
  Result<int64_t> integer(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const;
  /// The parameter's text, when present and not empty.
  std::optional<std::string> text(const std::string& name) const;
};

/// kInvalidArgument for a malformed encoding.
Result<RestQuery> rest_parse_query(const std::string& raw_query);

}  // namespace mohge
