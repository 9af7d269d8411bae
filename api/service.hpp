// What the REST edge asks of the coordinator (DESIGN.md §8, api/openapi.yaml). The REST server
// (api/rest_server.cpp) only parses HTTP, authenticates, calls one of these, and maps the
// Result to a status in one table; the coordinator implements them by forwarding to its actors
// with a timeout. Nothing here knows about HTTP.
//
// Every method is called concurrently from the REST thread pool. Ownership rules: a caller sees
// and acts on its own jobs only (another user's job is kNotFound); admin sees everything.
// Responses are the JSON documents of api/openapi.yaml.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/result.hpp"

namespace mohge {

/// Who is calling (from the bearer token).
struct Caller {
  int64_t user_id = 0;
  std::string user;
  bool admin = false;
};

struct JobListQuery {
  std::optional<std::string> state;  // QUEUED, RUNNING, …
  std::optional<std::string> user;   // admin only: another user's jobs
  int64_t offset = 0;
  int64_t limit = 50;
};

struct ExperimentListQuery {
  std::optional<std::string> user;  // admin only: another user's experiments
  int64_t offset = 0;
  int64_t limit = 50;
};

struct MetricsQuery {
  std::vector<std::string> names;  // empty: all
  int64_t since = 0;               // steps > since
  int64_t max_points = 1000;       // server-side downsampling
};

/// A submitted job and whether this call created it (false: an earlier submit with the same
/// Idempotency-Key).
struct SubmitResult {
  nlohmann::json job;
  bool created = true;
};

class ApiService {
 public:
  virtual ~ApiService() = default;

  /// The owner of a bearer token; kUnauthenticated when unknown or revoked.
  virtual Result<Caller> authenticate(const std::string& bearer_token) = 0;

  virtual Result<SubmitResult> submit_job(const Caller& caller, const nlohmann::json& spec,
                                          const std::string& idempotency_key) = 0;
  virtual Result<nlohmann::json> list_jobs(const Caller& caller, const JobListQuery& query) = 0;
  /// The job as serialised JSON text (it is served as is, many thousand times a second).
  virtual Result<std::string> get_job(const Caller& caller, int64_t job) = 0;
  virtual Result<nlohmann::json> cancel_job(const Caller& caller, int64_t job) = 0;
  virtual Result<nlohmann::json> job_events(const Caller& caller, int64_t job, int64_t since,
                                            int64_t limit) = 0;
  virtual Result<nlohmann::json> job_logs(const Caller& caller, int64_t job, int64_t since,
                                          int64_t limit) = 0;
  virtual Result<nlohmann::json> job_metrics(const Caller& caller, int64_t job,
                                             const MetricsQuery& query) = 0;
  virtual Result<nlohmann::json> job_routing(const Caller& caller, int64_t job) = 0;
  virtual Result<nlohmann::json> job_checkpoints(const Caller& caller, int64_t job) = 0;
  virtual Result<nlohmann::json> checkpoint_files(const Caller& caller, int64_t checkpoint) = 0;
  /// The consolidated safetensors file of a checkpoint, to stream: `done` receives it, on
  /// another thread once the file is built (first request: the shards are consolidated off
  /// the REST threads, once however many ask at the same time), or at once when it exists.
  virtual void checkpoint_download(const Caller& caller, int64_t checkpoint,
                                   std::function<void(Result<std::filesystem::path>)> done) = 0;
  /// An experiment (api/experiment_spec.hpp): every expanded spec is validated before anything
  /// is created, then the experiment and all its jobs are stored at once (QUEUED). The same
  /// Idempotency-Key with the same request returns the first (created = false); with another
  /// request kFailedPrecondition.
  virtual Result<SubmitResult> submit_experiment(const Caller& caller, const nlohmann::json& body,
                                                 const std::string& idempotency_key) = 0;
  virtual Result<nlohmann::json> list_experiments(const Caller& caller,
                                                  const ExperimentListQuery& query) = 0;
  /// The experiment with its jobs and comparison table (coordinator/experiment_table.hpp).
  virtual Result<nlohmann::json> get_experiment(const Caller& caller, int64_t experiment) = 0;
  /// Cancels every job of the experiment that has not finished.
  virtual Result<nlohmann::json> cancel_experiment(const Caller& caller, int64_t experiment) = 0;

  virtual Result<nlohmann::json> list_workers(const Caller& caller) = 0;
  virtual Result<nlohmann::json> cluster(const Caller& caller) = 0;

  // Admin only (kPermissionDenied → 403 otherwise).
  virtual Result<nlohmann::json> list_users(const Caller& caller) = 0;
  virtual Result<nlohmann::json> create_user(const Caller& caller, const nlohmann::json& body) = 0;
  /// A user's new token: {"id", "token" (the secret, shown once), …}. A user may create tokens
  /// for itself; admin for anyone.
  virtual Result<nlohmann::json> create_token(const Caller& caller, int64_t user,
                                              const nlohmann::json& body) = 0;
  virtual Result<nlohmann::json> revoke_token(const Caller& caller, int64_t token) = 0;
  /// Admin: replaces the cluster join secret workers present in their hello (written to
  /// join.secret in the storage root, owner-only). Connected workers stay; new connections
  /// need the new secret. {"secret" (shown once), "file"}.
  virtual Result<nlohmann::json> rotate_join_secret(const Caller& caller) = 0;

  /// No auth: liveness and version.
  virtual nlohmann::json health() = 0;
};

}  // namespace mohge
