#include "storage/repository.hpp"

#include <cmath>

#include <algorithm>
#include <chrono>

#include "storage/sqlite.hpp"

namespace mohge::db {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A 128-bit integer for exact products of two int64 values (a GCC/Clang extension).
__extension__ typedef __int128 Int128;

// ---- schema ----------------------------------------------------------------------------------
// kMigrations[i] takes the schema from version i to i + 1 (PRAGMA user_version counts how many
// have been applied). Each runs in its own transaction. Append only: a released script is
// never edited, a change is a new script. storage/SCHEMA.md documents the result.
const std::vector<const char*> kMigrations = {
    // 1: the initial schema.
    R"sql(
CREATE TABLE users (
  id          INTEGER PRIMARY KEY,
  name        TEXT    NOT NULL UNIQUE,
  role        TEXT    NOT NULL CONSTRAINT role CHECK (role IN ('admin', 'user')),
  max_workers INTEGER NOT NULL DEFAULT 0,
  created_at  REAL    NOT NULL
);
CREATE TABLE tokens (
  id         INTEGER PRIMARY KEY,
  user_id    INTEGER NOT NULL REFERENCES users(id),
  hash       TEXT    NOT NULL UNIQUE,
  label      TEXT    NOT NULL DEFAULT '',
  created_at REAL    NOT NULL,
  revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_user ON tokens(user_id);
CREATE TABLE workers (
  id            INTEGER PRIMARY KEY,
  name          TEXT    NOT NULL UNIQUE,
  host          TEXT    NOT NULL DEFAULT '',
  backend       TEXT    NOT NULL DEFAULT '',
  version       TEXT    NOT NULL DEFAULT '',
  devices       TEXT    NOT NULL DEFAULT '[]',
  threads       INTEGER NOT NULL DEFAULT 0,
  state         TEXT    NOT NULL,
  registered_at REAL    NOT NULL DEFAULT 0,
  last_seen     REAL    NOT NULL DEFAULT 0
);
CREATE TABLE jobs (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id         INTEGER NOT NULL REFERENCES users(id),
  name            TEXT    NOT NULL,
  spec            TEXT    NOT NULL,
  state           TEXT    NOT NULL CONSTRAINT state CHECK (state IN ('QUEUED', 'STARTING',
                    'RUNNING', 'RECOVERING', 'PREEMPTED', 'SUCCEEDED', 'FAILED', 'CANCELED')),
  reason          TEXT    NOT NULL DEFAULT '',
  priority        INTEGER NOT NULL,
  workers         INTEGER NOT NULL,
  device          TEXT    NOT NULL,
  idempotency_key TEXT    NOT NULL DEFAULT '',
  submitted_at    REAL    NOT NULL,
  started_at      REAL    NOT NULL DEFAULT 0,
  finished_at     REAL    NOT NULL DEFAULT 0,
  restarts        INTEGER NOT NULL DEFAULT 0,
  max_restarts    INTEGER NOT NULL,
  step            INTEGER NOT NULL DEFAULT 0,
  steps           INTEGER NOT NULL DEFAULT 0,
  attempt         INTEGER NOT NULL DEFAULT 0,
  run_dir         TEXT    NOT NULL DEFAULT '',
  assigned        TEXT    NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX jobs_user_key ON jobs(user_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX jobs_user_id ON jobs(user_id, id DESC);
CREATE INDEX jobs_state_id ON jobs(state, id DESC);
CREATE TABLE job_events (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id     INTEGER NOT NULL REFERENCES jobs(id),
  at         REAL    NOT NULL,
  from_state TEXT    NOT NULL,
  to_state   TEXT    NOT NULL,
  reason     TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX job_events_job_id ON job_events(job_id, id);
CREATE TABLE job_logs (
  id     INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  at     REAL    NOT NULL,
  rank   INTEGER NOT NULL,
  line   TEXT    NOT NULL
);
CREATE INDEX job_logs_job_id ON job_logs(job_id, id);
CREATE TABLE metrics (
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  name   TEXT    NOT NULL,
  step   INTEGER NOT NULL,
  value  REAL,
  PRIMARY KEY (job_id, name, step)
) WITHOUT ROWID;
CREATE TABLE routing (
  job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
  step   INTEGER NOT NULL,
  record TEXT    NOT NULL
);
CREATE TABLE checkpoints (
  id         INTEGER PRIMARY KEY,
  job_id     INTEGER NOT NULL REFERENCES jobs(id),
  step       INTEGER NOT NULL,
  path       TEXT    NOT NULL,
  state      TEXT    NOT NULL CONSTRAINT state CHECK (state IN ('complete', 'deleted')),
  created_at REAL    NOT NULL,
  bytes      INTEGER NOT NULL DEFAULT 0,
  files      TEXT    NOT NULL DEFAULT '[]',
  UNIQUE (job_id, step)
);
)sql",
    // 2: experiments (a grid of jobs compared as one); a job's experiment and point in it.
    R"sql(
CREATE TABLE experiments (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id         INTEGER NOT NULL REFERENCES users(id),
  name            TEXT    NOT NULL,
  request         TEXT    NOT NULL,
  max_parallel    INTEGER NOT NULL DEFAULT 0,
  idempotency_key TEXT    NOT NULL DEFAULT '',
  created_at      REAL    NOT NULL
);
CREATE UNIQUE INDEX experiments_user_key ON experiments(user_id, idempotency_key)
  WHERE idempotency_key <> '';
CREATE INDEX experiments_user_id ON experiments(user_id, id DESC);
ALTER TABLE jobs ADD COLUMN experiment_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN experiment_point TEXT NOT NULL DEFAULT '{}';
CREATE INDEX jobs_experiment ON jobs(experiment_id, id) WHERE experiment_id <> 0;
)sql",
};

const int kSchemaVersion = static_cast<int>(kMigrations.size());

constexpr int64_t kMaxJobsPage = 1000;
constexpr int64_t kMaxRowsPage = 10000;  // events and logs
constexpr int64_t kMaxPoints = 1000000;  // keeps (step - lo) * max_points inside int64

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<json> parse(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error{ErrorCode::kDataLoss, what + " holds invalid JSON", ""};
  return j;
}

bool valid_user_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

/// `e` with `message` instead of its own when it has `code`.
Error reword(Error e, ErrorCode code, std::string message) {
  if (e.code == code) e.message = std::move(message);
  return e;
}

constexpr const char* kUserColumns = "u.id, u.name, u.role, u.max_workers, u.created_at";

UserRow read_user(const Statement& s) {
  return UserRow{s.column_int64(0), s.column_text(1), s.column_text(2), s.column_int(3),
                 s.column_double(4)};
}

constexpr const char* kWorkerColumns =
    "id, name, host, backend, version, devices, threads, state, registered_at, last_seen";

Result<WorkerRow> read_worker(const Statement& s) {
  WorkerRow w;
  w.id = s.column_int64(0);
  w.name = s.column_text(1);
  w.host = s.column_text(2);
  w.backend = s.column_text(3);
  w.version = s.column_text(4);
  Result<json> devices = parse(s.column_text(5), "workers.devices of " + w.name);
  if (!devices.ok()) return devices.error();
  w.devices = std::move(devices).value();
  w.threads = s.column_int(6);
  w.state = s.column_text(7);
  w.registered_at = s.column_double(8);
  w.last_seen = s.column_double(9);
  return w;
}

const std::string kJobSelect =
    "SELECT j.id, j.user_id, u.name, j.name, j.spec, j.state, j.reason, j.priority, j.workers, "
    "j.device, j.idempotency_key, j.submitted_at, j.started_at, j.finished_at, j.restarts, "
    "j.max_restarts, j.step, j.steps, j.attempt, j.run_dir, j.assigned, j.experiment_id, "
    "j.experiment_point "
    "FROM jobs j JOIN users u ON u.id = j.user_id";

Result<JobRow> read_job(const Statement& s) {
  JobRow j;
  j.id = s.column_int64(0);
  j.user_id = s.column_int64(1);
  j.user = s.column_text(2);
  j.name = s.column_text(3);
  Result<json> spec = parse(s.column_text(4), "jobs.spec of job " + std::to_string(j.id));
  if (!spec.ok()) return spec.error();
  j.spec = std::move(spec).value();
  j.state = s.column_text(5);
  j.reason = s.column_text(6);
  j.priority = s.column_int(7);
  j.workers = s.column_int(8);
  j.device = s.column_text(9);
  j.idempotency_key = s.column_text(10);
  j.submitted_at = s.column_double(11);
  j.started_at = s.column_double(12);
  j.finished_at = s.column_double(13);
  j.restarts = s.column_int(14);
  j.max_restarts = s.column_int(15);
  j.step = s.column_int64(16);
  j.steps = s.column_int64(17);
  j.attempt = s.column_int(18);
  j.run_dir = s.column_text(19);
  Result<json> assigned = parse(s.column_text(20), "jobs.assigned of job " + std::to_string(j.id));
  if (!assigned.ok()) return assigned.error();
  if (!assigned.value().is_array()) {
    return Error{ErrorCode::kDataLoss,
                 "jobs.assigned of job " + std::to_string(j.id) + " is not a JSON array", ""};
  }
  for (const json& w : assigned.value()) {
    if (w.is_string()) j.assigned.push_back(w.get<std::string>());
  }
  j.experiment_id = s.column_int64(21);
  Result<json> point =
      parse(s.column_text(22), "jobs.experiment_point of job " + std::to_string(j.id));
  if (!point.ok()) return point.error();
  j.experiment_point = std::move(point).value();
  return j;
}

const std::string kExperimentSelect =
    "SELECT e.id, e.user_id, u.name, e.name, e.request, e.max_parallel, e.idempotency_key, "
    "e.created_at FROM experiments e JOIN users u ON u.id = e.user_id";

Result<ExperimentRow> read_experiment(const Statement& s) {
  ExperimentRow e;
  e.id = s.column_int64(0);
  e.user_id = s.column_int64(1);
  e.user = s.column_text(2);
  e.name = s.column_text(3);
  Result<json> request =
      parse(s.column_text(4), "experiments.request of experiment " + std::to_string(e.id));
  if (!request.ok()) return request.error();
  e.request = std::move(request).value();
  e.max_parallel = s.column_int(5);
  e.idempotency_key = s.column_text(6);
  e.created_at = s.column_double(7);
  return e;
}

constexpr const char* kCheckpointColumns =
    "id, job_id, step, path, state, created_at, bytes, files";

json files_to_json(const std::vector<CheckpointFile>& files) {
  json out = json::array();
  for (const CheckpointFile& f : files) {
    out.push_back({{"name", f.name}, {"bytes", f.bytes}, {"sha256", f.sha256}});
  }
  return out;
}

Result<CheckpointRow> read_checkpoint(const Statement& s) {
  CheckpointRow c;
  c.id = s.column_int64(0);
  c.job_id = s.column_int64(1);
  c.step = s.column_int64(2);
  c.path = s.column_text(3);
  c.state = s.column_text(4);
  c.created_at = s.column_double(5);
  c.bytes = s.column_int64(6);
  const std::string what = "checkpoints.files of checkpoint " + std::to_string(c.id);
  Result<json> files = parse(s.column_text(7), what);
  if (!files.ok()) return files.error();
  if (!files.value().is_array()) return Error{ErrorCode::kDataLoss, what + " is not an array", ""};
  for (const json& f : files.value()) {
    if (!f.is_object()) return Error{ErrorCode::kDataLoss, what + " has a non-object entry", ""};
    const json name = f.value("name", json()), bytes = f.value("bytes", json()),
               sha = f.value("sha256", json());
    if (!name.is_string() || !bytes.is_number_integer() || !sha.is_string()) {
      return Error{ErrorCode::kDataLoss, what + " has a malformed entry: " + dump(f), ""};
    }
    c.files.push_back({name.get<std::string>(), bytes.get<int64_t>(), sha.get<std::string>()});
  }
  return c;
}

/// OK when `changed` is positive, kNotFound with `missing` when no row changed.
Status require_change(const Result<int64_t>& changed, const std::string& missing) {
  if (!changed.ok()) return changed.error();
  if (changed.value() == 0) return Error{ErrorCode::kNotFound, missing, ""};
  return {};
}

}  // namespace

// ---- open and migrate ------------------------------------------------------------------------

struct Repository::Impl {
  Database db;
  int version = 0;

  // Writes without a transaction of their own (the callers hold one).
  Status append_logs(const std::vector<LogRow>& rows) {
    for (const LogRow& l : rows) {
      Result<int64_t> r = db.exec(
          "append job log", "INSERT INTO job_logs(job_id, at, rank, line) VALUES (?1, ?2, ?3, ?4)",
          l.job_id, l.at, l.rank, l.line);
      if (!r.ok()) return r.error();
    }
    return {};
  }
  Status insert_metrics(const std::vector<MetricRow>& rows) {
    if (rows.empty()) return {};
    const std::string what = "insert metrics";
    Result<StatementUse> st = db.use(
        "INSERT OR IGNORE INTO metrics(job_id, name, step, value) VALUES (?1, ?2, ?3, ?4)", what);
    if (!st.ok()) return st.error();
    Statement& s = *st.value();
    for (const MetricRow& m : rows) {
      s.bind(1, m.job_id);
      s.bind_static(2, m.name);  // `rows` outlives every step
      s.bind(3, m.step);
      s.bind(4, m.value);
      const int rc = s.step();
      if (rc != SQLITE_DONE) return db.error(rc, what);
      s.rewind();  // every parameter is bound again for the next row
    }
    return {};
  }
  Status set_routing(int64_t job_id, int64_t step, const json& record) {
    Result<int64_t> r = db.exec(
        "set routing",
        "INSERT INTO routing(job_id, step, record) VALUES (?1, ?2, ?3) ON CONFLICT(job_id) DO "
        "UPDATE SET step = excluded.step, record = excluded.record "
        "WHERE excluded.step >= routing.step",
        job_id, step, dump(record));
    if (!r.ok()) {
      return reword(r.error(), ErrorCode::kNotFound, "no job with id " + std::to_string(job_id));
    }
    return {};
  }

  Result<int> user_version() {
    Result<std::optional<int>> v = db.row("read PRAGMA user_version", "PRAGMA user_version",
                                          [](const Statement& s) { return s.column_int(0); });
    if (!v.ok()) return v.error();
    return v.value().value_or(0);
  }

  /// Applies the pending migrations, each in its own write transaction.
  Status migrate() {
    for (;;) {
      Transaction tx(db);
      if (Status st = tx.begin(true); !st) return st;
      Result<int> v = user_version();  // re-read under the write lock: another may have run
      if (!v.ok()) return v.error();
      version = v.value();
      if (version >= kSchemaVersion) return {};
      const std::string what = "migration to schema version " + std::to_string(version + 1);
      const int rc = sqlite3_exec(db.get(), kMigrations[static_cast<size_t>(version)], nullptr,
                                  nullptr, nullptr);
      if (rc != SQLITE_OK) return db.error(rc, what);
      // PRAGMA takes no parameters; the number comes from this code, never from an input.
      Result<int64_t> set = db.exec(what, "PRAGMA user_version = " + std::to_string(version + 1));
      if (!set.ok()) return set.error();
      if (Status st = tx.commit(); !st) return st;
    }
  }
};

Repository::Repository(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Repository::~Repository() = default;

Result<std::unique_ptr<Repository>> Repository::open(const fs::path& file, bool read_only,
                                                     int busy_timeout_ms) {
  const std::string name = file.string();
  std::error_code ec;
  if (read_only && !fs::exists(file, ec)) {
    return Error{ErrorCode::kNotFound,
                 name + ": database file does not exist (read-only opens never create it)", ""};
  }
  const int flags =
      (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
      SQLITE_OPEN_NOMUTEX;
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(name.c_str(), &raw, flags, nullptr);
  auto impl = std::make_unique<Impl>();
  impl->db = Database(Connection(raw), name);  // closes `raw` on every path
  if (rc != SQLITE_OK) {
    if (rc == SQLITE_NOMEM) throw std::bad_alloc();
    return Error{ErrorCode::kUnavailable,
                 name + ": cannot open the database: " + sqlite3_errmsg(raw), ""};
  }
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, std::max(0, busy_timeout_ms));
  Database& db = impl->db;

  if (!read_only) {
    Result<std::optional<std::string>> mode =
        db.row("set PRAGMA journal_mode=WAL", "PRAGMA journal_mode=WAL",
               [](const Statement& s) { return s.column_text(0); });
    if (!mode.ok()) return mode.error();
    if (mode.value() != "wal") {
      return Error{ErrorCode::kFailedPrecondition,
                   name + ": cannot use WAL journaling here (journal_mode is " +
                       mode.value().value_or("?") + ")",
                   ""};
    }
    for (const char* pragma : {"PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON"}) {
      Result<int64_t> r = db.exec(std::string("set ") + pragma, pragma);
      if (!r.ok()) return r.error();
    }
  }
  Result<int> v = impl->user_version();
  if (!v.ok()) return v.error();
  impl->version = v.value();
  const std::string versions = "schema version " + std::to_string(impl->version) + " is ";
  const std::string known = " (" + std::to_string(kSchemaVersion) + ")";
  if (impl->version > kSchemaVersion) {
    return Error{ErrorCode::kFailedPrecondition,
                 name + ": " + versions + "newer than this build knows" + known +
                     "; use a newer coordinator",
                 ""};
  }
  if (impl->version < kSchemaVersion) {
    if (read_only) {
      return Error{ErrorCode::kFailedPrecondition,
                   name + ": " + versions + "older than this build's" + known +
                       "; open it writable once to migrate it",
                   ""};
    }
    if (Status st = impl->migrate(); !st) return st.error();
  }
  return std::unique_ptr<Repository>(new Repository(std::move(impl)));
}

int Repository::schema_version() const {
  return impl_->version;
}

// ---- users and tokens ------------------------------------------------------------------------

Result<UserRow> Repository::create_user(const std::string& name, const std::string& role,
                                        int max_workers, double now) {
  if (!valid_user_name(name)) {
    return invalid_argument(
        "name", "a user name is 1 to 64 characters from a-z 0-9 _ . -, got '" + name + "'");
  }
  if (role != "admin" && role != "user") {
    return invalid_argument("role", "the role is \"admin\" or \"user\", got '" + role + "'");
  }
  Result<int64_t> r = impl_->db.exec(
      "create user " + name,
      "INSERT INTO users(name, role, max_workers, created_at) VALUES (?1, ?2, ?3, ?4)", name, role,
      max_workers, now);
  if (!r.ok()) {
    return reword(r.error(), ErrorCode::kAlreadyExists, "a user named '" + name + "' exists");
  }
  return UserRow{impl_->db.last_insert_id(), name, role, max_workers, now};
}

Result<std::optional<UserRow>> Repository::get_user(int64_t id) {
  return impl_->db.row("get user",
                       std::string("SELECT ") + kUserColumns + " FROM users u WHERE u.id = ?1",
                       read_user, id);
}

Result<std::optional<UserRow>> Repository::get_user_by_name(const std::string& name) {
  return impl_->db.row("get user by name",
                       std::string("SELECT ") + kUserColumns + " FROM users u WHERE u.name = ?1",
                       read_user, name);
}

Result<std::vector<UserRow>> Repository::list_users() {
  return impl_->db.rows("list users",
                        std::string("SELECT ") + kUserColumns + " FROM users u ORDER BY u.id",
                        read_user);
}

Status Repository::set_user_quota(int64_t user_id, int max_workers) {
  return require_change(
      impl_->db.exec("set user quota", "UPDATE users SET max_workers = ?2 WHERE id = ?1", user_id,
                     max_workers),
      "no user with id " + std::to_string(user_id));
}

Result<TokenRow> Repository::create_token(int64_t user_id, const std::string& secret_sha256,
                                          const std::string& label, double now) {
  Result<int64_t> r =
      impl_->db.exec("create token",
                     "INSERT INTO tokens(user_id, hash, label, created_at) VALUES (?1, ?2, ?3, ?4)",
                     user_id, secret_sha256, label, now);
  if (!r.ok()) {
    return reword(reword(r.error(), ErrorCode::kAlreadyExists, "a token with this hash exists"),
                  ErrorCode::kNotFound, "no user with id " + std::to_string(user_id));
  }
  return TokenRow{impl_->db.last_insert_id(), user_id, label, now, false};
}

Result<std::optional<UserRow>> Repository::find_user_by_token(const std::string& secret_sha256) {
  return impl_->db.row("find user by token",
                       std::string("SELECT ") + kUserColumns +
                           " FROM tokens t JOIN users u ON u.id = t.user_id"
                           " WHERE t.hash = ?1 AND t.revoked = 0",
                       read_user, secret_sha256);
}

Result<std::vector<TokenRow>> Repository::list_tokens(int64_t user_id) {
  return impl_->db.rows(
      "list tokens",
      "SELECT id, user_id, label, created_at, revoked FROM tokens WHERE user_id = ?1 ORDER BY id",
      [](const Statement& s) {
        return TokenRow{s.column_int64(0), s.column_int64(1), s.column_text(2), s.column_double(3),
                        s.column_int64(4) != 0};
      },
      user_id);
}

Status Repository::revoke_token(int64_t token_id) {
  return require_change(
      impl_->db.exec("revoke token", "UPDATE tokens SET revoked = 1 WHERE id = ?1", token_id),
      "no token with id " + std::to_string(token_id));
}

// ---- workers ---------------------------------------------------------------------------------

Result<WorkerRow> Repository::upsert_worker(const WorkerRow& row) {
  Result<std::optional<WorkerRow>> stored = impl_->db.row(
      "register worker " + row.name,
      std::string("INSERT INTO workers(name, host, backend, version, devices, threads, state, "
                  "registered_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
                  "ON CONFLICT(name) DO UPDATE SET host = excluded.host, "
                  "backend = excluded.backend, version = excluded.version, "
                  "devices = excluded.devices, threads = excluded.threads, "
                  "state = excluded.state, registered_at = excluded.registered_at, "
                  "last_seen = excluded.last_seen RETURNING ") +
          kWorkerColumns,
      read_worker, row.name, row.host, row.backend, row.version, dump(row.devices), row.threads,
      row.state, row.registered_at, row.last_seen);
  if (!stored.ok()) return stored.error();
  if (!stored.value()) {
    return Error{ErrorCode::kInternal, "register worker " + row.name + ": no row returned", ""};
  }
  return std::move(*stored.value());
}

Status Repository::set_worker_state(const std::string& name, const std::string& state,
                                    double last_seen) {
  return require_change(
      impl_->db.exec("set worker state",
                     "UPDATE workers SET state = ?2, last_seen = ?3 WHERE name = ?1", name, state,
                     last_seen),
      "no worker named '" + name + "'");
}

Result<std::vector<WorkerRow>> Repository::list_workers() {
  return impl_->db.rows("list workers",
                        std::string("SELECT ") + kWorkerColumns + " FROM workers ORDER BY name",
                        read_worker);
}

// ---- jobs ------------------------------------------------------------------------------------

namespace {

/// Inserts a job row and its submission event inside the caller's write transaction; its id.
Result<int64_t> insert_job_row(Database& db, const JobRow& row, const std::string& reason,
                               double now) {
  Result<int64_t> r = db.exec(
      "insert job",
      "INSERT INTO jobs(user_id, name, spec, state, reason, priority, workers, device, "
      "idempotency_key, submitted_at, started_at, finished_at, restarts, max_restarts, step, "
      "steps, attempt, run_dir, assigned, experiment_id, experiment_point) VALUES (?1, ?2, ?3, "
      "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
      row.user_id, row.name, dump(row.spec), row.state, row.reason, row.priority, row.workers,
      row.device, row.idempotency_key, row.submitted_at != 0 ? row.submitted_at : now,
      row.started_at, row.finished_at, row.restarts, row.max_restarts, row.step, row.steps,
      row.attempt, row.run_dir, dump(json(row.assigned)), row.experiment_id,
      dump(row.experiment_point));
  if (!r.ok()) {
    return reword(
        reword(r.error(), ErrorCode::kAlreadyExists,
               "user " + std::to_string(row.user_id) + " already has a job with idempotency key '" +
                   row.idempotency_key + "'"),
        ErrorCode::kNotFound, "no user with id " + std::to_string(row.user_id));
  }
  const int64_t id = db.last_insert_id();
  Result<int64_t> e = db.exec("insert job event",
                              "INSERT INTO job_events(job_id, at, from_state, to_state, "
                              "reason) VALUES (?1, ?2, '', ?3, ?4)",
                              id, now, row.state, reason);
  if (!e.ok()) return e.error();
  return id;
}

}  // namespace

Result<JobRow> Repository::insert_job(const JobRow& row, const std::string& reason, double now) {
  Transaction tx(impl_->db);
  if (Status st = tx.begin(true); !st) return st.error();
  Result<int64_t> id = insert_job_row(impl_->db, row, reason, now);
  if (!id.ok()) return id.error();
  Result<std::optional<JobRow>> stored = get_job(id.value());  // as stored, with the owner's name
  if (!stored.ok()) return stored.error();
  if (Status st = tx.commit(); !st) return st.error();
  return std::move(*stored.value());
}

Result<std::optional<JobRow>> Repository::find_job_by_key(int64_t user_id, const std::string& key) {
  if (key.empty()) return std::optional<JobRow>();
  // The `<> ''` term lets SQLite use the partial unique index jobs_user_key.
  return impl_->db.row(
      "find job by key",
      kJobSelect + " WHERE j.user_id = ?1 AND j.idempotency_key = ?2 AND j.idempotency_key <> ''",
      read_job, user_id, key);
}

Result<std::optional<JobRow>> Repository::get_job(int64_t id) {
  return impl_->db.row("get job", kJobSelect + " WHERE j.id = ?1", read_job, id);
}

Result<std::pair<std::vector<JobRow>, int64_t>> Repository::list_jobs(const JobFilter& filter) {
  // The SQL text depends only on which filters are set (4 cached variants); values are bound.
  std::string where;
  if (filter.user_id) where += " AND j.user_id = ?1";
  if (filter.state) where += " AND j.state = ?2";
  if (!where.empty()) where = " WHERE" + where.substr(4);
  const int64_t limit = std::clamp<int64_t>(filter.limit, 1, kMaxJobsPage);
  const int64_t offset = std::max<int64_t>(filter.offset, 0);

  Transaction tx(impl_->db);  // one snapshot for the count and the page
  if (Status st = tx.begin(false); !st) return st.error();
  Result<std::optional<int64_t>> total = impl_->db.row(
      "count jobs", "SELECT COUNT(*) FROM jobs j" + where,
      [](const Statement& s) { return s.column_int64(0); }, filter.user_id, filter.state);
  if (!total.ok()) return total.error();
  Result<std::vector<JobRow>> rows =
      impl_->db.rows("list jobs", kJobSelect + where + " ORDER BY j.id DESC LIMIT ?3 OFFSET ?4",
                     read_job, filter.user_id, filter.state, limit, offset);
  if (!rows.ok()) return rows.error();
  if (Status c = tx.commit(); !c) return c.error();
  return std::make_pair(std::move(rows).value(), total.value().value_or(0));
}

Result<std::vector<JobRow>> Repository::list_active_jobs() {
  return impl_->db.rows(
      "list active jobs",
      kJobSelect + " WHERE j.state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELED') ORDER BY j.id",
      read_job);
}

Status Repository::update_job(const JobRow& row, const std::optional<EventRow>& event) {
  if (event && event->job_id != 0 && event->job_id != row.id) {
    return invalid_argument("event.job_id", "the event belongs to job " +
                                                std::to_string(event->job_id) + ", not job " +
                                                std::to_string(row.id));
  }
  Transaction tx(impl_->db);
  if (Status st = tx.begin(true); !st) return st;
  Status updated = require_change(
      impl_->db.exec(
          "update job",
          "UPDATE jobs SET state = ?2, reason = ?3, started_at = ?4, finished_at = ?5, "
          "restarts = ?6, step = ?7, attempt = ?8, run_dir = ?9, assigned = ?10 WHERE id = ?1",
          row.id, row.state, row.reason, row.started_at, row.finished_at, row.restarts, row.step,
          row.attempt, row.run_dir, dump(json(row.assigned))),
      "no job with id " + std::to_string(row.id));
  if (!updated.ok()) return updated;
  if (event) {
    Result<int64_t> e =
        impl_->db.exec("append job event",
                       "INSERT INTO job_events(job_id, at, from_state, to_state, reason) "
                       "VALUES (?1, ?2, ?3, ?4, ?5)",
                       row.id, event->at, event->from_state, event->to_state, event->reason);
    if (!e.ok()) return e.error();
  }
  return tx.commit();
}

Result<std::vector<EventRow>> Repository::list_events(int64_t job_id, int64_t after_id,
                                                      int64_t limit) {
  return impl_->db.rows(
      "list job events",
      "SELECT id, job_id, at, from_state, to_state, reason FROM job_events "
      "WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
      [](const Statement& s) {
        return EventRow{s.column_int64(0), s.column_int64(1), s.column_double(2),
                        s.column_text(3),  s.column_text(4),  s.column_text(5)};
      },
      job_id, after_id, std::clamp<int64_t>(limit, 1, kMaxRowsPage));
}

Status Repository::append_logs(const std::vector<LogRow>& rows) {
  if (rows.empty()) return {};
  Transaction tx(impl_->db);
  if (Status st = tx.begin(true); !st) return st;
  if (Status st = impl_->append_logs(rows); !st) return st;
  return tx.commit();
}

Result<std::vector<LogRow>> Repository::list_logs(int64_t job_id, int64_t after_id, int64_t limit) {
  return impl_->db.rows(
      "list job logs",
      "SELECT id, job_id, at, rank, line FROM job_logs WHERE job_id = ?1 AND id > ?2 "
      "ORDER BY id LIMIT ?3",
      [](const Statement& s) {
        return LogRow{s.column_int64(0), s.column_int64(1), s.column_double(2), s.column_int(3),
                      s.column_text(4)};
      },
      job_id, after_id, std::clamp<int64_t>(limit, 1, kMaxRowsPage));
}

// ---- experiments -----------------------------------------------------------------------------

Result<std::pair<ExperimentRow, std::vector<JobRow>>> Repository::insert_experiment(
    const ExperimentRow& row, const std::vector<JobRow>& jobs, const std::string& reason,
    double now) {
  Transaction tx(impl_->db);
  if (Status st = tx.begin(true); !st) return st.error();
  Result<int64_t> r = impl_->db.exec(
      "insert experiment",
      "INSERT INTO experiments(user_id, name, request, max_parallel, idempotency_key, "
      "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
      row.user_id, row.name, dump(row.request), row.max_parallel, row.idempotency_key,
      row.created_at != 0 ? row.created_at : now);
  if (!r.ok()) {
    return reword(
        reword(r.error(), ErrorCode::kAlreadyExists,
               "user " + std::to_string(row.user_id) +
                   " already has an experiment with idempotency key '" + row.idempotency_key + "'"),
        ErrorCode::kNotFound, "no user with id " + std::to_string(row.user_id));
  }
  const int64_t id = impl_->db.last_insert_id();
  for (JobRow job : jobs) {
    job.experiment_id = id;
    Result<int64_t> j = insert_job_row(impl_->db, job, reason, now);
    if (!j.ok()) return j.error();
  }
  Result<std::optional<ExperimentRow>> stored = get_experiment(id);
  if (!stored.ok()) return stored.error();
  Result<std::vector<JobRow>> stored_jobs = list_experiment_jobs(id);
  if (!stored_jobs.ok()) return stored_jobs.error();
  if (Status st = tx.commit(); !st) return st.error();
  return std::make_pair(std::move(*stored.value()), std::move(stored_jobs).value());
}

Result<std::optional<ExperimentRow>> Repository::find_experiment_by_key(int64_t user_id,
                                                                        const std::string& key) {
  if (key.empty()) return std::optional<ExperimentRow>();
  return impl_->db.row("find experiment by key",
                       kExperimentSelect +
                           " WHERE e.user_id = ?1 AND e.idempotency_key = ?2 AND "
                           "e.idempotency_key <> ''",
                       read_experiment, user_id, key);
}

Result<std::optional<ExperimentRow>> Repository::get_experiment(int64_t id) {
  return impl_->db.row("get experiment", kExperimentSelect + " WHERE e.id = ?1", read_experiment,
                       id);
}

Result<std::pair<std::vector<ExperimentRow>, int64_t>> Repository::list_experiments(
    std::optional<int64_t> user_id, int64_t offset, int64_t limit) {
  const std::string where = user_id ? " WHERE e.user_id = ?1" : "";
  Transaction tx(impl_->db);  // one snapshot for the count and the page
  if (Status st = tx.begin(false); !st) return st.error();
  Result<std::optional<int64_t>> total = impl_->db.row(
      "count experiments", "SELECT COUNT(*) FROM experiments e" + where,
      [](const Statement& s) { return s.column_int64(0); }, user_id);
  if (!total.ok()) return total.error();
  Result<std::vector<ExperimentRow>> rows = impl_->db.rows(
      "list experiments", kExperimentSelect + where + " ORDER BY e.id DESC LIMIT ?2 OFFSET ?3",
      read_experiment, user_id, std::clamp<int64_t>(limit, 1, kMaxJobsPage),
      std::max<int64_t>(offset, 0));
  if (!rows.ok()) return rows.error();
  if (Status c = tx.commit(); !c) return c.error();
  return std::make_pair(std::move(rows).value(), total.value().value_or(0));
}

Result<std::vector<std::pair<int64_t, int>>> Repository::experiment_limits() {
  return impl_->db.rows(
      "list experiment limits", "SELECT id, max_parallel FROM experiments",
      [](const Statement& s) { return std::make_pair(s.column_int64(0), s.column_int(1)); });
}

Result<std::vector<JobRow>> Repository::list_experiment_jobs(int64_t experiment_id) {
  // The `<> 0` term lets SQLite use the partial index jobs_experiment.
  return impl_->db.rows(
      "list experiment jobs",
      kJobSelect + " WHERE j.experiment_id = ?1 AND j.experiment_id <> 0 ORDER BY j.id", read_job,
      experiment_id);
}

// ---- metrics ---------------------------------------------------------------------------------

Status Repository::insert_metrics(const std::vector<MetricRow>& rows) {
  if (rows.empty()) return {};
  Transaction tx(impl_->db);
  if (Status st = tx.begin(true); !st) return st;
  if (Status st = impl_->insert_metrics(rows); !st) return st;
  return tx.commit();
}

Result<std::vector<MetricPoint>> Repository::metric_series(int64_t job_id, const std::string& name,
                                                           int64_t since, int64_t max_points) {
  // The points are read in primary-key order (no sort, no temporary table) and, when there
  // are more than max_points, averaged into equal step buckets here: one pass over the rows,
  // which for 100,000 points is several times faster than SQLite's GROUP BY (it sorts).
  Result<std::vector<MetricPoint>> all = impl_->db.rows(
      "metric series",
      "SELECT step, value FROM metrics WHERE job_id = ?1 AND name = ?2 AND step > ?3 ORDER BY step",
      [](const Statement& s) {
        return MetricPoint{s.column_int64(0), s.column_double(1)};
      },
      job_id, name, since);
  if (!all.ok()) return all.error();
  std::vector<MetricPoint>& points = all.value();
  const int64_t P = std::min(max_points, kMaxPoints);
  if (max_points <= 0 || static_cast<int64_t>(points.size()) <= P) return all;
  // Bucket (step - lo) * P / (hi - lo + 1) lies in [0, P) and grows with the step: each
  // non-empty bucket gives the mean of its finite values at its last step.
  const int64_t lo = points.front().step, width = points.back().step - lo + 1;
  std::vector<MetricPoint> out;
  out.reserve(static_cast<size_t>(P));
  int64_t bucket = -1, n = 0;
  double sum = 0.0;
  auto flush = [&](int64_t last_step) {
    if (bucket >= 0)
      out.push_back({last_step, n > 0 ? sum / static_cast<double>(n) : std::nan("")});
  };
  int64_t prev_step = lo;
  for (const MetricPoint& p : points) {
    // (step - lo) * P may overflow int64 only past 9e12 steps; use 128-bit to be exact.
    const auto b = static_cast<int64_t>(static_cast<Int128>(p.step - lo) * P / width);
    if (b != bucket) {
      flush(prev_step);
      bucket = b;
      n = 0;
      sum = 0.0;
    }
    if (std::isfinite(p.value)) {
      sum += p.value;
      ++n;
    }
    prev_step = p.step;
  }
  flush(prev_step);
  return out;
}

Result<std::vector<std::string>> Repository::metric_names(int64_t job_id) {
  // Skips from one name to the next through the primary key instead of reading every point.
  return impl_->db.rows(
      "metric names",
      "WITH RECURSIVE n(name) AS ("
      " SELECT MIN(name) FROM metrics WHERE job_id = ?1"
      " UNION ALL"
      " SELECT (SELECT MIN(name) FROM metrics WHERE job_id = ?1 AND name > n.name)"
      " FROM n WHERE n.name IS NOT NULL)"
      " SELECT name FROM n WHERE name IS NOT NULL",
      [](const Statement& s) { return s.column_text(0); }, job_id);
}

Result<MetricWindow> Repository::metric_window(int64_t job_id, const std::string& name,
                                               int64_t after) {
  // NaN is stored as NULL; infinities are left out like NaN (abs(±inf) is not < 1e308).
  Result<std::optional<MetricWindow>> w = impl_->db.row(
      "metric window",
      "SELECT COALESCE(SUM(CASE WHEN abs(value) < 1e308 THEN value END), 0.0), "
      "COUNT(CASE WHEN abs(value) < 1e308 THEN 1 END), COALESCE(MAX(step), ?3) "
      "FROM metrics WHERE job_id = ?1 AND name = ?2 AND step > ?3",
      [](const Statement& s) {
        return MetricWindow{s.column_double(0), s.column_int64(1), s.column_int64(2)};
      },
      job_id, name, after);
  if (!w.ok()) return w.error();
  return w.value().value_or(MetricWindow{0.0, 0, after});
}

Result<std::optional<MetricPoint>> Repository::metric_last(int64_t job_id,
                                                           const std::string& name) {
  return impl_->db.row(
      "metric last",
      "SELECT step, value FROM metrics WHERE job_id = ?1 AND name = ?2 ORDER BY step DESC LIMIT 1",
      [](const Statement& s) {
        return MetricPoint{s.column_int64(0), s.column_double(1)};
      },
      job_id, name);
}

Status Repository::set_routing(int64_t job_id, int64_t step, const json& record) {
  return impl_->set_routing(job_id, step, record);
}

Status Repository::store_job_reports(int64_t job_id, const std::vector<MetricRow>& rows,
                                     const std::vector<LogRow>& logs,
                                     const std::optional<std::pair<int64_t, json>>& routing) {
  Transaction tx(impl_->db);
  if (Status st = tx.begin(true); !st) return st;
  // The job must exist: without this a foreign-key failure would name no job.
  Result<std::optional<int64_t>> job = impl_->db.row(
      "find job", "SELECT id FROM jobs WHERE id = ?1",
      [](const Statement& st) { return st.column_int64(0); }, job_id);
  if (!job.ok()) return job.error();
  if (!job.value())
    return Error{ErrorCode::kNotFound, "no job with id " + std::to_string(job_id), ""};
  if (Status st = impl_->insert_metrics(rows); !st) return st;
  if (Status st = impl_->append_logs(logs); !st) return st;
  if (routing) {
    if (Status st = impl_->set_routing(job_id, routing->first, routing->second); !st) return st;
  }
  return tx.commit();
}

Result<std::optional<std::pair<int64_t, json>>> Repository::get_routing(int64_t job_id) {
  return impl_->db.row(
      "get routing", "SELECT step, record FROM routing WHERE job_id = ?1",
      [&](const Statement& s) -> Result<std::pair<int64_t, json>> {
        Result<json> j = parse(s.column_text(1), "routing.record of job " + std::to_string(job_id));
        if (!j.ok()) return j.error();
        return std::make_pair(s.column_int64(0), std::move(j).value());
      },
      job_id);
}

// ---- checkpoints -----------------------------------------------------------------------------

Result<CheckpointRow> Repository::insert_checkpoint(const CheckpointRow& row) {
  CheckpointRow out = row;
  out.state = "complete";
  if (!row.files.empty()) {
    out.bytes = 0;
    for (const CheckpointFile& f : row.files) out.bytes += f.bytes;
  }
  Result<int64_t> r =
      impl_->db.exec("insert checkpoint",
                     "INSERT INTO checkpoints(job_id, step, path, state, created_at, bytes, files) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                     out.job_id, out.step, out.path, out.state, out.created_at, out.bytes,
                     dump(files_to_json(out.files)));
  if (!r.ok()) {
    return reword(reword(r.error(), ErrorCode::kAlreadyExists,
                         "job " + std::to_string(row.job_id) +
                             " already has a checkpoint at step " + std::to_string(row.step)),
                  ErrorCode::kNotFound, "no job with id " + std::to_string(row.job_id));
  }
  out.id = impl_->db.last_insert_id();
  return out;
}

Result<std::optional<CheckpointRow>> Repository::get_checkpoint(int64_t id) {
  return impl_->db.row(
      "get checkpoint",
      std::string("SELECT ") + kCheckpointColumns + " FROM checkpoints WHERE id = ?1",
      read_checkpoint, id);
}

Result<std::vector<CheckpointRow>> Repository::list_checkpoints(int64_t job_id,
                                                                bool include_deleted) {
  return impl_->db.rows(
      "list checkpoints",
      std::string("SELECT ") + kCheckpointColumns +
          " FROM checkpoints WHERE job_id = ?1 AND (?2 OR state = 'complete') ORDER BY step",
      read_checkpoint, job_id, include_deleted ? 1 : 0);
}

Status Repository::mark_checkpoint_deleted(int64_t id) {
  return require_change(
      impl_->db.exec("mark checkpoint deleted",
                     "UPDATE checkpoints SET state = 'deleted' WHERE id = ?1", id),
      "no checkpoint with id " + std::to_string(id));
}

// ---- benchmark -------------------------------------------------------------------------------

Result<double> bench_metrics_ingest(const fs::path& file, int64_t rows, int64_t batch) {
  if (rows <= 0 || batch <= 0) {
    return invalid_argument(rows <= 0 ? "rows" : "batch", "must be positive");
  }
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(file.string() + suffix, ec);
  Result<std::unique_ptr<Repository>> opened = Repository::open(file);
  if (!opened.ok()) return opened.error();
  Repository& repo = *opened.value();
  Result<UserRow> user = repo.create_user("bench", "user", 0, 0.0);
  if (!user.ok()) return user.error();
  JobRow job;
  job.user_id = user.value().id;
  job.name = "bench";
  job.spec = json::object();
  job.state = "RUNNING";
  Result<JobRow> inserted = repo.insert_job(job, "bench", 0.0);
  if (!inserted.ok()) return inserted.error();

  // Four series, as a training run reports them, steps ascending; only inserts are timed.
  const std::string names[] = {"loss", "aux_group", "imbalance", "lr"};
  std::vector<MetricRow> buffer;
  double seconds = 0.0;
  for (int64_t first = 0; first < rows; first += batch) {
    buffer.clear();
    for (int64_t i = first; i < std::min(rows, first + batch); ++i) {
      buffer.push_back(
          MetricRow{inserted.value().id, names[i % 4], i / 4, 1.0 / static_cast<double>(i + 1)});
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (Status st = repo.insert_metrics(buffer); !st) return st.error();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return static_cast<double>(rows) / std::max(seconds, 1e-9);
}

}  // namespace mohge::db
