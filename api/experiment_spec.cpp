#include "api/experiment_spec.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "api/field_reader.hpp"

namespace mohge {

using nlohmann::json;

namespace {

bool valid_variant_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (const char c : s) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

/// A dotted path of 1..8 segments, each 1..64 characters of [A-Za-z0-9_].
bool valid_path(const std::string& path) {
  if (path.empty() || path.size() > 200) return false;
  int segments = 1;
  size_t len = 0;
  for (const char c : path) {
    if (c == '.') {
      if (len == 0) return false;
      len = 0;
      ++segments;
      continue;
    }
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok || ++len > 64) return false;
  }
  return len > 0 && segments <= 8;
}

constexpr const char* kPathRule =
    "must be a dotted spec path (\"train.seed\", \"model.ffn\"): 1–8 segments of letters, "
    "digits and '_'";

/// "train.seed=2": strings without quotes, other values as compact JSON, cut to at most 40
/// bytes at a UTF-8 character boundary (a job name must stay valid UTF-8). Two different values
/// may give the same text; parse_experiment refuses points whose job names collide.
std::string coordinate_text(const std::string& path, const json& value) {
  std::string v = value.is_string() ? value.get<std::string>() : value.dump();
  if (v.size() > 40) {
    size_t cut = 37;
    while (cut > 0 && (static_cast<unsigned char>(v[cut]) & 0xC0) == 0x80) --cut;
    v = v.substr(0, cut) + "...";
  }
  return path + "=" + v;
}

}  // namespace

Status json_set_path(json& doc, const std::string& path, const json& value) {
  json* at = &doc;
  size_t begin = 0;
  while (true) {
    if (!at->is_object()) {
      return invalid_argument(path, "cannot be set: \"" + path.substr(0, begin ? begin - 1 : 0) +
                                        "\" is not a JSON object in the base spec");
    }
    const size_t dot = path.find('.', begin);
    const std::string key = path.substr(begin, dot == std::string::npos ? dot : dot - begin);
    if (dot == std::string::npos) {
      (*at)[key] = value;
      return {};
    }
    if (!at->contains(key)) (*at)[key] = json::object();
    at = &(*at)[key];
    begin = dot + 1;
  }
}

Result<ExperimentPlan> parse_experiment(const json& request) {
  std::vector<Error> errors;
  ExperimentPlan plan;
  FieldReader top(request, "", errors);
  top.string("name", plan.name, true, 64);
  if (top.has("name") && errors.empty() && !valid_variant_name(plan.name)) {
    top.fail("name", "must be 1–64 characters of a-z, 0-9, '_', '.', '-'");
  }
  top.integer("max_parallel", plan.max_parallel, false, 0, 10000);
  std::string description;
  top.string("description", description, false, 4096);
  const json* base = top.object("base", true);

  if (const json* variants = top.array("variants", false, kMaxVariants)) {
    if (variants->empty()) top.fail("variants", "must not be empty when given");
    std::set<std::string> names;
    for (size_t i = 0; i < variants->size(); ++i) {
      FieldReader v((*variants)[i], "variants[" + std::to_string(i) + "]", errors);
      ExperimentVariant out;
      v.string("name", out.name, true, 64);
      if (v.has("name") && (*variants)[i]["name"].is_string() && !valid_variant_name(out.name)) {
        v.fail("name", "must be 1–64 characters of a-z, 0-9, '_', '.', '-'");
      } else if (!out.name.empty() && !names.insert(out.name).second) {
        v.fail("name", "\"" + out.name + "\" names two variants");
      }
      out.set = json::object();
      if (const json* set = v.object("set", false)) {
        if (set->size() > 64) v.fail("set", "must have at most 64 paths");
        for (const auto& [path, value] : set->items()) {
          if (!valid_path(path)) v.fail("set." + path, kPathRule);
          if (path == "name") v.fail("set.name", "is set by the experiment (the job names)");
        }
        out.set = *set;
      }
      v.reject_unknown();
      plan.variants.push_back(std::move(out));
    }
  }
  if (plan.variants.empty()) plan.variants.push_back({"base", json::object()});

  if (const json* grid = top.object("grid", false)) {
    if (grid->size() > static_cast<size_t>(kMaxAxes)) {
      top.fail("grid", "must have at most " + std::to_string(kMaxAxes) + " axes");
    }
    for (const auto& [path, values] : grid->items()) {
      const std::string field = "grid." + path;
      if (!valid_path(path)) {
        errors.push_back(invalid_argument(field, kPathRule));
        continue;
      }
      if (path == "name") {
        errors.push_back(invalid_argument(field, "is set by the experiment (the job names)"));
        continue;
      }
      if (!values.is_array() || values.empty() || values.size() > kMaxAxisValues) {
        errors.push_back(invalid_argument(
            field, "must be a list of 1–" + std::to_string(kMaxAxisValues) + " values"));
        continue;
      }
      std::set<std::string> seen;
      for (const json& value : values) {
        if (!seen.insert(value.dump()).second) {
          errors.push_back(invalid_argument(field, "lists " + value.dump() + " twice"));
          break;
        }
      }
      plan.grid.push_back({path, values.get<std::vector<json>>()});
    }
  }
  top.reject_unknown();

  // (Stops growing past the limit: many axes of many values cannot overflow it.)
  int64_t num_points = static_cast<int64_t>(plan.variants.size());
  for (const ExperimentAxis& axis : plan.grid)
    if (num_points <= kMaxPoints) num_points *= static_cast<int64_t>(axis.values.size());
  if (errors.empty() && num_points > kMaxPoints) {
    errors.push_back(invalid_argument("grid", "expands to " + std::to_string(num_points) +
                                                  " jobs; at most " + std::to_string(kMaxPoints) +
                                                  " per experiment"));
  }
  if (!errors.empty()) {
    std::string all;
    for (const Error& e : errors) all += (all.empty() ? "" : "\n") + e.to_string();
    Error first = errors.front();
    if (errors.size() > 1) first.message = all;
    return first;
  }

  // Expansion: variant-major, then the axes in path order (the last axis fastest).
  const bool has_seed_axis =
      std::any_of(plan.grid.begin(), plan.grid.end(),
                  [](const ExperimentAxis& a) { return a.path == kSeedPath; });
  std::map<std::string, int> names;  // job name → point index
  for (const ExperimentVariant& variant : plan.variants) {
    std::vector<size_t> at(plan.grid.size(), 0);
    bool done = false;
    while (!done) {
      ExperimentPoint p;
      p.index = static_cast<int>(plan.points.size());
      p.variant = variant.name;
      p.coords = json::object();
      p.group = variant.name;
      std::string seed_text;
      json spec = *base;
      std::string where = "variant \"" + variant.name + "\"";
      Status set_ok;
      for (const auto& [path, value] : variant.set.items()) {
        if (set_ok.ok()) set_ok = json_set_path(spec, path, value);
      }
      for (size_t a = 0; a < plan.grid.size(); ++a) {
        const ExperimentAxis& axis = plan.grid[a];
        const json& value = axis.values[at[a]];
        p.coords[axis.path] = value;
        where += ", " + coordinate_text(axis.path, value);
        if (axis.path == kSeedPath) {
          seed_text = coordinate_text("seed", value);
        } else {
          p.group += "," + coordinate_text(axis.path, value);
        }
        if (set_ok.ok()) set_ok = json_set_path(spec, axis.path, value);
      }
      if (!set_ok.ok()) {
        Error e = set_ok.error();
        e.message = where + ": " + e.to_string();
        e.field = "grid";
        return e;
      }
      spec["name"] = plan.name + "/" + p.group + (has_seed_axis ? "/" + seed_text : "");
      Result<JobSpec> parsed = parse_job_spec(spec);
      if (!parsed.ok()) {
        Error e = parsed.error();
        e.message = where + ": " + e.to_string();
        return e;
      }
      p.spec = std::move(parsed).value();
      // Job names identify the points (and their text, the variant groups): two points with
      // one name would be averaged as seeds of one setting.
      if (const auto [it, fresh] = names.emplace(p.spec.name, p.index); !fresh) {
        return invalid_argument(
            "grid", "points " + std::to_string(it->second) + " and " + std::to_string(p.index) +
                        " would both be named \"" + p.spec.name +
                        "\" (values that differ only past 40 characters, or a string and a "
                        "number with the same text); make them differ early or use variants");
      }
      plan.points.push_back(std::move(p));
      // Next combination (odometer, last axis fastest); done when every axis wrapped.
      done = true;
      for (size_t a = plan.grid.size(); a-- > 0;) {
        if (++at[a] < plan.grid[a].values.size()) {
          done = false;
          break;
        }
        at[a] = 0;
      }
    }
  }

  json variants = json::array();
  for (const ExperimentVariant& v : plan.variants)
    variants.push_back({{"name", v.name}, {"set", v.set}});
  json grid = json::object();
  for (const ExperimentAxis& axis : plan.grid) grid[axis.path] = axis.values;
  plan.request = {{"name", plan.name}, {"description", description},
                  {"base", *base},     {"variants", variants},
                  {"grid", grid},      {"max_parallel", plan.max_parallel}};
  return plan;
}

}  // namespace mohge
