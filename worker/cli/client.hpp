// What the client commands share (cmd_client.cpp, cmd_experiment.cpp): the coordinator's URL
// and token flags, one REST request, and small formatting helpers.
#pragma once

#include <map>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "api/result.hpp"

namespace mohge::cli {

struct ClientFlags {
  std::string url;    // default $MOHGE_URL, then http://127.0.0.1:8080
  std::string token;  // default $MOHGE_TOKEN
};

void add_client_flags(CLI::App* cmd, ClientFlags& f);

struct ClientResponse {
  int status = 0;
  nlohmann::json body;
};

/// One REST call. HTTP errors come back as an Error with the server's message and field
/// (400 → kInvalidArgument, 404 → kNotFound); an unreachable coordinator as kUnavailable.
Result<ClientResponse> request(const ClientFlags& f, const std::string& method,
                               const std::string& path, const nlohmann::json* body = nullptr,
                               const std::map<std::string, std::string>& headers = {});

/// "2026-11-30 01:44:00" in local time, "-" when `t` is not a number.
std::string fmt_time(const nlohmann::json& t);
/// SUCCEEDED, FAILED or CANCELED.
bool terminal(const std::string& state);
/// A JSON file's document; errors name `field` (the command's argument).
Result<nlohmann::json> read_json_file(const std::string& path, const char* field);

}  // namespace mohge::cli
