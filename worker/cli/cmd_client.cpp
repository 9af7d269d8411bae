// The service's client commands (talk to a coordinator's REST API, api/openapi.yaml):
//   mohge submit SPEC.json [--idempotency-key K]     mohge jobs [--state S] [--limit N]
//   mohge job ID                                     mohge logs ID [-f]
//   mohge cancel ID                                  mohge checkpoints ID
//   mohge download CKPT -o FILE
// The coordinator URL and token come from --url/--token or MOHGE_URL/MOHGE_TOKEN.
#include <cpprest/filestream.h>
#include <cpprest/http_client.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "worker/cli/client.hpp"
#include "worker/cli/commands.hpp"

namespace mohge::cli {

namespace http = web::http;
using nlohmann::json;

void add_client_flags(CLI::App* cmd, ClientFlags& f) {
  cmd->add_option("--url", f.url, "Coordinator URL (default $MOHGE_URL or http://127.0.0.1:8080)");
  cmd->add_option("--token", f.token, "API token (default $MOHGE_TOKEN)");
}

Result<ClientResponse> request(const ClientFlags& f, const std::string& method,
                               const std::string& path, const json* body,
                               const std::map<std::string, std::string>& headers) {
  std::string url = f.url;
  if (url.empty()) {
    const char* env = std::getenv("MOHGE_URL");
    url = env != nullptr ? env : "http://127.0.0.1:8080";
  }
  std::string token = f.token;
  if (token.empty()) {
    const char* env = std::getenv("MOHGE_TOKEN");
    if (env != nullptr) token = env;
  }
  try {
    http::client::http_client_config cfg;
    cfg.set_timeout(std::chrono::seconds(60));
    http::client::http_client client(url, cfg);
    http::http_request req(method);
    req.set_request_uri(path);
    if (!token.empty()) req.headers().add("Authorization", "Bearer " + token);
    for (const auto& [k, v] : headers) req.headers().add(k, v);
    if (body != nullptr) req.set_body(body->dump(), "application/json");
    http::http_response resp = client.request(req).get();
    ClientResponse out;
    out.status = resp.status_code();
    const std::string text = resp.extract_utf8string(true).get();
    out.body = json::parse(text, nullptr, false);
    if (out.status >= 400) {
      const json err =
          out.body.is_object() ? out.body.value("error", json::object()) : json::object();
      Error e{ErrorCode::kInternal,
              "HTTP " + std::to_string(out.status) + ": " + err.value("message", text),
              err.value("field", "")};
      if (out.status == 400) e.code = ErrorCode::kInvalidArgument;
      if (out.status == 404) e.code = ErrorCode::kNotFound;
      return e;
    }
    return out;
  } catch (const std::exception& e) {
    return Error{ErrorCode::kUnavailable,
                 "cannot reach the coordinator at " + url + ": " + e.what(), "--url"};
  }
}

std::string fmt_time(const json& t) {
  if (!t.is_number()) return "-";
  const auto secs = static_cast<time_t>(t.get<double>());
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", std::localtime(&secs));
  return buf;
}

bool terminal(const std::string& s) {
  return s == "SUCCEEDED" || s == "FAILED" || s == "CANCELED";
}

Result<json> read_json_file(const std::string& path, const char* field) {
  std::ifstream in(path);
  if (!in) return Error{ErrorCode::kNotFound, "cannot read " + path, field};
  const json j = json::parse(in, nullptr, false);
  if (j.is_discarded()) return invalid_argument(field, path + " is not valid JSON");
  return j;
}

namespace {

void print_job_line(const json& j) {
  const json p = j.value("progress", json::object());
  std::printf("%-6lld %-36s %-10s %-11s %6lld/%-6lld %s\n",
              static_cast<long long>(j.value("id", 0)), j.value("name", "").substr(0, 36).c_str(),
              j.value("user", "").c_str(), j.value("state", "").c_str(),
              static_cast<long long>(p.value("step", 0)),
              static_cast<long long>(p.value("steps", 0)),
              j.contains("pending_reason") ? ("#" + std::to_string(j.value("queue_position", 0)) +
                                              " " + j.value("pending_reason", ""))
                                                 .c_str()
                                           : j.value("reason", "").c_str());
}

}  // namespace

void add_client(CLI::App& app, int& exit_code) {
  static ClientFlags flags;  // shared by the subcommands; one runs per process
  {
    auto* cmd = app.add_subcommand("submit", "Submit a job spec to the coordinator");
    static std::string spec_path, key;
    cmd->add_option("spec", spec_path, "Job spec JSON")->required();
    cmd->add_option("--idempotency-key", key, "Retries with the same key return the same job");
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      std::ifstream in(spec_path);
      if (!in) {
        exit_code = report(Error{ErrorCode::kNotFound, "cannot read " + spec_path, "spec"});
        return;
      }
      const json spec = json::parse(in, nullptr, false);
      if (spec.is_discarded()) {
        exit_code = report(invalid_argument("spec", spec_path + " is not valid JSON"));
        return;
      }
      std::map<std::string, std::string> h;
      if (!key.empty()) h["Idempotency-Key"] = key;
      Result<ClientResponse> r = request(flags, "POST", "/api/v1/jobs", &spec, h);
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      const json& j = r.value().body;
      std::printf(
          "job %lld %s: %s%s\n", static_cast<long long>(j.value("id", 0)),
          r.value().status == 201 ? "submitted" : "already submitted (same key)",
          j.value("state", "").c_str(),
          j.contains("pending_reason") ? (" — " + j.value("pending_reason", "")).c_str() : "");
    });
  }
  {
    auto* cmd = app.add_subcommand("jobs", "List jobs");
    static std::string state;
    static int limit = 50;
    cmd->add_option("--state", state, "Only jobs in this state");
    cmd->add_option("--limit", limit, "At most this many")->capture_default_str();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      std::string path = "/api/v1/jobs?limit=" + std::to_string(limit);
      if (!state.empty()) path += "&state=" + state;
      Result<ClientResponse> r = request(flags, "GET", path);
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      std::printf("%-6s %-36s %-10s %-11s %13s %s\n", "ID", "NAME", "USER", "STATE", "STEP",
                  "REASON");
      for (const json& j : r.value().body.value("jobs", json::array())) print_job_line(j);
    });
  }
  {
    auto* cmd = app.add_subcommand("job", "Show one job");
    static int64_t id = 0;
    cmd->add_option("id", id, "Job id")->required();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      Result<ClientResponse> r = request(flags, "GET", "/api/v1/jobs/" + std::to_string(id));
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      json j = r.value().body;
      j.erase("spec");
      std::printf("%s\n", j.dump(2).c_str());
    });
  }
  {
    auto* cmd = app.add_subcommand("logs", "Print a job's events and log lines");
    static int64_t id = 0;
    static bool follow = false;
    cmd->add_option("id", id, "Job id")->required();
    cmd->add_flag("-f,--follow", follow, "Keep printing until the job ends");
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      int64_t since_log = 0, since_event = 0;
      for (;;) {
        Result<ClientResponse> ev = request(
            flags, "GET",
            "/api/v1/jobs/" + std::to_string(id) + "/events?since=" + std::to_string(since_event));
        if (!ev.ok()) {
          exit_code = report(ev.error());
          return;
        }
        for (const json& e : ev.value().body.value("events", json::array())) {
          std::printf("%s [event] %s: %s\n", fmt_time(e["at"]).c_str(), e.value("to", "").c_str(),
                      e.value("reason", "").c_str());
        }
        since_event = ev.value().body.value("next", since_event);
        Result<ClientResponse> lg = request(
            flags, "GET",
            "/api/v1/jobs/" + std::to_string(id) + "/logs?since=" + std::to_string(since_log));
        if (!lg.ok()) {
          exit_code = report(lg.error());
          return;
        }
        for (const json& l : lg.value().body.value("logs", json::array())) {
          std::printf("%s [rank %d] %s\n", fmt_time(l["at"]).c_str(), l.value("rank", -1),
                      l.value("line", "").c_str());
        }
        since_log = lg.value().body.value("next", since_log);
        std::fflush(stdout);
        if (!follow) return;
        Result<ClientResponse> job = request(flags, "GET", "/api/v1/jobs/" + std::to_string(id));
        if (job.ok() && terminal(job.value().body.value("state", ""))) {
          if (ev.value().body.value("events", json::array()).empty() &&
              lg.value().body.value("logs", json::array()).empty())
            return;
          continue;  // print what arrived with the end, then stop
        }
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    });
  }
  {
    auto* cmd = app.add_subcommand("cancel", "Cancel a job");
    static int64_t id = 0;
    cmd->add_option("id", id, "Job id")->required();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      Result<ClientResponse> r =
          request(flags, "POST", "/api/v1/jobs/" + std::to_string(id) + "/cancel");
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      std::printf("job %lld: %s%s\n", static_cast<long long>(id),
                  r.value().body.value("state", "").c_str(),
                  r.value().body.value("cancel_requested", false) ? " (stopping)" : "");
    });
  }
  {
    auto* cmd = app.add_subcommand("checkpoints", "List a job's complete checkpoints");
    static int64_t id = 0;
    cmd->add_option("id", id, "Job id")->required();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      Result<ClientResponse> r =
          request(flags, "GET", "/api/v1/jobs/" + std::to_string(id) + "/checkpoints");
      if (!r.ok()) {
        exit_code = report(r.error());
        return;
      }
      std::printf("%-6s %-8s %-12s %s\n", "ID", "STEP", "BYTES", "PATH");
      for (const json& c : r.value().body.value("checkpoints", json::array())) {
        std::printf("%-6lld %-8lld %-12lld %s\n", static_cast<long long>(c.value("id", 0)),
                    static_cast<long long>(c.value("step", 0)),
                    static_cast<long long>(c.value("bytes", 0)), c.value("path", "").c_str());
      }
    });
  }
  {
    auto* cmd = app.add_subcommand("download", "Download a checkpoint as one safetensors file");
    static int64_t id = 0;
    static std::string out;
    cmd->add_option("checkpoint", id, "Checkpoint id")->required();
    cmd->add_option("-o,--output", out, "Output file")->required();
    add_client_flags(cmd, flags);
    cmd->callback([&exit_code] {
      std::string url = flags.url;
      if (url.empty())
        url = std::getenv("MOHGE_URL") ? std::getenv("MOHGE_URL") : "http://127.0.0.1:8080";
      std::string token = flags.token;
      if (token.empty() && std::getenv("MOHGE_TOKEN")) token = std::getenv("MOHGE_TOKEN");
      try {
        http::client::http_client client(url);
        http::http_request req(http::methods::GET);
        req.set_request_uri("/api/v1/checkpoints/" + std::to_string(id) + "/download");
        if (!token.empty()) req.headers().add("Authorization", "Bearer " + token);
        http::http_response resp = client.request(req).get();
        if (resp.status_code() != 200) {
          const json b = json::parse(resp.extract_utf8string(true).get(), nullptr, false);
          exit_code = report(Error{
              resp.status_code() == 404 ? ErrorCode::kNotFound : ErrorCode::kInternal,
              "HTTP " + std::to_string(resp.status_code()) + ": " +
                  (b.is_object() ? b.value("error", json::object()).value("message", "") : ""),
              "checkpoint"});
          return;
        }
        const std::string tmp = out + ".part";
        auto file = concurrency::streams::fstream::open_ostream(tmp).get();
        const size_t n = resp.body().read_to_end(file.streambuf()).get();
        file.close().get();
        std::rename(tmp.c_str(), out.c_str());
        std::printf("checkpoint %lld → %s (%zu bytes)\n", static_cast<long long>(id), out.c_str(),
                    n);
      } catch (const std::exception& e) {
        exit_code = report(
            Error{ErrorCode::kUnavailable, std::string("download failed: ") + e.what(), "--url"});
      }
    });
  }
}

}  // namespace mohge::cli
