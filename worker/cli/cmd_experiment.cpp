// `mohge experiment …`: experiments through the coordinator's REST API (api/openapi.yaml):
//   mohge experiment submit FILE [--idempotency-key K]
//   mohge experiment show ID [--follow [--interval S]] [--json]
//   mohge experiment list [--limit N]
//   mohge experiment cancel ID
// `show` prints the comparison table (mean ± std over finished seeds per variant group), the
// jobs, and the difficulty-routing tables side by side; `--follow` reprints it until every job
// has finished and exits 0 only when all succeeded.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "worker/cli/client.hpp"
#include "worker/cli/commands.hpp"

namespace mohge::cli {

using nlohmann::json;

namespace {

/// "5.0826 ± 0.0040", "5.0826" (one seed), "-" (none).
std::string mean_std(const json& s, int decimals) {
  if (!s.is_object() || !s["mean"].is_number()) return "-";
  char buf[64];
  if (s["std"].is_number()) {
    std::snprintf(buf, sizeof(buf), "%.*f ± %.*f", decimals, s["mean"].get<double>(), decimals,
                  s["std"].get<double>());
  } else {
    std::snprintf(buf, sizeof(buf), "%.*f", decimals, s["mean"].get<double>());
  }
  return buf;
}

/// A parameter count: "32.21M", "12.3k", "640".
std::string millions(const json& s) {
  if (!s.is_object() || !s["mean"].is_number()) return "-";
  const double v = s["mean"].get<double>();
  char buf[32];
  if (v >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  } else if (v >= 1e3) {
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  }
  return buf;
}

/// `s` padded with spaces to `width` characters (UTF-8 aware: "±" is one), left-aligned unless
/// `right`; never cut.
std::string pad(const std::string& s, size_t width, bool right = false) {
  size_t chars = 0;
  for (const char c : s) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  if (chars >= width) return s;
  const std::string fill(width - chars, ' ');
  return right ? fill + s : s + fill;
}

std::string number(const json& v, const char* fmt) {
  if (!v.is_number()) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), fmt, v.get<double>());
  return buf;
}

std::string states_text(const json& states) {
  std::string out;
  for (const auto& [state, n] : states.items())
    out += (out.empty() ? "" : ", ") + state + " " + std::to_string(n.get<int>());
  return out;
}

void print_experiment(const json& e) {
  std::printf("experiment %lld %s (%s): %s — %s\n", static_cast<long long>(e.value("id", 0)),
              e.value("name", "").c_str(), e.value("user", "").c_str(),
              e.value("state", "").c_str(), states_text(e.value("states", json::object())).c_str());
  if (!e.value("description", "").empty()) std::printf("%s\n", e.value("description", "").c_str());
  const auto row = [](const std::vector<std::pair<std::string, int>>& cells) {
    std::string line;
    for (const auto& [text, width] : cells)
      line += pad(text, static_cast<size_t>(std::abs(width)), width > 0) + " ";
    std::printf("%s\n", line.c_str());
  };
  // Widths: negative = left-aligned.
  std::printf("\n");
  row({{"VARIANT", -22},
       {"SEEDS", 5},
       {"VAL LOSS", -17},
       {"PARAMS", 8},
       {"FFN", 8},
       {"ROUTED", 8},
       {"ACTIVATED", 9},
       {"ACT. FFN", 9},
       {"TOKENS/S", -15},
       {"IMBALANCE", -13}});
  for (const json& g : e.value("groups", json::array())) {
    const std::string seeds =
        std::to_string(g.value("seeds_finished", 0)) + "/" + std::to_string(g.value("seeds", 0));
    row({{g.value("group", ""), -22},
         {seeds, 5},
         {mean_std(g["val_loss"], 4), -17},
         {millions(g["params_total"]), 8},
         {millions(g["params_ffn"]), 8},
         {millions(g["params_routed"]), 8},
         {millions(g["activated_params"]), 9},
         {millions(g["activated_expert_params"]), 9},
         {mean_std(g["tokens_per_s"], 0), -15},
         {mean_std(g["imbalance"], 3), -13}});
  }
  std::printf("\n%-6s %-36s %-10s %11s %9s %9s %9s\n", "JOB", "NAME", "STATE", "STEP", "VAL LOSS",
              "TOKENS/S", "IMBALANCE");
  for (const json& j : e.value("jobs", json::array())) {
    const json p = j.value("progress", json::object());
    const json f = j.value("figures", json::object());
    const std::string step =
        std::to_string(p.value("step", 0)) + "/" + std::to_string(p.value("steps", 0));
    std::printf("%-6lld %-36s %-10s %11s %9s %9s %9s\n", static_cast<long long>(j.value("id", 0)),
                j.value("name", "").substr(0, 36).c_str(), j.value("state", "").c_str(),
                step.c_str(), number(f.value("val_loss", json()), "%.4f").c_str(),
                number(f.value("tokens_per_s", json()), "%.0f").c_str(),
                number(f.value("imbalance", json()), "%.3f").c_str());
  }
  // Difficulty routing (paper Tables 4–5): group shares per bucket, groups by width.
  static const char* kFrequency[] = {"most frequent 25 %", "25–50 %", "50–75 %", "rarest 25 %"};
  static const char* kLoss[] = {"loss < 2", "loss 2–4", "loss 4–6", "loss ≥ 6"};
  for (const json& g : e.value("groups", json::array())) {
    if (!g.contains("difficulty")) continue;
    for (const char* kind : {"frequency", "token_loss"}) {
      const json rows = g["difficulty"].value(kind, json::array());
      if (rows.empty()) continue;
      std::printf("\n%s: group share (%%) by %s, groups from narrowest to widest\n",
                  g.value("group", "").c_str(),
                  std::string(kind) == "frequency" ? "token frequency" : "token loss");
      for (size_t b = 0; b < rows.size(); ++b) {
        const char* label =
            b < 4 ? (std::string(kind) == "frequency" ? kFrequency[b] : kLoss[b]) : "?";
        std::printf("  %s", pad(label, 20).c_str());
        for (const json& v : rows[b])
          std::printf(" %5.1f", v.is_number() ? 100 * v.get<double>() : 0.0);
        std::printf("\n");
      }
    }
  }
}

}  // namespace

void add_experiment(CLI::App& app, int& exit_code) {
  static ClientFlags flags;
  auto* exp = app.add_subcommand("experiment", "Submit, show, list or cancel experiments");
  exp->require_subcommand(1);
  {
    auto* cmd = exp->add_subcommand("submit", "Submit an experiment (a grid of jobs)");
    static std::string file, key;
    cmd->add_option("file", file, "Experiment JSON (name, base, variants, grid, max_parallel)")
        ->required();
    cmd->add_option("--idempotency-key", key,
                    "Retries with the same key return the same experiment");
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      Result<json> body = read_json_file(file, "file");
      if (!body.ok()) {
        exit_code = report(body.error());
        return;
      }
      std::map<std::string, std::string> h;
      if (!key.empty()) h["Idempotency-Key"] = key;
      Result<ClientResponse> r = request(flags, "POST", "/api/v1/experiments", &body.value(), h);
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      const json& e = r.value().body;
      std::printf("experiment %lld %s: %d jobs, %s\n", static_cast<long long>(e.value("id", 0)),
                  r.value().status == 201 ? "submitted" : "already submitted (same key)",
                  e.value("num_jobs", 0), states_text(e.value("states", json::object())).c_str());
    });
  }
  {
    auto* cmd = exp->add_subcommand("show", "Show an experiment's comparison table and jobs");
    static int64_t id = 0;
    static bool follow = false, as_json = false;
    static double interval = 30;
    cmd->add_option("id", id, "Experiment id")->required();
    cmd->add_flag("--follow,-f", follow, "Reprint until every job has finished");
    cmd->add_option("--interval", interval, "Seconds between reprints with --follow")
        ->check(CLI::Range(1.0, 3600.0))
        ->capture_default_str();
    cmd->add_flag("--json", as_json, "Print the experiment as JSON");
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      while (true) {
        Result<ClientResponse> r =
            request(flags, "GET", "/api/v1/experiments/" + std::to_string(id));
        if (!r.ok()) {
          exit_code = report(r.error());
          return;
        }
        const json& e = r.value().body;
        const std::string state = e.value("state", "");
        if (as_json) {
          std::printf("%s\n", e.dump(2).c_str());
        } else {
          if (follow)
            std::printf("\n[%s]\n",
                        fmt_time(json(static_cast<double>(std::time(nullptr)))).c_str());
          print_experiment(e);
        }
        std::fflush(stdout);
        if (!follow || terminal(state)) {
          exit_code = follow && state != "SUCCEEDED" ? 1 : 0;
          return;
        }
        std::this_thread::sleep_for(std::chrono::duration<double>(interval));
      }
    });
  }
  {
    auto* cmd = exp->add_subcommand("list", "List experiments");
    static int limit = 50;
    cmd->add_option("--limit", limit, "At most this many")->capture_default_str();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      Result<ClientResponse> r =
          request(flags, "GET", "/api/v1/experiments?limit=" + std::to_string(limit));
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      std::printf("%-6s %-24s %-10s %-10s %5s %-19s %s\n", "ID", "NAME", "USER", "STATE", "JOBS",
                  "CREATED", "STATES");
      for (const json& e : r.value().body.value("experiments", json::array())) {
        std::printf("%-6lld %-24s %-10s %-10s %5d %-19s %s\n",
                    static_cast<long long>(e.value("id", 0)),
                    e.value("name", "").substr(0, 24).c_str(), e.value("user", "").c_str(),
                    e.value("state", "").c_str(), e.value("num_jobs", 0),
                    fmt_time(e.value("created_at", json())).c_str(),
                    states_text(e.value("states", json::object())).c_str());
      }
    });
  }
  {
    auto* cmd = exp->add_subcommand("cancel", "Cancel every unfinished job of an experiment");
    static int64_t id = 0;
    cmd->add_option("id", id, "Experiment id")->required();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      Result<ClientResponse> r =
          request(flags, "POST", "/api/v1/experiments/" + std::to_string(id) + "/cancel");
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      std::printf("experiment %lld: canceled %zu jobs\n", static_cast<long long>(id),
                  r.value().body.value("canceled", json::array()).size());
    });
  }
}

}  // namespace mohge::cli
