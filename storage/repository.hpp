// The coordinator's system of record (DESIGN.md §2, §8): users, tokens, workers, jobs, job
// events, logs, metrics, routing snapshots and checkpoints in SQLite. The schema and its
// migrations are in repository.cpp and documented in storage/SCHEMA.md.
//
// One Repository is one SQLite connection. The coordinator opens exactly one writable
// repository and gives it to one actor (the Store); REST reads may open further read-only
// repositories (WAL lets readers see the last committed state while the writer works).
// A Repository is not thread-safe: use it from one thread (or one strand) at a time.
//
// Times are UNIX seconds (double). JSON columns hold compact JSON text.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/result.hpp"

namespace mohge::db {

struct UserRow {
  int64_t id = 0;
  std::string name;     // unique, [a-z0-9_.-]{1,64}
  std::string role;     // "admin" | "user"
  int max_workers = 0;  // quota on concurrently held workers; 0 = no limit
  double created_at = 0;
};

struct TokenRow {
  int64_t id = 0;
  int64_t user_id = 0;
  std::string label;
  double created_at = 0;
  bool revoked = false;
};

struct WorkerRow {
  int64_t id = 0;
  std::string name;  // unique; the worker's identity across reconnects
  std::string host;
  std::string backend;                               // "cpu" | "cuda"
  std::string version;                               // the worker's build version
  nlohmann::json devices = nlohmann::json::array();  // [{"index":0,"name":"…","memory_bytes":…}]
  int threads = 0;
  std::string state;  // "online" | "lost" | "offline"
  double registered_at = 0;
  double last_seen = 0;
};

struct JobRow {
  int64_t id = 0;  // assigned by insert_job
  int64_t user_id = 0;
  std::string user;     // the owner's name (filled by reads, ignored by writes)
  std::string name;     // spec.name
  nlohmann::json spec;  // the full validated spec (defaults filled in)
  std::string state;    // QUEUED STARTING RUNNING RECOVERING PREEMPTED SUCCEEDED FAILED CANCELED
  std::string reason;   // why it is in this state (empty if nothing to say)
  int priority = 50;
  int workers = 1;  // gang size
  std::string device = "cpu";
  std::string idempotency_key;  // empty: none; unique per user otherwise
  double submitted_at = 0;
  double started_at = 0;   // first RUNNING, 0 = never
  double finished_at = 0;  // terminal, 0 = not yet
  int restarts = 0;        // recoveries so far
  int max_restarts = 3;
  int64_t step = 0;                   // last completed step reported
  int64_t steps = 0;                  // spec.train.steps
  int attempt = 0;                    // incremented on every launch (STARTING)
  std::string run_dir;                // relative to the storage root
  std::vector<std::string> assigned;  // worker names in rank order while placed, else empty
  int64_t experiment_id = 0;          // the experiment it belongs to, 0 = none
  // Its point in the experiment: {"index", "variant", "group", "coords": {path: value}}.
  nlohmann::json experiment_point = nlohmann::json::object();
};

struct ExperimentRow {
  int64_t id = 0;  // assigned by insert_experiment
  int64_t user_id = 0;
  std::string user;  // the owner's name (filled by reads, ignored by writes)
  std::string name;
  nlohmann::json request;  // the validated request, defaults filled in (api/experiment_spec)
  int max_parallel = 0;    // 0 = no limit
  std::string idempotency_key;
  double created_at = 0;
};

struct JobFilter {
  std::optional<int64_t> user_id;    // only this user's jobs
  std::optional<std::string> state;  // only jobs in this state
  int64_t offset = 0;
  int64_t limit = 50;  // 1..1000
};

struct EventRow {
  int64_t id = 0;  // increasing; use as a `since` cursor
  int64_t job_id = 0;
  double at = 0;
  std::string from_state;  // "" for the first event (submission)
  std::string to_state;
  std::string reason;
};

struct LogRow {
  int64_t id = 0;  // increasing; use as a `since` cursor
  int64_t job_id = 0;
  double at = 0;
  int rank = -1;  // -1: the coordinator
  std::string line;
};

struct MetricRow {
  int64_t job_id = 0;
  std::string name;  // DESIGN.md §7 names: loss, aux_group, val_loss, imbalance, group_share.3, …
  int64_t step = 0;
  double value = 0;
};

struct MetricPoint {
  int64_t step = 0;
  double value = 0;
};

/// A window of one series: the sum and count of its finite values, and the last step read.
struct MetricWindow {
  double sum = 0;
  int64_t count = 0;
  int64_t last_step = 0;
};

struct CheckpointFile {
  std::string name;  // relative to the checkpoint folder
  int64_t bytes = 0;
  std::string sha256;  // lowercase hex
};

struct CheckpointRow {
  int64_t id = 0;
  int64_t job_id = 0;
  int64_t step = 0;
  std::string path;   // checkpoint folder, relative to the storage root
  std::string state;  // "complete" | "deleted"
  double created_at = 0;
  int64_t bytes = 0;  // sum of files
  std::vector<CheckpointFile> files;
};

class Repository {
 public:
  /// Opens (creating if needed) the database file. A writable repository sets WAL mode and
  /// applies pending migrations; every connection gets a busy timeout of `busy_timeout_ms`.
  /// A read-only one fails if the file does not exist. Errors name the file.
  static Result<std::unique_ptr<Repository>> open(const std::filesystem::path& file,
                                                  bool read_only = false,
                                                  int busy_timeout_ms = 5000);
  ~Repository();
  Repository(const Repository&) = delete;
  Repository& operator=(const Repository&) = delete;

  /// The schema version after migrations (PRAGMA user_version).
  int schema_version() const;

  // ---- users and tokens --------------------------------------------------------------------
  /// kAlreadyExists (field "name") when the name is taken.
  Result<UserRow> create_user(const std::string& name, const std::string& role, int max_workers,
                              double now);
  Result<std::optional<UserRow>> get_user(int64_t id);
  Result<std::optional<UserRow>> get_user_by_name(const std::string& name);
  Result<std::vector<UserRow>> list_users();
  Status set_user_quota(int64_t user_id, int max_workers);
  /// Stores a token by the hex SHA-256 of its secret (the secret itself is never stored).
  Result<TokenRow> create_token(int64_t user_id, const std::string& secret_sha256,
                                const std::string& label, double now);
  /// The owner of a non-revoked token with this hash, if any.
  Result<std::optional<UserRow>> find_user_by_token(const std::string& secret_sha256);
  Result<std::vector<TokenRow>> list_tokens(int64_t user_id);
  /// kNotFound when no such token.
  Status revoke_token(int64_t token_id);

  // ---- workers ------------------------------------------------------------------------------
  /// Inserts or updates by name (registration and re-registration); returns the stored row.
  Result<WorkerRow> upsert_worker(const WorkerRow& row);
  Status set_worker_state(const std::string& name, const std::string& state, double last_seen);
  Result<std::vector<WorkerRow>> list_workers();

  // ---- jobs ---------------------------------------------------------------------------------
  /// Inserts a job and its first event (to_state = row.state, reason = `reason`) in one
  /// transaction; returns the row with its id. kAlreadyExists when (user, idempotency_key)
  /// exists: the caller looks it up with find_job_by_key.
  Result<JobRow> insert_job(const JobRow& row, const std::string& reason, double now);
  Result<std::optional<JobRow>> find_job_by_key(int64_t user_id, const std::string& key);
  Result<std::optional<JobRow>> get_job(int64_t id);
  /// Jobs matching the filter, newest first, and the total count matching it.
  Result<std::pair<std::vector<JobRow>, int64_t>> list_jobs(const JobFilter& filter);
  /// Jobs not in a terminal state (for recovery after a restart), oldest first.
  Result<std::vector<JobRow>> list_active_jobs();
  /// Writes every mutable field of the job (state, reason, started_at, finished_at, restarts,
  /// step, attempt, run_dir, assigned). When `event` is set it is appended in the same
  /// transaction. kNotFound when no such job.
  Status update_job(const JobRow& row, const std::optional<EventRow>& event = std::nullopt);
  Result<std::vector<EventRow>> list_events(int64_t job_id, int64_t after_id = 0,
                                            int64_t limit = 1000);
  Status append_logs(const std::vector<LogRow>& rows);
  Result<std::vector<LogRow>> list_logs(int64_t job_id, int64_t after_id = 0, int64_t limit = 1000);

  // ---- experiments --------------------------------------------------------------------------
  /// Inserts an experiment and all its jobs (each with experiment_id set and its submission
  /// event) in one transaction: all or nothing. Returns the stored experiment and jobs.
  /// kAlreadyExists when (user, idempotency_key) exists: look it up with find_experiment_by_key.
  Result<std::pair<ExperimentRow, std::vector<JobRow>>> insert_experiment(
      const ExperimentRow& row, const std::vector<JobRow>& jobs, const std::string& reason,
      double now);
  Result<std::optional<ExperimentRow>> find_experiment_by_key(int64_t user_id,
                                                              const std::string& key);
  Result<std::optional<ExperimentRow>> get_experiment(int64_t id);
  /// Experiments (of one user when set), newest first, and the total count matching.
  Result<std::pair<std::vector<ExperimentRow>, int64_t>> list_experiments(
      std::optional<int64_t> user_id, int64_t offset, int64_t limit);
  /// Every experiment's id and max_parallel (for the scheduler at start-up).
  Result<std::vector<std::pair<int64_t, int>>> experiment_limits();
  /// The jobs of an experiment in point order.
  Result<std::vector<JobRow>> list_experiment_jobs(int64_t experiment_id);

  // ---- metrics ------------------------------------------------------------------------------
  /// Inserts all rows in one transaction. A row whose (job, name, step) exists is ignored,
  /// so replaying reports after a restart never duplicates.
  Status insert_metrics(const std::vector<MetricRow>& rows);
  /// The series of one metric with step > since, ascending. When more than `max_points` (>0)
  /// points match, the step range is cut into max_points equal buckets and each non-empty
  /// bucket gives one point: the mean value, at the bucket's last step.
  Result<std::vector<MetricPoint>> metric_series(int64_t job_id, const std::string& name,
                                                 int64_t since, int64_t max_points);
  Result<std::vector<std::string>> metric_names(int64_t job_id);
  /// The finite values of a series with step > `after`: their sum and count, and the highest
  /// step among them (`after` when there is none), so a caller can keep a running mean and
  /// read only the rows added since. One range scan of the primary key, summed in SQLite.
  Result<MetricWindow> metric_window(int64_t job_id, const std::string& name, int64_t after);
  /// The point of a series with the highest step (its value NaN when not finite), if any.
  Result<std::optional<MetricPoint>> metric_last(int64_t job_id, const std::string& name);
  /// The latest routing record of a job (the per-layer JSON of a metrics.jsonl line); a record
  /// with a lower step than the stored one is ignored.
  Status set_routing(int64_t job_id, int64_t step, const nlohmann::json& record);
  Result<std::optional<std::pair<int64_t, nlohmann::json>>> get_routing(int64_t job_id);
  /// One job's reports of a batch, all or nothing in one transaction: metric rows (existing
  /// (job, name, step) ignored), log lines and, when set, the routing record. kNotFound when
  /// the job does not exist (nothing is written).
  Status store_job_reports(int64_t job_id, const std::vector<MetricRow>& rows,
                           const std::vector<LogRow>& logs,
                           const std::optional<std::pair<int64_t, nlohmann::json>>& routing);

  // ---- checkpoints --------------------------------------------------------------------------
  /// Registers a complete checkpoint (state "complete"); kAlreadyExists for (job, step).
  Result<CheckpointRow> insert_checkpoint(const CheckpointRow& row);
  Result<std::optional<CheckpointRow>> get_checkpoint(int64_t id);
  /// A job's checkpoints, oldest step first; deleted ones only when asked.
  Result<std::vector<CheckpointRow>> list_checkpoints(int64_t job_id, bool include_deleted = false);
  Status mark_checkpoint_deleted(int64_t id);

 private:
  struct Impl;
  explicit Repository(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Benchmark helper: inserts `rows` metric rows in batches of `batch` into a fresh database at
/// `file` and returns rows per second.
Result<double> bench_metrics_ingest(const std::filesystem::path& file, int64_t rows, int64_t batch);

}  // namespace mohge::db
