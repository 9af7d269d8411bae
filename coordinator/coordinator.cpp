#include "coordinator/coordinator.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "api/experiment_spec.hpp"
#include "api/job_spec.hpp"
#include "api/protocol.hpp"
#include "api/rest_server.hpp"
#include "coordinator/checkpoint_registry.hpp"
#include "coordinator/experiment_table.hpp"
#include "coordinator/job_views.hpp"
#include "coordinator/metric_rows.hpp"
#include "coordinator/metrics_sink.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"
#include "coordinator/worker_registry.hpp"
#include "storage/sha256.hpp"
#include "storage/sharded.hpp"

#ifndef MOHGE_VERSION
#define MOHGE_VERSION "0.0.0"
#endif

namespace mohge::coord {

namespace fs = std::filesystem;
using nlohmann::json;

std::string new_token_secret() {
  unsigned char bytes[24];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) throw std::runtime_error("RAND_bytes failed");
  return "mohge_" + hex_encode(bytes, sizeof(bytes));
}

namespace {

constexpr auto kAskTimeout = std::chrono::seconds(10);

bool valid_user_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-'))
      return false;
  return std::islower(static_cast<unsigned char>(s[0])) ||
         std::isdigit(static_cast<unsigned char>(s[0]));
}

// Writes a secret file readable only by its owner: the file is created with mode 0600 under a
// temporary name, synced, and renamed over `file`, so no reader ever sees it partial or open.
Status write_owner_only(const fs::path& file, const std::string& text) {
  const fs::path tmp = file.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && ::fchmod(fd, 0600) == 0 &&
            ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  if (fd >= 0) ok = ::close(fd) == 0 && ok;
  if (ok) ok = ::rename(tmp.c_str(), file.c_str()) == 0;
  if (!ok) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    return Error{ErrorCode::kInternal, "cannot write " + file.string() + ": " + why, "--storage"};
  }
  return {};
}

Error forbidden(const std::string& what) {
  return Error{ErrorCode::kPermissionDenied, what + " needs the admin role", ""};
}

}  // namespace

struct Coordinator::Impl : ApiService {
  CoordinatorOptions options;
  boost::asio::io_context io;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  Hub hub;
  std::unique_ptr<Store> store;
  std::unique_ptr<WorkerRegistry> registry;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<MetricsSink> metrics;
  std::unique_ptr<CheckpointRegistry> checkpoints;
  std::unique_ptr<RestServer> rest;
  JobViews views;
  fs::path db_path;

  // Token hash → caller. REST threads read it on every request and it changes only when
  // tokens are revoked or users change: a reader-writer lock is the cheap, obviously correct
  // choice here (an actor round trip per request would cost more than the request).
  std::shared_mutex auth_mu;
  std::map<std::string, Caller> auth_cache;

  // Checkpoint downloads are consolidated here, off the REST threads (a large checkpoint takes
  // seconds). The map of requests waiting for a build is shared by the REST threads and this
  // pool: a small lock, held only to add or take waiters.
  boost::asio::thread_pool downloads_pool{1};
  std::mutex downloads_mu;
  std::map<int64_t, std::vector<std::function<void(Result<fs::path>)>>> downloads_waiting;

  // Running sums of each experiment job's windowed series, by (job, metric): GET
  // /experiments/{id} reads only the rows added since the previous request. REST threads share
  // it; a lock held while the few new rows are summed is the simple correct choice (these
  // requests are rare next to job reads, and each costs a handful of index lookups).
  std::mutex windows_mu;
  std::map<std::pair<int64_t, std::string>, db::MetricWindow> windows;

  // Read-only connections for the REST threads' reads (WAL readers never block the writer).
  std::mutex readers_mu;  // guards the free list only
  std::vector<std::unique_ptr<db::Repository>> readers;

  template <class T, class F>
  Result<T> read(F&& f) {
    std::unique_ptr<db::Repository> repo;
    {
      std::lock_guard<std::mutex> lock(readers_mu);
      if (!readers.empty()) {
        repo = std::move(readers.back());
        readers.pop_back();
      }
    }
    if (!repo) {
      Result<std::unique_ptr<db::Repository>> r = db::Repository::open(db_path, true);
      if (!r.ok()) return r.error();
      repo = std::move(r).value();
    }
    Result<T> out = f(*repo);
    std::lock_guard<std::mutex> lock(readers_mu);
    readers.push_back(std::move(repo));
    return out;
  }

  Status access(const Caller& c, int64_t job) {
    Result<bool> r = scheduler->ask<bool>(
        [&, c, job]() -> Result<bool> {
          Status s = scheduler->check_access(c, job);
          if (!s.ok()) return s.error();
          return true;
        },
        kAskTimeout);
    return r.ok() ? Status() : Status(r.error());
  }

  // ---- ApiService -------------------------------------------------------------------------
  Result<Caller> authenticate(const std::string& token) override {
    const std::string hash = sha256_hex(token);
    {
      std::shared_lock<std::shared_mutex> lock(auth_mu);
      const auto it = auth_cache.find(hash);
      if (it != auth_cache.end()) return it->second;
    }
    Result<std::optional<db::UserRow>> user = read<std::optional<db::UserRow>>(
        [&](db::Repository& r) { return r.find_user_by_token(hash); });
    if (!user.ok()) return user.error();
    if (!user.value()) {
      return Error{ErrorCode::kUnauthenticated, "unknown or revoked token", "Authorization"};
    }
    Caller c{user.value()->id, user.value()->name, user.value()->role == "admin"};
    std::unique_lock<std::shared_mutex> lock(auth_mu);
    auth_cache[hash] = c;
    return c;
  }

  /// The stored form of a validated spec submitted by `c`.
  db::JobRow job_row(const Caller& c, const JobSpec& s, const std::string& key, double now) {
    db::JobRow row;
    row.user_id = c.user_id;
    row.user = c.user;
    row.name = s.name;
    row.spec = job_spec_to_json(s);
    row.state = "QUEUED";
    row.priority = s.priority;
    row.workers = s.resources.workers;
    row.device = s.resources.device;
    row.idempotency_key = key;
    row.submitted_at = now;
    row.max_restarts = s.max_restarts;
    row.steps = s.train.steps;
    return row;
  }

  /// kUnprocessable (naming resources.workers) when a job of the largest gang in `workers`
  /// exceeds the caller's quota; `what` names that job in the message.
  Status check_quota(const Caller& c, int workers, const std::string& what) {
    Result<int> quota = scheduler->ask<int>(
        [&, uid = c.user_id] { return scheduler->user_quota(uid); }, kAskTimeout);
    if (!quota.ok()) return quota.error();
    const std::string field = "resources.workers";
    if (quota.value() > 0 && workers > quota.value()) {
      return Error{ErrorCode::kUnprocessable,
                   what + "asks for " + std::to_string(workers) + " workers but " + c.user +
                       "'s quota is " + std::to_string(quota.value()) + " concurrent workers",
                   field};
    }
    return {};
  }

  Result<SubmitResult> submit_job(const Caller& c, const json& body,
                                  const std::string& key) override {
    if (!body.is_object()) return invalid_argument("body", "must be a JSON object (a job spec)");
    Result<JobSpec> spec = parse_job_spec(body);
    if (!spec.ok()) return spec.error();
    const JobSpec& s = spec.value();
    if (Status q = check_quota(c, s.resources.workers, ""); !q.ok()) return q.error();
    const db::JobRow row = job_row(c, s, key, hub.now());
    Result<db::JobRow> inserted = store->call<db::JobRow>(
        [row, now = row.submitted_at](db::Repository& r) {
          return r.insert_job(row, "submitted by " + row.user, now);
        },
        kAskTimeout);
    bool created = true;
    if (!inserted.ok() && inserted.error().code == ErrorCode::kAlreadyExists && !key.empty()) {
      Result<std::optional<db::JobRow>> prior = read<std::optional<db::JobRow>>(
          [&](db::Repository& r) { return r.find_job_by_key(c.user_id, key); });
      if (!prior.ok()) return prior.error();
      if (!prior.value()) return inserted.error();
      if (prior.value()->spec != row.spec) {
        return Error{ErrorCode::kFailedPrecondition,
                     "this Idempotency-Key was already used for job " +
                         std::to_string(prior.value()->id) + " with a different spec",
                     "Idempotency-Key"};
      }
      inserted = *prior.value();
      created = false;
    }
    if (!inserted.ok()) return inserted.error();
    const int64_t id = inserted.value().id;
    if (created) scheduler->add_job(inserted.value());
    Result<json> job =
        scheduler->ask<json>([&, c, id] { return scheduler->job_json(c, id); }, kAskTimeout);
    if (!job.ok()) return job.error();
    return SubmitResult{job.value(), created};
  }

  // ---- experiments ------------------------------------------------------------------------
  Result<SubmitResult> submit_experiment(const Caller& c, const json& body,
                                         const std::string& key) override {
    if (!body.is_object()) return invalid_argument("body", "must be a JSON object (an experiment)");
    Result<ExperimentPlan> plan = parse_experiment(body);
    if (!plan.ok()) return plan.error();
    const ExperimentPlan& p = plan.value();
    const double now = hub.now();
    db::ExperimentRow row;
    row.user_id = c.user_id;
    row.user = c.user;
    row.name = p.name;
    row.request = p.request;
    row.max_parallel = p.max_parallel;
    row.idempotency_key = key;
    row.created_at = now;
    const ExperimentPoint* largest = &p.points.front();  // the point with the largest gang
    for (const ExperimentPoint& point : p.points)
      if (point.spec.resources.workers > largest->spec.resources.workers) largest = &point;
    if (Status q = check_quota(c, largest->spec.resources.workers, largest->spec.name + " ");
        !q.ok())
      return q.error();
    std::vector<db::JobRow> jobs;
    for (const ExperimentPoint& point : p.points) {
      db::JobRow job = job_row(c, point.spec, "", now);
      job.experiment_point = {{"index", point.index},
                              {"variant", point.variant},
                              {"group", point.group},
                              {"coords", point.coords}};
      jobs.push_back(std::move(job));
    }
    using Stored = std::pair<db::ExperimentRow, std::vector<db::JobRow>>;
    Result<Stored> inserted = store->call<Stored>(
        [row, jobs, now](db::Repository& r) {
          return r.insert_experiment(
              row, jobs, "submitted by " + row.user + " in experiment " + row.name, now);
        },
        kAskTimeout);
    bool created = true;
    int64_t id = 0;
    if (!inserted.ok() && inserted.error().code == ErrorCode::kAlreadyExists && !key.empty()) {
      Result<std::optional<db::ExperimentRow>> prior = read<std::optional<db::ExperimentRow>>(
          [&](db::Repository& r) { return r.find_experiment_by_key(c.user_id, key); });
      if (!prior.ok()) return prior.error();
      if (!prior.value()) return inserted.error();
      if (prior.value()->request != row.request) {
        return Error{ErrorCode::kFailedPrecondition,
                     "this Idempotency-Key was already used for experiment " +
                         std::to_string(prior.value()->id) + " with a different request",
                     "Idempotency-Key"};
      }
      id = prior.value()->id;
      created = false;
      // The first submit may have committed after its caller gave up waiting, before its
      // jobs reached the scheduler: hand them over again (it keeps the ones it holds).
      Result<std::vector<db::JobRow>> stored = read<std::vector<db::JobRow>>(
          [&](db::Repository& r) { return r.list_experiment_jobs(id); });
      if (!stored.ok()) return stored.error();
      scheduler->add_experiment(id, prior.value()->max_parallel, std::move(stored).value());
    } else if (!inserted.ok()) {
      return inserted.error();
    } else {
      id = inserted.value().first.id;
      scheduler->add_experiment(id, row.max_parallel, std::move(inserted.value().second));
    }
    Result<json> view = get_experiment(c, id);
    if (!view.ok()) return view.error();
    return SubmitResult{view.value(), created};
  }

  /// RUNNING while any job is placed or recovering, QUEUED while others wait (or before the
  /// scheduler has its jobs); when all are finished, SUCCEEDED if all succeeded, FAILED if any
  /// failed, CANCELED otherwise.
  static std::string experiment_state(const json& states) {
    auto count = [&](const char* s) { return states.value(s, 0); };
    if (count("STARTING") + count("RUNNING") + count("RECOVERING") > 0) return "RUNNING";
    if (count("QUEUED") + count("PREEMPTED") > 0 || states.empty()) return "QUEUED";
    if (count("FAILED") > 0) return "FAILED";
    if (count("CANCELED") > 0) return "CANCELED";
    return "SUCCEEDED";
  }

  static json experiment_summary(const db::ExperimentRow& e, const json& states) {
    int jobs = 0;
    for (const auto& [state, n] : states.items()) jobs += n.get<int>();
    return {{"id", e.id},
            {"name", e.name},
            {"user", e.user},
            {"description", e.request.value("description", "")},
            {"created_at", e.created_at},
            {"max_parallel", e.max_parallel},
            {"num_jobs", jobs},
            {"states", states},
            {"state", experiment_state(states)}};
  }

  Result<json> list_experiments(const Caller& c, const ExperimentListQuery& q) override {
    std::optional<int64_t> user;
    if (!c.admin) user = c.user_id;
    if (q.user && !c.admin && *q.user != c.user) {
      return Error{ErrorCode::kPermissionDenied,
                   "only an admin may list another user's experiments", "user"};
    }
    if (q.user && c.admin) {
      Result<std::optional<db::UserRow>> u = read<std::optional<db::UserRow>>(
          [&](db::Repository& r) { return r.get_user_by_name(*q.user); });
      if (!u.ok()) return u.error();
      if (!u.value())
        return json{
            {"experiments", json::array()}, {"total", 0}, {"offset", q.offset}, {"limit", q.limit}};
      user = u.value()->id;
    }
    using Page = std::pair<std::vector<db::ExperimentRow>, int64_t>;
    Result<Page> page =
        read<Page>([&](db::Repository& r) { return r.list_experiments(user, q.offset, q.limit); });
    if (!page.ok()) return page.error();
    std::vector<int64_t> ids;
    for (const db::ExperimentRow& e : page.value().first) ids.push_back(e.id);
    Result<json> states =
        scheduler->ask<json>([&, ids] { return scheduler->experiment_states(ids); }, kAskTimeout);
    if (!states.ok()) return states.error();
    json out = json::array();
    for (const db::ExperimentRow& e : page.value().first)
      out.push_back(experiment_summary(e, states.value()[std::to_string(e.id)]));
    return json{{"experiments", out},
                {"total", page.value().second},
                {"offset", q.offset},
                {"limit", q.limit}};
  }

  /// The experiment if the caller may see it (kNotFound otherwise, as for jobs).
  Result<db::ExperimentRow> visible_experiment(const Caller& c, int64_t id) {
    Result<std::optional<db::ExperimentRow>> e = read<std::optional<db::ExperimentRow>>(
        [&](db::Repository& r) { return r.get_experiment(id); });
    if (!e.ok()) return e.error();
    if (!e.value() || (!c.admin && e.value()->user_id != c.user_id))
      return Error{ErrorCode::kNotFound, "no experiment with id " + std::to_string(id), ""};
    return *e.value();
  }

  Result<json> get_experiment(const Caller& c, int64_t id) override {
    Result<db::ExperimentRow> e = visible_experiment(c, id);
    if (!e.ok()) return e.error();
    Result<json> jobs =
        scheduler->ask<json>([&, c, id] { return scheduler->experiment_jobs(c, id); }, kAskTimeout);
    if (!jobs.ok()) return jobs.error();
    // Each job's series for the table, read from SQLite (the REST thread's read connection).
    std::vector<ExperimentJobData> data;
    json states = json::object();
    for (json& j : jobs.value()) {
      ExperimentJobData d;
      d.id = j.value("id", int64_t{0});
      d.state = j.value("state", "");
      states[d.state] = states.value(d.state, 0) + 1;
      const json point = j.value("experiment", json::object());
      d.variant = point.value("variant", "");
      d.group = point.value("group", "");
      d.coords = point.value("coords", json::object());
      Result<JobSpec> spec = parse_job_spec(j.value("spec", json::object()));
      if (spec.ok()) {
        d.steps = spec.value().train.steps;
        d.params = model_param_counts(spec.value().model);
        if (spec.value().model.ffn.kind == "mohge") d.groups = spec.value().model.ffn.groups;
      }
      j.erase("spec");
      Result<bool> got =
          read<bool>([&](db::Repository& r) -> Result<bool> { return read_job_figures(r, d); });
      if (!got.ok()) return got.error();
      data.push_back(std::move(d));
    }
    json table = experiment_table(data);
    // Per-job figures beside each job (the table lists them by group, not in job order).
    std::map<int64_t, json> figures_by_id;
    for (json& f : table["jobs"]) {
      const int64_t job = f.value("id", int64_t{0});
      figures_by_id[job] = std::move(f);
    }
    for (json& j : jobs.value()) {
      const auto f = figures_by_id.find(j.value("id", int64_t{0}));
      if (f != figures_by_id.end()) j["figures"] = std::move(f->second);
    }
    json out = experiment_summary(e.value(), states);
    out["request"] = e.value().request;
    out["jobs"] = jobs.value();
    out["groups"] = table["groups"];
    return out;
  }

  /// Fills a job's figures for the table. The windowed series are read incrementally: each
  /// job keeps running sums in `windows` and only rows past its last read step are summed
  /// (by SQLite) on the next request; the validation curve is read downsampled, the last
  /// evaluation and its difficulty tables as single rows.
  Result<bool> read_job_figures(db::Repository& r, ExperimentJobData& d) {
    const std::vector<std::string>& windowed = experiment_windowed_metrics();
    {
      std::lock_guard<std::mutex> lock(windows_mu);
      for (const std::string& name : windowed) {
        auto [it, fresh] = windows.try_emplace({d.id, name});
        db::MetricWindow& acc = it->second;
        if (fresh) acc.last_step = experiment_window_start(name, d.steps);
        Result<db::MetricWindow> more = r.metric_window(d.id, name, acc.last_step);
        if (!more.ok()) return more.error();
        acc.sum += more.value().sum;
        acc.count += more.value().count;
        acc.last_step = more.value().last_step;
        d.windowed.push_back(acc);
      }
    }
    Result<std::vector<db::MetricPoint>> curve = r.metric_series(d.id, "val_loss", 0, 200);
    if (!curve.ok()) return curve.error();
    d.val_curve = std::move(curve).value();
    Result<std::optional<db::MetricPoint>> last = r.metric_last(d.id, "val_loss");
    if (!last.ok()) return last.error();
    if (last.value() && std::isfinite(last.value()->value)) d.val_loss = last.value()->value;
    if (!last.value()) return true;
    // The difficulty tables of that evaluation (grouped models only).
    Result<std::vector<std::string>> names = r.metric_names(d.id);
    if (!names.ok()) return names.error();
    for (const std::string& name : names.value()) {
      if (!name.starts_with("difficulty.")) continue;
      Result<std::optional<db::MetricPoint>> v = r.metric_last(d.id, name);
      if (!v.ok()) return v.error();
      if (v.value() && v.value()->step == last.value()->step && std::isfinite(v.value()->value))
        d.difficulty[name] = v.value()->value;
    }
    return true;
  }

  Result<json> cancel_experiment(const Caller& c, int64_t id) override {
    Result<db::ExperimentRow> e = visible_experiment(c, id);
    if (!e.ok()) return e.error();
    return scheduler->ask<json>([&, c, id] { return scheduler->cancel_experiment(c, id); },
                                kAskTimeout);
  }

  Result<json> list_jobs(const Caller& c, const JobListQuery& q) override {
    return scheduler->ask<json>([&, c, q] { return scheduler->list_jobs(c, q); }, kAskTimeout);
  }
  Result<std::string> get_job(const Caller& c, int64_t id) override {
    const std::optional<JobViews::View> v = views.get(id);
    if (!v || (!c.admin && v->user_id != c.user_id)) {
      return Error{ErrorCode::kNotFound, "no job with id " + std::to_string(id), ""};
    }
    return *v->json;
  }
  Result<json> cancel_job(const Caller& c, int64_t id) override {
    return scheduler->ask<json>([&, c, id] { return scheduler->cancel(c, id); }, kAskTimeout);
  }

  Result<json> job_events(const Caller& c, int64_t id, int64_t since, int64_t limit) override {
    if (Status s = access(c, id); !s.ok()) return s.error();
    return read<json>([&](db::Repository& r) -> Result<json> {
      Result<std::vector<db::EventRow>> ev = r.list_events(id, since, limit);
      if (!ev.ok()) return ev.error();
      json out = json::array();
      for (const db::EventRow& e : ev.value()) {
        out.push_back({{"id", e.id},
                       {"at", e.at},
                       {"from", e.from_state.empty() ? json(nullptr) : json(e.from_state)},
                       {"to", e.to_state},
                       {"reason", e.reason}});
      }
      const int64_t next = ev.value().empty() ? since : ev.value().back().id;
      return json{{"job", id}, {"events", out}, {"next", next}};
    });
  }

  Result<json> job_logs(const Caller& c, int64_t id, int64_t since, int64_t limit) override {
    if (Status s = access(c, id); !s.ok()) return s.error();
    return read<json>([&](db::Repository& r) -> Result<json> {
      Result<std::vector<db::LogRow>> logs = r.list_logs(id, since, limit);
      if (!logs.ok()) return logs.error();
      json out = json::array();
      for (const db::LogRow& l : logs.value())
        out.push_back({{"id", l.id}, {"at", l.at}, {"rank", l.rank}, {"line", l.line}});
      const int64_t next = logs.value().empty() ? since : logs.value().back().id;
      return json{{"job", id}, {"logs", out}, {"next", next}};
    });
  }

  Result<json> job_metrics(const Caller& c, int64_t id, const MetricsQuery& q) override {
    if (Status s = access(c, id); !s.ok()) return s.error();
    return read<json>([&](db::Repository& r) -> Result<json> {
      // No names: every series. A name ending in ".*" stands for every series with that
      // prefix (group_share.* → group_share.0, group_share.1, …).
      std::vector<std::string> names;
      bool wildcard = q.names.empty();
      for (const std::string& n : q.names) wildcard = wildcard || n.ends_with(".*");
      std::vector<std::string> known;
      if (wildcard) {
        Result<std::vector<std::string>> all = r.metric_names(id);
        if (!all.ok()) return all.error();
        known = all.value();
      }
      if (q.names.empty()) names = known;
      for (const std::string& n : q.names) {
        if (!n.ends_with(".*")) {
          names.push_back(n);
          continue;
        }
        const std::string prefix = n.substr(0, n.size() - 1);
        for (const std::string& k : known)
          if (k.starts_with(prefix)) names.push_back(k);
      }
      json series_by_name = json::object();
      int64_t last = q.since;
      for (const std::string& name : names) {
        Result<std::vector<db::MetricPoint>> series =
            r.metric_series(id, name, q.since, q.max_points);
        if (!series.ok()) return series.error();
        json steps = json::array(), values = json::array();
        for (const db::MetricPoint& p : series.value()) {
          steps.push_back(p.step);
          values.push_back(p.value);
          last = std::max(last, p.step);
        }
        series_by_name[name] = {{"steps", steps}, {"values", values}};
      }
      return json{
          {"job", id}, {"since", q.since}, {"last_step", last}, {"metrics", series_by_name}};
    });
  }

  Result<json> job_routing(const Caller& c, int64_t id) override {
    if (Status s = access(c, id); !s.ok()) return s.error();
    return read<json>([&](db::Repository& r) -> Result<json> {
      Result<std::optional<std::pair<int64_t, json>>> got = r.get_routing(id);
      if (!got.ok()) return got.error();
      if (!got.value()) return json{{"job", id}, {"step", nullptr}, {"layers", json::array()}};
      const int64_t step = got.value()->first;
      const json& rec = got.value()->second;
      const json& layers = array_at(rec, "layers");
      // Averages over layers: the rank × group token matrix (as shares of all assignments),
      // per-rank expert FLOPs (sum), imbalance, the group-per-rank counterfactual, group shares.
      std::vector<std::vector<double>> tokens;
      std::vector<double> flops, share;
      double imbalance = 0, counterfactual = 0, fixed = 0;
      bool adaptive = false;
      for (const json& l : layers) {
        imbalance += number_at(l, "imbalance");
        counterfactual += number_at(l, "imbalance_group_per_rank");
        if (l.is_object() && l.contains("imbalance_all_size")) {
          adaptive = true;
          fixed += number_at(l, "imbalance_all_size");
        }
        const json& ranks = array_at(l, "ranks");
        if (tokens.size() < ranks.size()) tokens.resize(ranks.size());
        if (flops.size() < ranks.size()) flops.resize(ranks.size(), 0.0);
        for (size_t k = 0; k < ranks.size(); ++k) {
          const json& t = array_at(ranks[k], "tokens");
          if (tokens[k].size() < t.size()) tokens[k].resize(t.size(), 0.0);
          for (size_t g = 0; g < t.size(); ++g) tokens[k][g] += number_or_zero(t[g]);
          flops[k] += number_at(ranks[k], "flops");
        }
        const json& gs = array_at(l, "group_share");
        if (share.size() < gs.size()) share.resize(gs.size(), 0.0);
        for (size_t g = 0; g < gs.size(); ++g) share[g] += number_or_zero(gs[g]) / layers.size();
      }
      double total = 0;
      for (const auto& row : tokens)
        for (double v : row) total += v;
      json matrix = json::array();
      for (const auto& row : tokens) {
        json jr = json::array();
        for (double v : row) jr.push_back(total > 0 ? v / total : 0.0);
        matrix.push_back(jr);
      }
      const double L = layers.empty() ? 1.0 : static_cast<double>(layers.size());
      json out = {{"job", id},
                  {"step", step},
                  {"token_share", matrix},
                  {"flops", flops},
                  {"imbalance", imbalance / L},
                  {"imbalance_group_per_rank", counterfactual / L},
                  {"group_share", share},
                  {"activated_expert_params", number_at(rec, "activated_expert_params")},
                  {"layers", layers}};
      if (adaptive) out["imbalance_all_size"] = fixed / L;  // static All-size, same routing
      return out;
    });
  }

  static json checkpoint_json(const db::CheckpointRow& c) {
    return {{"id", c.id},
            {"job", c.job_id},
            {"step", c.step},
            {"path", c.path},
            {"state", c.state},
            {"created_at", c.created_at},
            {"bytes", c.bytes},
            {"files", c.files.size()},
            {"download", "/api/v1/checkpoints/" + std::to_string(c.id) + "/download"}};
  }

  Result<json> job_checkpoints(const Caller& c, int64_t id) override {
    if (Status s = access(c, id); !s.ok()) return s.error();
    return read<json>([&](db::Repository& r) -> Result<json> {
      Result<std::vector<db::CheckpointRow>> list = r.list_checkpoints(id);
      if (!list.ok()) return list.error();
      json out = json::array();
      for (const db::CheckpointRow& ck : list.value()) out.push_back(checkpoint_json(ck));
      return json{{"job", id}, {"checkpoints", out}};
    });
  }

  Result<db::CheckpointRow> visible_checkpoint(const Caller& c, int64_t id) {
    Result<std::optional<db::CheckpointRow>> ck = read<std::optional<db::CheckpointRow>>(
        [&](db::Repository& r) { return r.get_checkpoint(id); });
    if (!ck.ok()) return ck.error();
    const Error missing{ErrorCode::kNotFound, "no checkpoint with id " + std::to_string(id), ""};
    if (!ck.value() || ck.value()->state != "complete") return missing;
    if (!access(c, ck.value()->job_id).ok()) return missing;
    return *ck.value();
  }

  Result<json> checkpoint_files(const Caller& c, int64_t id) override {
    Result<db::CheckpointRow> ck = visible_checkpoint(c, id);
    if (!ck.ok()) return ck.error();
    json files = json::array();
    for (const db::CheckpointFile& f : ck.value().files)
      files.push_back({{"name", f.name}, {"bytes", f.bytes}, {"sha256", f.sha256}});
    json out = checkpoint_json(ck.value());
    out["files"] = files;
    return out;
  }

  void checkpoint_download(const Caller& c, int64_t id,
                           std::function<void(Result<fs::path>)> done) override {
    Result<db::CheckpointRow> ck = visible_checkpoint(c, id);
    if (!ck.ok()) return done(ck.error());
    const fs::path out =
        options.storage / "downloads" / ("checkpoint-" + std::to_string(id) + ".safetensors");
    std::error_code ec;
    if (fs::exists(out, ec)) return done(out);
    {
      // Requests for a file being built wait for that build instead of starting another.
      std::lock_guard<std::mutex> lock(downloads_mu);
      auto& waiting = downloads_waiting[id];
      waiting.push_back(std::move(done));
      if (waiting.size() > 1) return;
    }
    boost::asio::post(downloads_pool, [this, id, out, dir = options.storage / ck.value().path] {
      std::error_code ec2;
      fs::create_directories(out.parent_path(), ec2);
      const Status s = consolidate_safetensors(dir, "model", out);
      std::vector<std::function<void(Result<fs::path>)>> waiting;
      {
        std::lock_guard<std::mutex> lock(downloads_mu);
        waiting = std::move(downloads_waiting[id]);
        downloads_waiting.erase(id);
      }
      for (auto& w : waiting) w(s.ok() ? Result<fs::path>(out) : Result<fs::path>(s.error()));
    });
  }

  Result<json> list_workers(const Caller&) override {
    Result<json> w =
        registry->ask<json>([&]() -> Result<json> { return registry->to_json(); }, kAskTimeout);
    if (!w.ok()) return w.error();
    return json{{"workers", w.value()}};
  }

  Result<json> cluster(const Caller&) override {
    Result<json> cl = scheduler->ask<json>([&] { return scheduler->cluster_json(); }, kAskTimeout);
    if (!cl.ok()) return cl.error();
    Result<json> w =
        registry->ask<json>([&]() -> Result<json> { return registry->to_json(); }, kAskTimeout);
    if (!w.ok()) return w.error();
    json out = cl.value();
    out["worker_list"] = w.value();
    return out;
  }

  static json user_json(const db::UserRow& u) {
    return {{"id", u.id},
            {"name", u.name},
            {"role", u.role},
            {"max_workers", u.max_workers},
            {"created_at", u.created_at}};
  }

  Result<json> list_users(const Caller& c) override {
    if (!c.admin) return forbidden("listing users");
    return read<json>([&](db::Repository& r) -> Result<json> {
      Result<std::vector<db::UserRow>> users = r.list_users();
      if (!users.ok()) return users.error();
      json out = json::array();
      for (const db::UserRow& u : users.value()) out.push_back(user_json(u));
      return json{{"users", out}};
    });
  }

  Result<json> create_user(const Caller& c, const json& body) override {
    if (!c.admin) return forbidden("creating users");
    if (!body.is_object()) return invalid_argument("body", "must be a JSON object");
    if (!body.contains("name") || !body["name"].is_string())
      return invalid_argument("name", "is required and must be a string");
    const std::string name = body["name"].get<std::string>();
    if (!valid_user_name(name))
      return invalid_argument(
          "name",
          "must be 1–64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit");
    const std::string role = body.contains("role") && body["role"].is_string()
                                 ? body["role"].get<std::string>()
                                 : "user";
    if (role != "user" && role != "admin") return invalid_argument("role", "must be user or admin");
    int max_workers = 0;
    if (body.contains("max_workers")) {
      if (!body["max_workers"].is_number_integer() || body["max_workers"].get<int64_t>() < 0 ||
          body["max_workers"].get<int64_t>() > 100000)
        return invalid_argument("max_workers", "must be an integer in [0, 100000] (0 = no limit)");
      max_workers = body["max_workers"].get<int>();
    }
    Result<db::UserRow> u = store->call<db::UserRow>(
        [=, now = hub.now()](db::Repository& r) {
          return r.create_user(name, role, max_workers, now);
        },
        kAskTimeout);
    if (!u.ok()) return u.error();
    scheduler->set_user(u.value());
    return user_json(u.value());
  }

  Result<json> create_token(const Caller& c, int64_t user, const json& body) override {
    if (!c.admin && user != c.user_id) return forbidden("creating tokens for another user");
    const std::string label =
        body.is_object() && body.contains("label") && body["label"].is_string()
            ? body["label"].get<std::string>()
            : "";
    if (label.size() > 200) return invalid_argument("label", "must be at most 200 characters");
    const std::string secret = new_token_secret();
    Result<db::TokenRow> t = store->call<db::TokenRow>(
        [=, now = hub.now()](db::Repository& r) -> Result<db::TokenRow> {
          Result<std::optional<db::UserRow>> u = r.get_user(user);
          if (!u.ok()) return u.error();
          if (!u.value())
            return Error{ErrorCode::kNotFound, "no user with id " + std::to_string(user), ""};
          return r.create_token(user, sha256_hex(secret), label, now);
        },
        kAskTimeout);
    if (!t.ok()) return t.error();
    return json{{"id", t.value().id},
                {"user", user},
                {"label", label},
                {"token", secret},
                {"note", "the token is shown once; store it now"}};
  }

  Result<json> revoke_token(const Caller& c, int64_t token) override {
    if (!c.admin) return forbidden("revoking tokens");
    Result<bool> r = store->call<bool>(
        [=](db::Repository& repo) -> Result<bool> {
          Status s = repo.revoke_token(token);
          if (!s.ok()) return s.error();
          return true;
        },
        kAskTimeout);
    if (!r.ok()) return r.error();
    std::unique_lock<std::shared_mutex> lock(auth_mu);
    auth_cache.clear();
    return json{{"id", token}, {"revoked", true}};
  }

  Result<json> rotate_join_secret(const Caller& c) override {
    if (!c.admin) return forbidden("rotating the join secret");
    const std::string secret = new_token_secret();
    const fs::path file = options.storage / "join.secret";
    if (Status s = write_owner_only(file, secret + "\n"); !s.ok()) return s.error();
    registry->set_join_secret_sha256(sha256_hex(secret));
    spdlog::info("join secret rotated by {}", c.user);
    return json{{"secret", secret},
                {"file", file.string()},
                {"note", "connected workers stay; restart the others with the new secret"}};
  }

  json health() override {
    json h = {{"status", "ok"}, {"version", MOHGE_VERSION}, {"protocol", proto::kProtocolVersion}};
    // A write that failed for good means memory and SQLite may disagree: say so (the errors
    // themselves are in the coordinator's log).
    if (const auto [failed, last] = store->failures(); failed > 0) {
      h["status"] = "degraded";
      h["failed_writes"] = failed;
    }
    return h;
  }

  // ---- start-up ---------------------------------------------------------------------------
  /// The join secret workers present (join.secret beside admin.token, created at first start).
  Status load_join_secret() {
    const fs::path file = options.storage / "join.secret";
    std::string secret;
    {
      std::ifstream in(file);
      if (in) std::getline(in, secret);
    }
    if (secret.empty()) {
      secret = new_token_secret();
      if (Status s = write_owner_only(file, secret + "\n"); !s.ok()) return s;
      std::printf("cluster join secret for the workers written to %s (readable only by you)\n",
                  file.c_str());
      std::fflush(stdout);
    }
    registry->set_join_secret_sha256(sha256_hex(secret));
    return {};
  }

  Status bootstrap_admin() {
    db::Repository& repo = store->unsafe_repository();
    Result<std::vector<db::UserRow>> users = repo.list_users();
    if (!users.ok()) return users.error();
    if (!users.value().empty()) return {};
    Result<db::UserRow> admin = repo.create_user("admin", "admin", 0, hub.now());
    if (!admin.ok()) return admin.error();
    const std::string secret = new_token_secret();
    Result<db::TokenRow> t =
        repo.create_token(admin.value().id, sha256_hex(secret), "first admin token", hub.now());
    if (!t.ok()) return t.error();
    const fs::path file = options.storage / "admin.token";
    if (Status s = write_owner_only(file, secret + "\n"); !s.ok()) return s;
    std::printf("admin token (also in %s, readable only by you): %s\n", file.c_str(),
                secret.c_str());
    std::fflush(stdout);
    return {};
  }
};

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Coordinator::~Coordinator() {
  stop();
}

Result<std::unique_ptr<Coordinator>> Coordinator::start(const CoordinatorOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  std::error_code ec;
  fs::create_directories(options.storage, ec);
  if (ec)
    return invalid_argument("--storage",
                            "cannot create " + options.storage.string() + ": " + ec.message());
  impl->db_path = options.db.empty() ? options.storage / "mohge.db" : options.db;
  Result<std::unique_ptr<db::Repository>> repo = db::Repository::open(impl->db_path);
  if (!repo.ok()) return repo.error();

  Impl& m = *impl;
  m.hub.options = options;
  m.store = std::make_unique<Store>(m.io.get_executor(), std::move(repo).value());
  m.registry = std::make_unique<WorkerRegistry>(m.io, m.hub);
  m.scheduler = std::make_unique<Scheduler>(m.io, m.hub);
  m.metrics = std::make_unique<MetricsSink>(m.io, m.hub);
  m.checkpoints = std::make_unique<CheckpointRegistry>(m.io, m.hub);
  m.hub.store = m.store.get();
  m.hub.registry = m.registry.get();
  m.hub.scheduler = m.scheduler.get();
  m.hub.metrics = m.metrics.get();
  m.hub.checkpoints = m.checkpoints.get();
  m.hub.views = &m.views;

  if (Status s = m.bootstrap_admin(); !s.ok()) return s.error();
  if (Status s = m.load_join_secret(); !s.ok()) return s.error();
  Result<std::vector<db::WorkerRow>> workers = m.store->unsafe_repository().list_workers();
  if (!workers.ok()) return workers.error();
  m.registry->load(workers.value());
  if (Status s = m.scheduler->load(m.store->unsafe_repository()); !s.ok()) return s.error();
  if (Status s = m.registry->listen(); !s.ok()) return s.error();
  m.metrics->start();

  m.work.emplace(m.io.get_executor());
  for (int i = 0; i < 2; ++i) m.threads.emplace_back([&m] { m.io.run(); });

  RestOptions ro;
  ro.listen = options.http;
  ro.web_root = options.web_root;
  ro.threads = options.http_threads > 0
                   ? options.http_threads
                   : std::clamp<size_t>(std::thread::hardware_concurrency(), 2, 16);
  Result<std::unique_ptr<RestServer>> rest = RestServer::start(ro, m);
  if (!rest.ok()) {
    auto c = std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
    c->stop();
    return rest.error();
  }
  m.rest = std::move(rest).value();
  spdlog::info("coordinator: REST on {}, workers dial {}, storage {}, database {}", m.rest->url(),
               options.control, options.storage.string(), m.db_path.string());
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

std::string Coordinator::http_url() const {
  return impl_->rest ? impl_->rest->url() : "";
}

void Coordinator::stop() {
  if (!impl_ || impl_->threads.empty()) return;
  Impl& m = *impl_;
  if (m.rest) m.rest->stop();
  m.downloads_pool.join();
  m.registry->stop();
  m.metrics->post([&m] { m.metrics->flush(); });
  // Let the queued writes reach SQLite before the threads stop.
  (void)m.store->ask<bool>([]() -> Result<bool> { return true; }, std::chrono::seconds(5));
  (void)m.store->ask<bool>([]() -> Result<bool> { return true; }, std::chrono::seconds(5));
  m.work.reset();
  m.io.stop();
  for (std::thread& t : m.threads) t.join();
  m.threads.clear();
}

}  // namespace mohge::coord
