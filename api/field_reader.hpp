// FieldReader: reads the fields of one JSON object into typed values, recording every problem
// as an Error that names the field by its dotted path ("model.ffn.top_experts") and the rule.
// Used by the job spec and the control-plane messages: nothing read through it can throw on a
// wrong type, and every range is checked where the field is read.
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/result.hpp"

namespace mohge {

// Reads fields of one JSON object, recording every problem with its dotted path.
class FieldReader {
 public:
  FieldReader(const nlohmann::json& obj, std::string path, std::vector<Error>& errors)
      : obj_(obj), path_(std::move(path)), errors_(errors) {
    if (!obj_.is_object()) fail("", "must be a JSON object");
  }

  std::string field(const std::string& key) const {
    return path_.empty() ? key : key.empty() ? path_ : path_ + "." + key;
  }
  void fail(const std::string& key, std::string message) const {
    errors_.push_back(invalid_argument(field(key), std::move(message)));
  }
  bool has(const std::string& key) const {
    seen_.insert(key);
    return obj_.is_object() && obj_.contains(key);
  }
  const nlohmann::json* get(const std::string& key, bool required) const {
    if (!has(key)) {
      if (required) fail(key, "is required");
      return nullptr;
    }
    return &obj_.at(key);
  }

  template <class Int>
  void integer(const std::string& key, Int& out, bool required, int64_t min, int64_t max) const {
    const nlohmann::json* v = get(key, required);
    if (v == nullptr) return;
    if (!v->is_number_integer()) return fail(key, "must be an integer");
    const int64_t x = v->get<int64_t>();
    if (x < min || x > max) {
      return fail(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) +
                           "], got " + std::to_string(x));
    }
    out = static_cast<Int>(x);
  }
  template <class Real>
  void real(const std::string& key, Real& out, bool required, double min, double max) const {
    const nlohmann::json* v = get(key, required);
    if (v == nullptr) return;
    if (!v->is_number()) return fail(key, "must be a number");
    const double x = v->get<double>();
    if (!(x >= min && x <= max)) {
      std::ostringstream os;
      os << "must be in [" << min << ", " << max << "], got " << x;
      return fail(key, os.str());
    }
    out = static_cast<Real>(x);
  }
  void boolean(const std::string& key, bool& out) const {
    const nlohmann::json* v = get(key, false);
    if (v == nullptr) return;
    if (!v->is_boolean()) return fail(key, "must be true or false");
    out = v->get<bool>();
  }
  void string(const std::string& key, std::string& out, bool required) const {
    const nlohmann::json* v = get(key, required);
    if (v == nullptr) return;
    if (!v->is_string()) return fail(key, "must be a string");
    out = v->get<std::string>();
  }
  /// A string of at most `max_bytes` bytes.
  void string(const std::string& key, std::string& out, bool required, size_t max_bytes) const {
    std::string value;
    const size_t before = errors_.size();
    string(key, value, required);
    if (errors_.size() != before) return;
    if (value.size() > max_bytes)
      return fail(key, "must be at most " + std::to_string(max_bytes) + " bytes");
    if (has(key)) out = std::move(value);
  }
  /// An array of at most `max_items` elements, or nullptr (recording why when it is wrong).
  const nlohmann::json* array(const std::string& key, bool required, size_t max_items) const {
    const nlohmann::json* v = get(key, required);
    if (v == nullptr) return nullptr;
    if (!v->is_array()) {
      fail(key, "must be an array");
      return nullptr;
    }
    if (v->size() > max_items) {
      fail(key, "must have at most " + std::to_string(max_items) + " elements");
      return nullptr;
    }
    return v;
  }
  /// An object, or nullptr (recording why when it is wrong).
  const nlohmann::json* object(const std::string& key, bool required) const {
    const nlohmann::json* v = get(key, required);
    if (v == nullptr) return nullptr;
    if (!v->is_object()) {
      fail(key, "must be a JSON object");
      return nullptr;
    }
    return v;
  }
  void choice(const std::string& key, std::string& out, const std::vector<std::string>& allowed,
              bool required) const {
    std::string value = out;
    string(key, value, required);
    if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "\"" : ", \"") + a + "\"";
      return fail(key, "must be one of " + list + ", got \"" + value + "\"");
    }
    out = value;
  }
  /// Flags keys nobody read (typos would otherwise be silently ignored).
  void reject_unknown() const {
    if (!obj_.is_object()) return;
    for (const auto& [key, value] : obj_.items()) {
      if (!seen_.contains(key)) fail(key, "is not a known field");
    }
  }

 private:
  const nlohmann::json& obj_;
  std::string path_;
  std::vector<Error>& errors_;
  mutable std::set<std::string> seen_;
};

}  // namespace mohge
