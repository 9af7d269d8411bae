#include "api/rest_request.hpp"

#include <cpprest/uri.h>

#include <charconv>

namespace mohge {

Result<std::vector<std::string>> rest_path_segments(const std::string& raw_path) {
  const Error not_found{ErrorCode::kNotFound, "no such resource", ""};
  std::vector<std::string> out;
  try {
    for (const std::string& s : web::uri::split_path(raw_path)) {
      std::string d = web::uri::decode(s);
      if (d == ".." || d == "." || d.find('/') != std::string::npos ||
          d.find('\\') != std::string::npos || d.find('\0') != std::string::npos)
        return not_found;
      out.push_back(std::move(d));
    }
  } catch (const std::exception&) {  // cpprestsdk's uri_exception: a malformed escape
    return not_found;
  }
  return out;
}

Result<int64_t> rest_parse_id(const std::string& s, const char* what) {
  int64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || s.size() > 18 || ec != std::errc() || p != s.data() + s.size() || v <= 0) {
    return Error{ErrorCode::kNotFound, std::string("no ") + what + " with id \"" + s + "\"", ""};
  }
  return v;
}

Result<int64_t> RestQuery::integer(const std::string& name, int64_t fallback, int64_t lo,
                                   int64_t hi) const {
  const auto it = params.find(name);
  if (it == params.end() || it->second.empty()) return fallback;
  int64_t v = 0;
  const std::string& s = it->second;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < lo || v > hi) {
    return invalid_argument(name, "must be an integer in [" + std::to_string(lo) + ", " +
                                      std::to_string(hi) + "], got \"" + s + "\"");
  }
  return v;
}

std::optional<std::string> RestQuery::text(const std::string& name) const {
  const auto it = params.find(name);
  if (it == params.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

Result<RestQuery> rest_parse_query(const std::string& raw_query) {
  RestQuery q;
  try {
    for (const auto& [k, v] : web::uri::split_query(raw_query))
      q.params[web::uri::decode(k)] = web::uri::decode(v);
  } catch (const std::exception&) {
    return invalid_argument("query", "is not a valid percent-encoded query string");
  }
  return q;
}

}  // namespace mohge
