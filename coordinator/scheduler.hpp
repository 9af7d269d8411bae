// Scheduler actor: owns every job's row and lifecycle state, the queue, the cluster's worker
// view and per-user usage. It places gangs with the pure policy of scheduler_policy.hpp, starts
// a JobSupervisor per placed attempt, and applies what supervisors report as state
// transitions (each stored with its event and reason through the Store).
//
// Lifecycle (DESIGN.md §8): QUEUED → STARTING → RUNNING → SUCCEEDED | FAILED | CANCELED, plus
// RECOVERING (a worker was lost: back to placement, resuming from the last checkpoint, at most
// max_restarts times) and PREEMPTED (checkpointed for a higher-priority job, then QUEUED).
// Terminal states are final.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
#include "api/messages.hpp"
#include "api/service.hpp"
#include "coordinator/hub.hpp"
#include "coordinator/scheduler_policy.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

class JobSupervisor;

/// How an attempt ended, as a supervisor reports it.
// kUnreachable: a rank could not reach a peer over the data plane (both workers still talk to
// the coordinator): recovered like kLost, on another set of workers when one is free.
enum class AttemptOutcome { kSucceeded, kFailed, kCanceled, kPreempted, kLost, kUnreachable };

bool job_state_terminal(const std::string& state);

class Scheduler : public Actor {
 public:
  Scheduler(boost::asio::io_context& io, Hub& hub);
  ~Scheduler() override;

  /// Loads users, jobs and workers at start-up (before the io threads run). Jobs that were
  /// placed when the coordinator stopped wait for their ranks to report back (reattach) for
  /// options.reattach_timeout_s, then recover from their last checkpoint.
  Status load(db::Repository& repo);

  // ---- from the REST edge (through ask) ----------------------------------------------------
  /// Adds a job that the Store has just inserted (state QUEUED).
  void add_job(db::JobRow row);
  /// Adds an experiment's jobs that the Store has inserted (all QUEUED); at most
  /// `max_parallel` (> 0) of them are placed at once. Jobs it already holds are left as they
  /// are (an idempotent re-submit passes them again in case the first submit timed out after
  /// its commit).
  void add_experiment(int64_t id, int max_parallel, std::vector<db::JobRow> rows);
  /// Job counts by state of each experiment: {"<id>": {"RUNNING": 1, "QUEUED": 3}, …}.
  Result<nlohmann::json> experiment_states(const std::vector<int64_t>& experiments);
  /// The caller's jobs of an experiment as GET /jobs lists them (with "spec"), in id order.
  Result<nlohmann::json> experiment_jobs(const Caller& caller, int64_t experiment);
  /// Cancels every job of the experiment that is not finished: {"id", "canceled": [job ids]}.
  Result<nlohmann::json> cancel_experiment(const Caller& caller, int64_t experiment);
  Result<nlohmann::json> job_json(const Caller& caller, int64_t id);
  Result<nlohmann::json> list_jobs(const Caller& caller, const JobListQuery& q);
  Result<nlohmann::json> cancel(const Caller& caller, int64_t id);
  /// Checks that the caller may see the job (kNotFound otherwise).
  Status check_access(const Caller& caller, int64_t id);
  Result<nlohmann::json> cluster_json();
  /// A user's quota and cache (after user changes).
  void set_user(const db::UserRow& user);
  /// The user's quota and running workers, for submit-time checks.
  Result<int> user_quota(int64_t user_id);

  // ---- from other actors (post) ---------------------------------------------------------------
  void worker_online(const std::string& name, const std::string& device, const std::string& host,
                     const std::vector<proto::RunningRank>& running);
  void worker_lost(const std::string& name, const std::string& why);
  /// A decoded report from `worker`. Accepted only when `worker` holds that rank of the job's
  /// current attempt (metrics: rank 0); then handed to its owner (the job's supervisor, the
  /// MetricsSink, the CheckpointRegistry). Anything else is dropped, counted
  /// (cluster.rejected_reports) and acknowledged, so a superseded worker stops resending it.
  void on_report(const std::string& worker, proto::Report report);
  void progress(int64_t job, int attempt, const nlohmann::json& record);

  // ---- from supervisors (post) ----------------------------------------------------------------
  void attempt_running(int64_t job, int attempt, const std::string& reason);
  /// `unreachable`: with kUnreachable, the worker pairs whose ranks could not reach each other.
  void attempt_ended(int64_t job, int attempt, AttemptOutcome outcome, const std::string& reason,
                     std::vector<std::pair<std::string, std::string>> unreachable = {});

 private:
  struct JobEntry {
    db::JobRow row;
    std::shared_ptr<JobSupervisor> supervisor;  // while placed
    double queued_at = 0;                       // when it (re-)entered the queue
    bool preempting = false;
    bool cancel_requested = false;
    double usage_from = 0;  // start of the current usage interval
    std::optional<sched::Pending> pending;
    // Rule 8: worker pairs whose ranks could not reach each other in the last attempt.
    std::vector<std::pair<std::string, std::string>> avoid;
    nlohmann::json progress = nlohmann::json::object();  // last loss, val_loss, tokens/s …
  };
  struct WorkerView {
    std::string device = "cpu";
    std::string host;  // as its hello said: named to the ranks of a job for their errors
    bool online = false;
    int64_t job = 0;
  };

  /// Takes a newly stored QUEUED job (ignored when already held) and publishes it.
  void admit(db::JobRow row);
  /// Serialises the job for the REST edge (JobViews); after every change of a job.
  void publish(const JobEntry& e);
  void end_attempt(int64_t job, int attempt, AttemptOutcome outcome, const std::string& reason,
                   const std::vector<std::pair<std::string, std::string>>& unreachable);
  void transition(JobEntry& e, const std::string& to, const std::string& reason);
  void release_workers(JobEntry& e);
  void reschedule();
  void start_attempt(JobEntry& e, const std::vector<std::string>& workers, bool reattach);
  void persist_progress();
  void reject_report(const std::string& worker, const proto::Report& report,
                     const std::string& why);
  nlohmann::json to_json(const JobEntry& e) const;

  Hub& hub_;
  boost::asio::io_context& io_;
  std::map<int64_t, JobEntry> jobs_;
  std::map<int64_t, db::UserRow> users_;
  std::map<int64_t, int> experiment_limits_;  // experiment → max_parallel (0 = no limit)
  std::map<std::string, WorkerView> workers_;
  sched::UsageLedger usage_;
  boost::asio::steady_timer progress_timer_;
  std::set<int64_t> progress_dirty_;
  int64_t rejected_reports_ = 0;
  std::map<std::string, int64_t> rejected_by_worker_;
};

}  // namespace mohge::coord
