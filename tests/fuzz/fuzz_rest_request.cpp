// The REST edge's URL parsing (api/rest_request.hpp) on any path and query a client may send:
// segments, ids and parameters, or an error; never an exception or a crash. The input is
// "PATH?QUERY".
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "api/rest_request.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t q = input.find('?');
  const std::string path = input.substr(0, q);
  const std::string query = q == std::string::npos ? "" : input.substr(q + 1);
  if (auto seg = mohge::rest_path_segments(path); seg.ok()) {
    for (const std::string& s : seg.value()) {
      if (s == ".." || s == "." || s.find('/') != std::string::npos) std::abort();  // the rule
      (void)mohge::rest_parse_id(s, "job");
    }
  }
  if (auto params = mohge::rest_parse_query(query); params.ok()) {
    for (const char* name : {"since", "limit", "offset", "max_points"})
      (void)params.value().integer(name, 0, 0, INT64_MAX);
    (void)params.value().text("names");
  }
  return 0;
}
