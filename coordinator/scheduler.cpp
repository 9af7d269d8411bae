#include "coordinator/scheduler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "api/protocol.hpp"
#include "coordinator/checkpoint_registry.hpp"
#include "coordinator/job_supervisor.hpp"
#include "coordinator/job_views.hpp"
#include "coordinator/metrics_sink.hpp"
#include "coordinator/store.hpp"
#include "coordinator/worker_registry.hpp"

namespace mohge::coord {

using nlohmann::json;

namespace {

const std::vector<std::string>& all_states() {
  static const std::vector<std::string> states = {"QUEUED",    "STARTING",  "RUNNING", "RECOVERING",
                                                  "PREEMPTED", "SUCCEEDED", "FAILED",  "CANCELED"};
  return states;
}

Error no_job(int64_t id) {
  return Error{ErrorCode::kNotFound, "no job with id " + std::to_string(id), ""};
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

bool job_state_terminal(const std::string& state) {
  return state == "SUCCEEDED" || state == "FAILED" || state == "CANCELED";
}

Scheduler::Scheduler(boost::asio::io_context& io, Hub& hub)
    : Actor(io.get_executor()), hub_(hub), io_(io), progress_timer_(strand_) {}

Scheduler::~Scheduler() = default;

Status Scheduler::load(db::Repository& repo) {
  Result<std::vector<db::UserRow>> users = repo.list_users();
  if (!users.ok()) return users.error();
  for (const db::UserRow& u : users.value()) users_[u.id] = u;
  Result<std::vector<db::WorkerRow>> workers = repo.list_workers();
  if (!workers.ok()) return workers.error();
  for (const db::WorkerRow& w : workers.value()) workers_[w.name] = {w.backend, w.host, false, 0};

  // Every job (the REST reads are served from memory); active ones resume their lifecycle.
  for (int64_t offset = 0;; offset += 1000) {
    db::JobFilter f;
    f.offset = offset;
    f.limit = 1000;
    Result<std::pair<std::vector<db::JobRow>, int64_t>> page = repo.list_jobs(f);
    if (!page.ok()) return page.error();
    for (db::JobRow& row : page.value().first) {
      JobEntry& e = jobs_[row.id];
      e.row = std::move(row);
      e.queued_at = e.row.submitted_at;
      e.progress = {{"step", e.row.step}};
    }
    if (static_cast<int64_t>(page.value().first.size()) < 1000) break;
  }
  Result<std::vector<std::pair<int64_t, int>>> limits = repo.experiment_limits();
  if (!limits.ok()) return limits.error();
  for (const auto& [id, limit] : limits.value()) experiment_limits_[id] = limit;
  for (const auto& [id, e] : jobs_) publish(e);
  for (auto& [id, e] : jobs_) {
    const std::string& s = e.row.state;
    if (s == "PREEMPTED") transition(e, "QUEUED", "requeued after a coordinator restart");
    if ((s == "STARTING" || s == "RUNNING") && !e.row.assigned.empty()) {
      for (const std::string& w : e.row.assigned) workers_[w].job = id;
      start_attempt(e, e.row.assigned, /*reattach=*/true);
    } else if (s == "STARTING" || s == "RUNNING") {
      transition(e, "RECOVERING", "placement lost in a coordinator restart");
    }
  }
  post([this] {
    persist_progress();
    reschedule();
  });
  return {};
}

void Scheduler::admit(db::JobRow row) {
  if (jobs_.contains(row.id)) return;  // a re-submit that found it stored
  JobEntry& e = jobs_[row.id];
  e.row = std::move(row);
  e.queued_at = e.row.submitted_at;
  e.progress = {{"step", 0}};
  publish(e);
}

void Scheduler::add_job(db::JobRow row) {
  post([this, row = std::move(row)]() mutable {
    admit(std::move(row));
    reschedule();
  });
}

void Scheduler::add_experiment(int64_t id, int max_parallel, std::vector<db::JobRow> rows) {
  post([this, id, max_parallel, rows = std::move(rows)]() mutable {
    experiment_limits_[id] = max_parallel;
    for (db::JobRow& row : rows) admit(std::move(row));
    reschedule();
  });
}

Result<json> Scheduler::experiment_jobs(const Caller& caller, int64_t experiment) {
  json out = json::array();
  for (const auto& [id, e] : jobs_) {
    if (e.row.experiment_id != experiment) continue;
    if (!caller.admin && e.row.user_id != caller.user_id) continue;
    json j = to_json(e);
    j["spec"] = e.row.spec;
    out.push_back(std::move(j));
  }
  return out;
}

Result<json> Scheduler::experiment_states(const std::vector<int64_t>& experiments) {
  json out = json::object();
  for (const int64_t x : experiments) out[std::to_string(x)] = json::object();
  for (const auto& [id, e] : jobs_) {
    if (e.row.experiment_id == 0) continue;
    const std::string key = std::to_string(e.row.experiment_id);
    if (!out.contains(key)) continue;
    json& states = out[key];
    states[e.row.state] = states.value(e.row.state, 0) + 1;
  }
  return out;
}

Result<json> Scheduler::cancel_experiment(const Caller& caller, int64_t experiment) {
  json canceled = json::array();
  for (auto& [id, e] : jobs_) {
    if (e.row.experiment_id != experiment || job_state_terminal(e.row.state)) continue;
    if (!caller.admin && e.row.user_id != caller.user_id) continue;
    if (e.cancel_requested) continue;
    Result<json> r = cancel(caller, id);
    if (r.ok()) canceled.push_back(id);
  }
  return json{{"id", experiment}, {"canceled", canceled}};
}

void Scheduler::set_user(const db::UserRow& user) {
  post([this, user] {
    users_[user.id] = user;
    reschedule();
  });
}

Result<int> Scheduler::user_quota(int64_t user_id) {
  const auto it = users_.find(user_id);
  if (it == users_.end()) return Error{ErrorCode::kNotFound, "unknown user", ""};
  return it->second.max_workers;
}

Status Scheduler::check_access(const Caller& caller, int64_t id) {
  const auto it = jobs_.find(id);
  if (it == jobs_.end() || (!caller.admin && it->second.row.user_id != caller.user_id))
    return no_job(id);
  return {};
}

json Scheduler::to_json(const JobEntry& e) const {
  const db::JobRow& r = e.row;
  json progress = e.progress;
  progress["step"] = r.step;
  progress["steps"] = r.steps;
  progress["fraction"] =
      r.steps > 0 ? static_cast<double>(r.step) / static_cast<double>(r.steps) : 0.0;
  json j = {{"id", r.id},
            {"name", r.name},
            {"user", r.user},
            {"state", r.state},
            {"reason", r.reason},
            {"priority", r.priority},
            {"workers", r.workers},
            {"device", r.device},
            {"submitted_at", r.submitted_at},
            {"started_at", r.started_at > 0 ? json(r.started_at) : json(nullptr)},
            {"finished_at", r.finished_at > 0 ? json(r.finished_at) : json(nullptr)},
            {"restarts", r.restarts},
            {"max_restarts", r.max_restarts},
            {"attempt", r.attempt},
            {"assigned", r.assigned},
            {"run_dir", r.run_dir},
            {"progress", progress}};
  if (r.experiment_id != 0) {
    j["experiment"] = {{"id", r.experiment_id},
                       {"variant", r.experiment_point.value("variant", "")},
                       {"group", r.experiment_point.value("group", "")},
                       {"coords", r.experiment_point.value("coords", json::object())}};
  }
  if (e.pending) {
    j["queue_position"] = e.pending->position;
    j["pending_reason"] = e.pending->reason;
  }
  if (e.cancel_requested && !job_state_terminal(r.state)) j["cancel_requested"] = true;
  return j;
}

void Scheduler::publish(const JobEntry& e) {
  json j = to_json(e);
  j["spec"] = e.row.spec;
  // Stored names and specs are valid UTF-8 (the validators keep them so), but a throw here, on
  // the strand, would stop the coordinator at every start: replace, never throw.
  hub_.views->publish(e.row.id, e.row.user_id,
                      j.dump(-1, ' ', false, json::error_handler_t::replace));
}

Result<json> Scheduler::job_json(const Caller& caller, int64_t id) {
  if (Status s = check_access(caller, id); !s.ok()) return s.error();
  json j = to_json(jobs_.at(id));
  j["spec"] = jobs_.at(id).row.spec;
  return j;
}

Result<json> Scheduler::list_jobs(const Caller& caller, const JobListQuery& q) {
  if (q.state &&
      std::find(all_states().begin(), all_states().end(), *q.state) == all_states().end()) {
    return invalid_argument("state",
                            "must be one of QUEUED, STARTING, RUNNING, RECOVERING, "
                            "PREEMPTED, SUCCEEDED, FAILED, CANCELED");
  }
  if (q.user && !caller.admin && *q.user != caller.user) {
    return Error{ErrorCode::kPermissionDenied, "only an admin may list another user's jobs",
                 "user"};
  }
  json jobs = json::array();
  int64_t total = 0;
  for (auto it = jobs_.rbegin(); it != jobs_.rend(); ++it) {  // newest first
    const JobEntry& e = it->second;
    if (!caller.admin && e.row.user_id != caller.user_id) continue;
    if (q.user && e.row.user != *q.user) continue;
    if (q.state && e.row.state != *q.state) continue;
    if (total >= q.offset && total < q.offset + q.limit) jobs.push_back(to_json(e));
    ++total;
  }
  return json{{"jobs", jobs}, {"total", total}, {"offset", q.offset}, {"limit", q.limit}};
}

Result<json> Scheduler::cancel(const Caller& caller, int64_t id) {
  if (Status s = check_access(caller, id); !s.ok()) return s.error();
  JobEntry& e = jobs_.at(id);
  if (job_state_terminal(e.row.state)) {
    return Error{ErrorCode::kFailedPrecondition,
                 "job " + std::to_string(id) + " is already " + e.row.state, ""};
  }
  const std::string reason = "canceled by " + caller.user;
  if (e.supervisor) {
    e.cancel_requested = true;
    publish(e);
    e.supervisor->cancel(reason);
  } else {
    transition(e, "CANCELED", reason);
    reschedule();
  }
  return to_json(e);
}

Result<json> Scheduler::cluster_json() {
  json workers = {{"total", 0}, {"online", 0}, {"busy", 0}, {"lost", 0}};
  for (const auto& [name, w] : workers_) {
    workers["total"] = workers["total"].get<int>() + 1;
    if (w.online) workers["online"] = workers["online"].get<int>() + 1;
    if (w.online && w.job != 0) workers["busy"] = workers["busy"].get<int>() + 1;
  }
  json states = json::object();
  for (const std::string& s : all_states()) states[s] = 0;
  std::vector<const JobEntry*> queue;
  for (const auto& [id, e] : jobs_) {
    states[e.row.state] = states[e.row.state].get<int>() + 1;
    if (e.pending) queue.push_back(&e);
  }
  std::sort(queue.begin(), queue.end(), [](const JobEntry* a, const JobEntry* b) {
    return a->pending->position < b->pending->position;
  });
  json q = json::array();
  for (const JobEntry* e : queue) {
    q.push_back({{"id", e->row.id},
                 {"name", e->row.name},
                 {"user", e->row.user},
                 {"priority", e->row.priority},
                 {"workers", e->row.workers},
                 {"state", e->row.state},
                 {"queue_position", e->pending->position},
                 {"pending_reason", e->pending->reason}});
  }
  return json{{"workers", workers},
              {"jobs", states},
              {"queue", q},
              {"rejected_reports", rejected_reports_}};
}

void Scheduler::worker_online(const std::string& name, const std::string& device,
                              const std::string& host,
                              const std::vector<proto::RunningRank>& running) {
  post([this, name, device, host, running] {
    WorkerView& w = workers_[name];
    w.device = device;
    w.host = host;
    w.online = true;
    for (const proto::RunningRank& r : running) {
      const auto it = jobs_.find(r.job);
      if (it != jobs_.end() && it->second.supervisor && it->second.row.attempt == r.attempt &&
          w.job == r.job) {
        it->second.supervisor->rank_alive(r.rank);
      } else {
        // A rank of an attempt that no longer exists (recovered elsewhere, or finished).
        hub_.registry->send(name, {{"type", proto::kCancel},
                                   {"job", r.job},
                                   {"attempt", r.attempt},
                                   {"reason", "this attempt is no longer current"}});
      }
    }
    reschedule();
  });
}

void Scheduler::worker_lost(const std::string& name, const std::string& why) {
  post([this, name, why] {
    WorkerView& w = workers_[name];
    w.online = false;
    if (w.job != 0) {
      const auto it = jobs_.find(w.job);
      if (it != jobs_.end() && it->second.supervisor) it->second.supervisor->worker_lost(name, why);
    }
    reschedule();
  });
}

void Scheduler::on_report(const std::string& worker, proto::Report report) {
  post([this, worker, report = std::move(report)]() mutable {
    const auto it = jobs_.find(report.job);
    if (it == jobs_.end() || !it->second.supervisor || it->second.row.attempt != report.attempt)
      return reject_report(worker, report, "not a current attempt");
    JobEntry& e = it->second;
    if (report.rank >= static_cast<int>(e.row.assigned.size()) ||
        e.row.assigned[static_cast<size_t>(report.rank)] != worker)
      return reject_report(worker, report, "the worker does not hold that rank");
    auto ack_now = [&] {
      if (report.seq)
        hub_.registry->send(worker, {{"type", proto::kAck}, {"seqs", json::array({*report.seq})}});
    };
    if (auto* rv = std::get_if<proto::RvPublish>(&report.body)) {
      e.supervisor->on_rv_publish(report.rank, rv->round, rv->blob);
      ack_now();
    } else if (auto* exited = std::get_if<proto::RankExited>(&report.body)) {
      e.supervisor->on_rank_exited(report.rank, *exited);
      ack_now();
    } else if (auto* metrics = std::get_if<proto::MetricsReport>(&report.body)) {
      if (report.rank != 0) return reject_report(worker, report, "metrics come from rank 0");
      hub_.metrics->on_metrics(worker, report.job, report.attempt, report.seq,
                               std::move(metrics->records));
    } else if (auto* log = std::get_if<proto::LogReport>(&report.body)) {
      hub_.metrics->on_log(worker, report.job, report.rank, report.seq, std::move(*log));
    } else if (auto* ck = std::get_if<proto::CheckpointWritten>(&report.body)) {
      if (!CheckpointRegistry::inside_checkpoints(hub_.options.storage, e.row.run_dir, ck->path))
        return reject_report(worker, report, "the checkpoint folder is outside the job's run");
      hub_.checkpoints->on_report(worker, report.seq, report.job, report.rank, e.row.run_dir,
                                  std::move(*ck));
    }
  });
}

void Scheduler::reject_report(const std::string& worker, const proto::Report& report,
                              const std::string& why) {
  ++rejected_reports_;
  const int64_t n = ++rejected_by_worker_[worker];
  if (n <= 5 || n % 1000 == 0) {
    spdlog::warn("worker {}: {} for job {} attempt {} rank {} dropped ({}; {} so far from it)",
                 worker, report.type, report.job, report.attempt, report.rank, why, n);
  }
  if (report.seq)
    hub_.registry->send(worker, {{"type", proto::kAck}, {"seqs", json::array({*report.seq})}});
}

void Scheduler::progress(int64_t job, int attempt, const json& record) {
  post([this, job, attempt, record] {
    const auto it = jobs_.find(job);
    if (it == jobs_.end() || it->second.row.attempt != attempt) return;
    JobEntry& e = it->second;
    const int64_t step = record.value("step", int64_t{0});
    if (step > e.row.step) e.row.step = step;
    for (const char* k : {"loss", "val_loss", "tokens_per_s", "step_ms", "imbalance"})
      if (record.contains(k) && record[k].is_number()) e.progress[k] = record[k];
    progress_dirty_.insert(job);
    publish(e);
  });
}

void Scheduler::persist_progress() {
  for (int64_t id : progress_dirty_) {
    const auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    hub_.store->write("job progress",
                      [row = it->second.row](db::Repository& r) { return r.update_job(row); });
  }
  progress_dirty_.clear();
  progress_timer_.expires_after(std::chrono::seconds(2));
  progress_timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) persist_progress();
  });
}

void Scheduler::attempt_running(int64_t job, int attempt, const std::string& reason) {
  post([this, job, attempt, reason] {
    const auto it = jobs_.find(job);
    if (it == jobs_.end() || it->second.row.attempt != attempt) return;
    JobEntry& e = it->second;
    if (e.row.state == "STARTING")
      transition(e, "RUNNING", reason);
    else if (e.row.state == "RUNNING") {
      // Reattached: record it without a state change.
      hub_.store->write("event", [row = e.row, reason, now = hub_.now()](db::Repository& r) {
        return r.update_job(row, db::EventRow{0, row.id, now, "RUNNING", "RUNNING", reason});
      });
    }
  });
}

void Scheduler::attempt_ended(int64_t job, int attempt, AttemptOutcome outcome,
                              const std::string& reason,
                              std::vector<std::pair<std::string, std::string>> unreachable) {
  // The rank's last metrics were sent before its exit: let them reach SQLite first.
  hub_.metrics->flush_then([this, job, attempt, outcome, reason, unreachable] {
    post([this, job, attempt, outcome, reason, unreachable] {
      end_attempt(job, attempt, outcome, reason, unreachable);
    });
  });
}

void Scheduler::end_attempt(int64_t job, int attempt, AttemptOutcome outcome,
                            const std::string& reason,
                            const std::vector<std::pair<std::string, std::string>>& unreachable) {
  {
    const auto it = jobs_.find(job);
    if (it == jobs_.end() || it->second.row.attempt != attempt) return;
    JobEntry& e = it->second;
    const double now = hub_.now();
    usage_.add(e.row.user_id, e.row.workers, e.usage_from, now);
    e.avoid = outcome == AttemptOutcome::kUnreachable
                  ? unreachable
                  : std::vector<std::pair<std::string, std::string>>{};
    release_workers(e);
    e.supervisor.reset();
    e.preempting = false;
    switch (outcome) {
      case AttemptOutcome::kSucceeded:
        transition(e, "SUCCEEDED", reason);
        break;
      case AttemptOutcome::kFailed:
        transition(e, "FAILED", reason);
        break;
      case AttemptOutcome::kCanceled:
        transition(e, "CANCELED", reason);
        break;
      case AttemptOutcome::kPreempted:
        transition(e, "PREEMPTED", reason);
        e.queued_at = now;
        transition(e, "QUEUED", "requeued after preemption; resumes from its checkpoint");
        break;
      case AttemptOutcome::kLost:
      case AttemptOutcome::kUnreachable:
        if (e.cancel_requested) {
          transition(e, "CANCELED",
                     outcome == AttemptOutcome::kLost
                         ? "canceled (a worker was lost while stopping)"
                         : "canceled (a rank lost its peer while stopping)");
        } else if (e.row.restarts < e.row.max_restarts) {
          ++e.row.restarts;
          transition(e, "RECOVERING",
                     reason + "; restart " + std::to_string(e.row.restarts) + " of " +
                         std::to_string(e.row.max_restarts) +
                         " from the last complete checkpoint on healthy workers");
        } else {
          transition(
              e, "FAILED",
              reason + "; max_restarts (" + std::to_string(e.row.max_restarts) + ") reached");
        }
        break;
    }
    reschedule();
  }
}

void Scheduler::release_workers(JobEntry& e) {
  for (const std::string& w : e.row.assigned) {
    auto it = workers_.find(w);
    if (it != workers_.end() && it->second.job == e.row.id) it->second.job = 0;
  }
  e.row.assigned.clear();
}

void Scheduler::transition(JobEntry& e, const std::string& to, const std::string& reason) {
  if (job_state_terminal(e.row.state)) {
    spdlog::warn("job {}: ignored {} → {} ({}): terminal states are final", e.row.id, e.row.state,
                 to, reason);
    return;
  }
  const std::string from = e.row.state;
  const double now = hub_.now();
  e.row.state = to;
  e.row.reason = reason;
  if (to == "RUNNING" && e.row.started_at == 0) e.row.started_at = now;
  if (job_state_terminal(to)) {
    e.row.finished_at = now;
    e.pending.reset();
  }
  if (to != "STARTING" && to != "RUNNING") e.pending.reset();
  spdlog::info("job {} ({}): {} → {}: {}", e.row.id, e.row.name, from, to, reason);
  publish(e);
  hub_.store->write("job transition",
                    [row = e.row, ev = db::EventRow{0, e.row.id, now, from, to, reason}](
                        db::Repository& r) { return r.update_job(row, ev); });
}

void Scheduler::start_attempt(JobEntry& e, const std::vector<std::string>& workers, bool reattach) {
  e.row.assigned = workers;
  for (const std::string& w : workers) workers_[w].job = e.row.id;
  e.usage_from = hub_.now();
  e.pending.reset();
  if (e.row.run_dir.empty()) e.row.run_dir = "runs/job-" + std::to_string(e.row.id);
  JobSupervisor::Launch launch;
  launch.job = e.row.id;
  launch.workers = workers;
  launch.spec = e.row.spec;
  launch.run_dir = e.row.run_dir;
  for (const std::string& w : workers) {
    // Printable ASCII only (the launch's rule for peers).
    auto ascii = [](std::string s) {
      for (char& c : s)
        if (c < 0x20 || c >= 0x7f) c = '?';
      return s.substr(0, proto::kMaxPeerNameBytes);
    };
    launch.peers.push_back({ascii(w), ascii(workers_[w].host)});
  }
  if (!reattach) {
    ++e.row.attempt;
    launch.attempt = e.row.attempt;
    launch.resume = e.row.attempt > 1;
    transition(e, "STARTING",
               "placed on " + join(workers) +
                   (launch.resume ? "; resuming from the last checkpoint" : ""));
  }
  launch.attempt = e.row.attempt;
  e.supervisor = std::make_shared<JobSupervisor>(io_, hub_, std::move(launch));
  if (reattach) {
    e.supervisor->reattach();
  } else {
    e.supervisor->start();
  }
}

void Scheduler::reschedule() {
  const double now = hub_.now();
  sched::Snapshot snap;
  for (const auto& [name, w] : workers_) snap.workers.push_back({name, w.device, w.online, w.job});
  std::map<int64_t, double> running_usage;
  for (const auto& [id, e] : jobs_) {
    if (e.supervisor) {
      snap.running.push_back({id, e.row.user_id, e.row.priority, e.row.assigned, e.usage_from,
                              e.preempting, e.row.experiment_id});
      running_usage[e.row.user_id] += e.row.workers * (now - e.usage_from);
    } else if (e.row.state == "QUEUED" || e.row.state == "RECOVERING") {
      snap.queued.push_back({id, e.row.user_id, e.row.priority, e.row.workers, e.row.device,
                             e.queued_at, e.row.experiment_id});
      if (!e.avoid.empty()) snap.avoid[id] = e.avoid;
    } else {
      continue;
    }
    if (!snap.users.count(e.row.user_id)) {
      const auto u = users_.find(e.row.user_id);
      sched::User user;
      user.id = e.row.user_id;
      user.name = u != users_.end() ? u->second.name : e.row.user;
      user.max_workers = u != users_.end() ? u->second.max_workers : 0;
      snap.users[user.id] = user;
    }
  }
  for (const auto& [id, limit] : experiment_limits_)
    if (limit > 0) snap.experiment_limits[id] = limit;
  for (auto& [id, u] : snap.users) u.recent_usage = usage_.usage(id, now) + running_usage[id];
  const sched::Decision d = sched::schedule(snap);
  for (auto& [id, e] : jobs_) {
    const auto it = d.pending.find(id);
    const std::optional<sched::Pending> next =
        it == d.pending.end() ? std::nullopt : std::optional<sched::Pending>(it->second);
    const bool changed =
        next.has_value() != e.pending.has_value() ||
        (next && (next->position != e.pending->position || next->reason != e.pending->reason));
    e.pending = next;
    if (changed) publish(e);
  }
  for (const sched::Start& s : d.starts) start_attempt(jobs_.at(s.job), s.workers, false);
  for (int64_t id : d.preempt) {
    JobEntry& e = jobs_.at(id);
    if (e.supervisor && !e.preempting) {
      e.preempting = true;
      spdlog::info("job {}: preempting for a higher-priority job", id);
      e.supervisor->preempt();
    }
  }
}

}  // namespace mohge::coord
