// The coordinator's SQLite repository (storage/repository.hpp): schema and migrations, every
// table's reads and writes, error mapping, and the WAL concurrency rules (storage/SCHEMA.md).
// Each test works on its own database file in a fresh temporary folder; a few use the raw
// SQLite API to set up states the repository never creates itself (a future schema, a lock
// held by another connection, a failing trigger).
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>

#include "storage/repository.hpp"

namespace mohge::db {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

/// A raw SQLite connection for setting up states the repository never creates.
class RawDb {
 public:
  explicit RawDb(const fs::path& file) {
    EXPECT_EQ(sqlite3_open(file.string().c_str(), &db_), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~RawDb() { sqlite3_close(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;
  int exec(const std::string& sql) {
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
  }
  /// The first column of the first row as text ("" when no row).
  std::string scalar(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
    std::string out;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0)) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    }
    sqlite3_finalize(s);
    return out;
  }

 private:
  sqlite3* db_ = nullptr;
};

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("mohge_test_db_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    file_ = dir_ / "coordinator.db";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<Repository> open_repo(bool read_only = false, int busy_timeout_ms = 5000) {
    Result<std::unique_ptr<Repository>> r = Repository::open(file_, read_only, busy_timeout_ms);
    EXPECT_TRUE(r.ok()) << r.error().to_string();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  static UserRow make_user(Repository& repo, const std::string& name) {
    Result<UserRow> u = repo.create_user(name, "user", 0, 100.0);
    EXPECT_TRUE(u.ok()) << u.error().to_string();
    return u.ok() ? u.value() : UserRow{};
  }

  static JobRow job_for(const UserRow& user, const std::string& name, const std::string& key = "") {
    JobRow j;
    j.user_id = user.id;
    j.name = name;
    j.spec = json{{"name", name}, {"train", {{"steps", 100}}}};
    j.state = "QUEUED";
    j.priority = 50;
    j.workers = 2;
    j.device = "cpu";
    j.idempotency_key = key;
    j.submitted_at = 1000.5;
    j.steps = 100;
    return j;
  }

  static JobRow insert(Repository& repo, const JobRow& row) {
    Result<JobRow> j = repo.insert_job(row, "submitted", row.submitted_at);
    EXPECT_TRUE(j.ok()) << j.error().to_string();
    return j.ok() ? j.value() : JobRow{};
  }

  fs::path dir_;
  fs::path file_;
};

// ---- schema and open -------------------------------------------------------------------------

TEST_F(RepositoryTest, MigrationsCreateTheSchemaAndReopeningKeepsIt) {
  int version = 0;
  {
    auto repo = open_repo();
    ASSERT_TRUE(repo);
    version = repo->schema_version();
    EXPECT_GE(version, 1);
    make_user(*repo, "alice");
  }
  {
    RawDb raw(file_);
    EXPECT_EQ(raw.scalar("PRAGMA user_version"), std::to_string(version));
    EXPECT_EQ(raw.scalar("PRAGMA journal_mode"), "wal");
    for (const char* table : {"users", "tokens", "workers", "jobs", "job_events", "job_logs",
                              "metrics", "routing", "checkpoints"}) {
      EXPECT_EQ(raw.scalar(std::string("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                       "name = '") +
                           table + "'"),
                table);
    }
    for (const char* index : {"jobs_user_key", "jobs_user_id", "jobs_state_id", "job_events_job_id",
                              "job_logs_job_id"}) {
      EXPECT_EQ(raw.scalar(std::string("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                       "name = '") +
                           index + "'"),
                index);
    }
    // The metrics table is clustered on its key.
    EXPECT_NE(
        raw.scalar("SELECT sql FROM sqlite_master WHERE name = 'metrics'").find("WITHOUT ROWID"),
        std::string::npos);
  }
  // Re-running the CREATE TABLE scripts would fail; reopening must find the data intact.
  auto again = open_repo();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->schema_version(), version);
  Result<std::optional<UserRow>> alice = again->get_user_by_name("alice");
  ASSERT_TRUE(alice.ok());
  EXPECT_TRUE(alice.value().has_value());
}

TEST_F(RepositoryTest, FutureSchemaVersionIsRefused) {
  int version = 0;
  {
    auto repo = open_repo();
    ASSERT_TRUE(repo);
    version = repo->schema_version();
  }
  {
    RawDb raw(file_);
    ASSERT_EQ(raw.exec("PRAGMA user_version = 99"), SQLITE_OK);
  }
  for (bool read_only : {false, true}) {
    Result<std::unique_ptr<Repository>> r = Repository::open(file_, read_only);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
    EXPECT_NE(r.error().message.find(file_.string()), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("99"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("(" + std::to_string(version) + ")"), std::string::npos)
        << r.error().message;
  }
  RawDb raw(file_);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), "99");  // untouched
}

TEST_F(RepositoryTest, ReadOnlyOpenOfAMissingFileFailsAndCreatesNothing) {
  Result<std::unique_ptr<Repository>> r = Repository::open(file_, /*read_only=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find(file_.string()), std::string::npos) << r.error().message;
  EXPECT_FALSE(fs::exists(file_));
}

TEST_F(RepositoryTest, ReadOnlyOpenNeverMigrates) {
  {
    RawDb raw(file_);  // an existing database at version 0
    ASSERT_EQ(raw.exec("CREATE TABLE unrelated (x)"), SQLITE_OK);
  }
  Result<std::unique_ptr<Repository>> r = Repository::open(file_, /*read_only=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
  RawDb raw(file_);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), "0");
  EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'users'"), "0");
}

// ---- users and tokens ------------------------------------------------------------------------

TEST_F(RepositoryTest, UsersHaveUniqueNames) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  Result<UserRow> alice = repo->create_user("alice", "admin", 4, 123.25);
  ASSERT_TRUE(alice.ok()) << alice.error().to_string();
  EXPECT_GT(alice.value().id, 0);
  UserRow bob = make_user(*repo, "bob");
  EXPECT_NE(bob.id, alice.value().id);

  Result<UserRow> dup = repo->create_user("alice", "user", 0, 124.0);
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ(dup.error().field, "name");

  Result<UserRow> bad = repo->create_user("Alice Smith", "user", 0, 1.0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().field, "name");
  Result<UserRow> bad_role = repo->create_user("carol", "root", 0, 1.0);
  ASSERT_FALSE(bad_role.ok());
  EXPECT_EQ(bad_role.error().field, "role");

  Result<std::optional<UserRow>> got = repo->get_user(alice.value().id);
  ASSERT_TRUE(got.ok() && got.value());
  EXPECT_EQ(got.value()->name, "alice");
  EXPECT_EQ(got.value()->role, "admin");
  EXPECT_EQ(got.value()->max_workers, 4);
  EXPECT_DOUBLE_EQ(got.value()->created_at, 123.25);
  EXPECT_FALSE(repo->get_user(9999).value().has_value());
  EXPECT_FALSE(repo->get_user_by_name("nobody").value().has_value());

  ASSERT_TRUE(repo->set_user_quota(bob.id, 7).ok());
  EXPECT_EQ(repo->get_user_by_name("bob").value()->max_workers, 7);
  Status missing = repo->set_user_quota(9999, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  Result<std::vector<UserRow>> all = repo->list_users();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all.value().size(), 2u);
  EXPECT_EQ(all.value()[0].name, "alice");
  EXPECT_EQ(all.value()[1].name, "bob");
}

TEST_F(RepositoryTest, TokensAreFoundByHashUntilRevoked) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  const std::string hash(64, 'a');
  Result<TokenRow> token = repo->create_token(alice.id, hash, "laptop", 50.0);
  ASSERT_TRUE(token.ok()) << token.error().to_string();
  EXPECT_FALSE(token.value().revoked);

  Result<std::optional<UserRow>> owner = repo->find_user_by_token(hash);
  ASSERT_TRUE(owner.ok() && owner.value());
  EXPECT_EQ(owner.value()->id, alice.id);
  EXPECT_FALSE(repo->find_user_by_token(std::string(64, 'b')).value().has_value());

  Result<TokenRow> dup = repo->create_token(alice.id, hash, "again", 51.0);
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  Result<TokenRow> orphan = repo->create_token(9999, std::string(64, 'c'), "", 51.0);
  ASSERT_FALSE(orphan.ok());
  EXPECT_EQ(orphan.error().code, ErrorCode::kNotFound);

  ASSERT_TRUE(repo->revoke_token(token.value().id).ok());
  EXPECT_FALSE(repo->find_user_by_token(hash).value().has_value());
  Result<std::vector<TokenRow>> tokens = repo->list_tokens(alice.id);
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens.value().size(), 1u);
  EXPECT_EQ(tokens.value()[0].label, "laptop");
  EXPECT_TRUE(tokens.value()[0].revoked);
  Status missing = repo->revoke_token(9999);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

// ---- workers ---------------------------------------------------------------------------------

TEST_F(RepositoryTest, WorkersAreUpsertedByName) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  WorkerRow w;
  w.name = "gpu-1";
  w.host = "host-a";
  w.backend = "cuda";
  w.version = "0.1";
  w.devices = json::array({{{"index", 0}, {"name", "H100"}, {"memory_bytes", 80}}});
  w.threads = 16;
  w.state = "online";
  w.registered_at = 10.0;
  w.last_seen = 11.0;
  Result<WorkerRow> first = repo->upsert_worker(w);
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  EXPECT_GT(first.value().id, 0);
  EXPECT_EQ(first.value().devices, w.devices);

  w.host = "host-b";
  w.last_seen = 20.0;
  Result<WorkerRow> second = repo->upsert_worker(w);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second.value().id, first.value().id);
  EXPECT_EQ(second.value().host, "host-b");

  ASSERT_TRUE(repo->set_worker_state("gpu-1", "lost", 30.0).ok());
  Status missing = repo->set_worker_state("nope", "lost", 30.0);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  Result<std::vector<WorkerRow>> all = repo->list_workers();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all.value().size(), 1u);
  EXPECT_EQ(all.value()[0].state, "lost");
  EXPECT_DOUBLE_EQ(all.value()[0].last_seen, 30.0);
  EXPECT_EQ(all.value()[0].threads, 16);
  EXPECT_EQ(all.value()[0].backend, "cuda");
}

// ---- jobs ------------------------------------------------------------------------------------

TEST_F(RepositoryTest, InsertJobAssignsIdsAndRecordsTheFirstEvent) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  JobRow a = insert(*repo, job_for(alice, "a"));
  JobRow b = insert(*repo, job_for(alice, "b"));
  EXPECT_GT(a.id, 0);
  EXPECT_GT(b.id, a.id);
  EXPECT_EQ(a.user, "alice");

  Result<std::optional<JobRow>> got = repo->get_job(a.id);
  ASSERT_TRUE(got.ok() && got.value());
  const JobRow& j = *got.value();
  EXPECT_EQ(j.name, "a");
  EXPECT_EQ(j.spec, job_for(alice, "a").spec);
  EXPECT_EQ(j.state, "QUEUED");
  EXPECT_EQ(j.workers, 2);
  EXPECT_EQ(j.steps, 100);
  EXPECT_DOUBLE_EQ(j.submitted_at, 1000.5);
  EXPECT_FALSE(repo->get_job(9999).value().has_value());

  Result<std::vector<EventRow>> events = repo->list_events(a.id);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events.value().size(), 1u);
  EXPECT_EQ(events.value()[0].from_state, "");
  EXPECT_EQ(events.value()[0].to_state, "QUEUED");
  EXPECT_EQ(events.value()[0].reason, "submitted");

  JobRow orphan = job_for(alice, "orphan");
  orphan.user_id = 9999;
  Result<JobRow> bad = repo->insert_job(orphan, "", 1.0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kNotFound);
}

TEST_F(RepositoryTest, IdempotencyKeysAreUniquePerUser) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  UserRow bob = make_user(*repo, "bob");
  JobRow first = insert(*repo, job_for(alice, "first", "key-1"));

  Result<JobRow> dup = repo->insert_job(job_for(alice, "again", "key-1"), "submitted", 2.0);
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ(dup.error().field, "idempotency_key");
  // The failed insert left nothing behind: no job, no event.
  EXPECT_EQ(repo->list_jobs(JobFilter{}).value().second, 1);

  JobRow bobs = insert(*repo, job_for(bob, "bobs", "key-1"));  // another user: fine
  EXPECT_NE(bobs.id, first.id);
  insert(*repo, job_for(alice, "no key 1"));  // empty keys never collide
  insert(*repo, job_for(alice, "no key 2"));

  Result<std::optional<JobRow>> found = repo->find_job_by_key(alice.id, "key-1");
  ASSERT_TRUE(found.ok() && found.value());
  EXPECT_EQ(found.value()->id, first.id);
  EXPECT_EQ(repo->find_job_by_key(bob.id, "key-1").value()->id, bobs.id);
  EXPECT_FALSE(repo->find_job_by_key(alice.id, "key-2").value().has_value());
  EXPECT_FALSE(repo->find_job_by_key(alice.id, "").value().has_value());
}

// ---- experiments ----------------------------------------------------------------------------

TEST_F(RepositoryTest, AnExperimentAndItsJobsAreStoredTogetherOrNotAtAll) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  ExperimentRow e;
  e.user_id = alice.id;
  e.name = "cmp";
  e.request = {{"name", "cmp"}, {"grid", {{"train.seed", {1, 2}}}}};
  e.max_parallel = 1;
  e.idempotency_key = "exp-1";
  std::vector<JobRow> jobs;
  for (int seed : {1, 2}) {
    JobRow j = job_for(alice, "cmp/base/seed=" + std::to_string(seed));
    j.experiment_point = {
        {"index", seed - 1}, {"variant", "base"}, {"coords", {{"train.seed", seed}}}};
    jobs.push_back(j);
  }
  auto stored = repo->insert_experiment(e, jobs, "submitted", 500.0);
  ASSERT_TRUE(stored.ok()) << stored.error().to_string();
  const ExperimentRow& got = stored.value().first;
  EXPECT_GT(got.id, 0);
  EXPECT_EQ(got.user, "alice");
  EXPECT_EQ(got.request, e.request);
  EXPECT_DOUBLE_EQ(got.created_at, 500.0);
  ASSERT_EQ(stored.value().second.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(stored.value().second[i].experiment_id, got.id);
    EXPECT_EQ(stored.value().second[i].experiment_point, jobs[i].experiment_point);
    EXPECT_EQ(repo->list_events(stored.value().second[i].id).value().size(), 1u);
  }
  EXPECT_EQ(repo->list_experiment_jobs(got.id).value().size(), 2u);
  EXPECT_EQ(repo->get_job(stored.value().second[0].id).value()->experiment_id, got.id);

  // The same key again: kAlreadyExists, and nothing new is left behind.
  auto dup = repo->insert_experiment(e, jobs, "submitted", 501.0);
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ(repo->list_jobs(JobFilter{}).value().second, 2);
  EXPECT_EQ(repo->find_experiment_by_key(alice.id, "exp-1").value()->id, got.id);
  EXPECT_FALSE(repo->find_experiment_by_key(alice.id, "exp-2").value().has_value());

  // A job that violates the schema (its state) rolls the whole experiment back.
  ExperimentRow e2 = e;
  e2.idempotency_key = "exp-2";
  std::vector<JobRow> bad = jobs;
  bad[1].state = "DANCING";
  auto failed = repo->insert_experiment(e2, bad, "submitted", 502.0);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(repo->list_jobs(JobFilter{}).value().second, 2);
  EXPECT_EQ(repo->list_experiments(std::nullopt, 0, 50).value().second, 1);

  // Listing: per user, newest first; the limits for the scheduler.
  UserRow bob = make_user(*repo, "bob");
  ExperimentRow b = e;
  b.user_id = bob.id;
  b.max_parallel = 0;
  auto bobs = repo->insert_experiment(b, {}, "submitted", 503.0);
  ASSERT_TRUE(bobs.ok()) << bobs.error().to_string();
  auto all = repo->list_experiments(std::nullopt, 0, 50);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all.value().second, 2);
  EXPECT_EQ(all.value().first[0].id, bobs.value().first.id);
  auto only_alice = repo->list_experiments(alice.id, 0, 50);
  ASSERT_EQ(only_alice.value().first.size(), 1u);
  EXPECT_EQ(only_alice.value().first[0].id, got.id);
  EXPECT_EQ(repo->list_experiments(alice.id, 1, 50).value().first.size(), 0u);
  auto limits = repo->experiment_limits();
  ASSERT_TRUE(limits.ok());
  EXPECT_EQ(limits.value().size(), 2u);
}

// A database of schema version 1 (before experiments) is migrated in place: its jobs keep
// their data and belong to no experiment.
TEST_F(RepositoryTest, AVersionOneDatabaseGainsExperimentsAndKeepsItsJobs) {
  int64_t id = 0;
  {
    auto repo = open_repo();
    ASSERT_TRUE(repo);
    UserRow alice = make_user(*repo, "alice");
    id = insert(*repo, job_for(alice, "old")).id;
  }
  {
    RawDb raw(file_);
    ASSERT_EQ(raw.exec("DROP INDEX jobs_experiment; ALTER TABLE jobs DROP COLUMN experiment_point;"
                       "ALTER TABLE jobs DROP COLUMN experiment_id; DROP TABLE experiments;"
                       "PRAGMA user_version = 1"),
              SQLITE_OK);
  }
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  EXPECT_EQ(repo->schema_version(), 2);
  Result<std::optional<JobRow>> old = repo->get_job(id);
  ASSERT_TRUE(old.ok() && old.value()) << (old.ok() ? "" : old.error().to_string());
  EXPECT_EQ(old.value()->name, "old");
  EXPECT_EQ(old.value()->experiment_id, 0);
  EXPECT_EQ(old.value()->experiment_point, json::object());
  EXPECT_TRUE(repo->list_experiments(std::nullopt, 0, 10).ok());
}

TEST_F(RepositoryTest, ListJobsFiltersPagesAndCounts) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  UserRow bob = make_user(*repo, "bob");
  std::vector<int64_t> alice_ids;
  for (int i = 0; i < 7; ++i) {
    JobRow j = insert(*repo, job_for(alice, "a" + std::to_string(i)));
    alice_ids.push_back(j.id);
    if (i % 2 == 0) {
      j.state = "RUNNING";
      ASSERT_TRUE(repo->update_job(j).ok());
    }
  }
  for (int i = 0; i < 3; ++i) insert(*repo, job_for(bob, "b" + std::to_string(i)));

  auto [all, total] = repo->list_jobs(JobFilter{}).value();
  EXPECT_EQ(total, 10);
  ASSERT_EQ(all.size(), 10u);
  for (size_t i = 1; i < all.size(); ++i) EXPECT_GT(all[i - 1].id, all[i].id);  // newest first
  EXPECT_EQ(all.front().user, "bob");

  JobFilter mine;
  mine.user_id = alice.id;
  mine.limit = 3;
  auto [page1, mine_total] = repo->list_jobs(mine).value();
  EXPECT_EQ(mine_total, 7);
  ASSERT_EQ(page1.size(), 3u);
  EXPECT_EQ(page1[0].id, alice_ids[6]);
  EXPECT_EQ(page1[2].id, alice_ids[4]);
  mine.offset = 6;
  auto [last, last_total] = repo->list_jobs(mine).value();
  EXPECT_EQ(last_total, 7);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].id, alice_ids[0]);

  JobFilter running;
  running.state = "RUNNING";
  auto [run_rows, run_total] = repo->list_jobs(running).value();
  EXPECT_EQ(run_total, 4);
  for (const JobRow& j : run_rows) EXPECT_EQ(j.state, "RUNNING");

  JobFilter both;
  both.user_id = bob.id;
  both.state = "RUNNING";
  auto [none, none_total] = repo->list_jobs(both).value();
  EXPECT_EQ(none_total, 0);
  EXPECT_TRUE(none.empty());

  JobFilter zero;  // the limit is clamped into 1..1000
  zero.limit = 0;
  EXPECT_EQ(repo->list_jobs(zero).value().first.size(), 1u);

  Result<std::vector<JobRow>> active = repo->list_active_jobs();
  ASSERT_TRUE(active.ok());
  EXPECT_EQ(active.value().size(), 10u);
  EXPECT_EQ(active.value().front().id, alice_ids[0]);  // oldest first
}

TEST_F(RepositoryTest, UpdateJobAppendsItsEventAtomically) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  JobRow j = insert(*repo, job_for(alice, "a"));

  j.state = "RUNNING";
  j.reason = "placed";
  j.started_at = 2000.0;
  j.attempt = 1;
  j.step = 42;
  j.run_dir = "runs/1";
  j.assigned = {"w1", "w0"};
  ASSERT_TRUE(repo->update_job(j, EventRow{0, j.id, 2000.0, "QUEUED", "RUNNING", "placed"}).ok());
  JobRow got = *repo->get_job(j.id).value();
  EXPECT_EQ(got.state, "RUNNING");
  EXPECT_EQ(got.reason, "placed");
  EXPECT_DOUBLE_EQ(got.started_at, 2000.0);
  EXPECT_EQ(got.attempt, 1);
  EXPECT_EQ(got.step, 42);
  EXPECT_EQ(got.run_dir, "runs/1");
  EXPECT_EQ(got.assigned, (std::vector<std::string>{"w1", "w0"}));
  std::vector<EventRow> events = repo->list_events(j.id).value();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].from_state, "QUEUED");
  EXPECT_EQ(events[1].to_state, "RUNNING");

  // When the event cannot be written, the job update is rolled back with it.
  {
    RawDb raw(file_);
    ASSERT_EQ(raw.exec("CREATE TRIGGER fail_event BEFORE INSERT ON job_events "
                       "WHEN NEW.reason = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"),
              SQLITE_OK);
  }
  JobRow failing = got;
  failing.state = "FAILED";
  Status st = repo->update_job(failing, EventRow{0, j.id, 3000.0, "RUNNING", "FAILED", "boom"});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(repo->get_job(j.id).value()->state, "RUNNING");
  EXPECT_EQ(repo->list_events(j.id).value().size(), 2u);

  JobRow ghost = got;
  ghost.id = 9999;
  Status missing = repo->update_job(ghost, EventRow{0, 9999, 1.0, "QUEUED", "RUNNING", ""});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(repo->list_events(9999).value().empty());

  // An invalid state is refused by the schema.
  JobRow weird = got;
  weird.state = "DANCING";
  Status invalid = repo->update_job(weird);
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(invalid.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(invalid.error().field, "state");
}

TEST_F(RepositoryTest, EventsAndLogsPageWithSinceCursors) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  UserRow alice = make_user(*repo, "alice");
  JobRow a = insert(*repo, job_for(alice, "a"));
  JobRow b = insert(*repo, job_for(alice, "b"));
  const char* states[] = {"STARTING", "RUNNING", "SUCCEEDED"};
  std::string from = "QUEUED";
  for (const char* to : states) {
    a.state = to;
    ASSERT_TRUE(repo->update_job(a, EventRow{0, a.id, 1.0, from, to, ""}).ok());
    from = to;
  }
  std::vector<EventRow> first = repo->list_events(a.id, 0, 2).value();
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].to_state, "QUEUED");
  EXPECT_EQ(first[1].to_state, "STARTING");
  std::vector<EventRow> rest = repo->list_events(a.id, first.back().id).value();
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].to_state, "RUNNING");
  EXPECT_EQ(rest[1].to_state, "SUCCEEDED");
  EXPECT_TRUE(repo->list_events(a.id, rest.back().id).value().empty());
  EXPECT_EQ(repo->list_events(b.id).value().size(), 1u);  // other jobs' events are not mixed in

  std::vector<LogRow> logs;
  for (int i = 0; i < 5; ++i)
    logs.push_back(LogRow{0, a.id, 1.0 + i, i - 1, "line " + std::to_string(i)});
  logs.push_back(LogRow{0, b.id, 9.0, 0, "other job"});
  ASSERT_TRUE(repo->append_logs(logs).ok());
  std::vector<LogRow> l1 = repo->list_logs(a.id, 0, 3).value();
  ASSERT_EQ(l1.size(), 3u);
  EXPECT_EQ(l1[0].line, "line 0");
  EXPECT_EQ(l1[0].rank, -1);
  std::vector<LogRow> l2 = repo->list_logs(a.id, l1.back().id, 100).value();
  ASSERT_EQ(l2.size(), 2u);
  EXPECT_EQ(l2[0].line, "line 3");
  EXPECT_GT(l2[0].id, l1.back().id);
  EXPECT_EQ(repo->list_logs(b.id).value().size(), 1u);

  // A batch with a bad row (unknown job) is written entirely or not at all.
  Status bad = repo->append_logs({LogRow{0, a.id, 1.0, 0, "kept?"}, LogRow{0, 9999, 1.0, 0, "x"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(repo->list_logs(a.id).value().size(), 5u);
}

// ---- metrics ---------------------------------------------------------------------------------

TEST_F(RepositoryTest, MetricsAreDeduplicatedByJobNameAndStep) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  ASSERT_TRUE(repo->insert_metrics({{j.id, "loss", 1, 2.5}, {j.id, "loss", 2, 2.0}}).ok());
  // A replay after a restart: the same (job, name, step) keeps its first value.
  ASSERT_TRUE(repo->insert_metrics({{j.id, "loss", 2, 99.0}, {j.id, "loss", 3, 1.5}}).ok());
  std::vector<MetricPoint> s = repo->metric_series(j.id, "loss", 0, 0).value();
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[1].step, 2);
  EXPECT_DOUBLE_EQ(s[1].value, 2.0);
  RawDb raw(file_);
  EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM metrics"), "3");
}

TEST_F(RepositoryTest, MetricValuesMayBeNonFinite) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  const double inf = std::numeric_limits<double>::infinity();
  ASSERT_TRUE(repo->insert_metrics({{j.id, "loss", 1, std::nan("")}, {j.id, "loss", 2, inf}}).ok());
  std::vector<MetricPoint> s = repo->metric_series(j.id, "loss", 0, 0).value();
  ASSERT_EQ(s.size(), 2u);
  EXPECT_TRUE(std::isnan(s[0].value));
  EXPECT_EQ(s[1].value, inf);
}

TEST_F(RepositoryTest, MetricWindowsSumFiniteValuesAfterAStepAndMetricLastFindsTheEnd) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  const double inf = std::numeric_limits<double>::infinity();
  ASSERT_TRUE(repo->insert_metrics({{j.id, "tps", 1, 100.0},
                                    {j.id, "tps", 2, 2.0},
                                    {j.id, "tps", 3, std::nan("")},
                                    {j.id, "tps", 4, inf},
                                    {j.id, "tps", 5, 4.0},
                                    {j.id, "other", 9, 1000.0}})
                  .ok());
  MetricWindow w = repo->metric_window(j.id, "tps", 1).value();
  EXPECT_EQ(w.sum, 6.0);  // 2 + 4: NaN and inf left out, step 1 before the window
  EXPECT_EQ(w.count, 2);
  EXPECT_EQ(w.last_step, 5);
  // Read again from the last step: nothing new, the caller's running sums stay.
  w = repo->metric_window(j.id, "tps", 5).value();
  EXPECT_EQ(w.count, 0);
  EXPECT_EQ(w.sum, 0.0);
  EXPECT_EQ(w.last_step, 5);
  ASSERT_TRUE(repo->insert_metrics({{j.id, "tps", 6, 8.0}}).ok());
  w = repo->metric_window(j.id, "tps", 5).value();
  EXPECT_EQ(w.sum, 8.0);
  EXPECT_EQ(w.last_step, 6);
  EXPECT_EQ(repo->metric_window(j.id, "none", 0).value().last_step, 0);
  std::optional<MetricPoint> last = repo->metric_last(j.id, "tps").value();
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->step, 6);
  EXPECT_EQ(last->value, 8.0);
  EXPECT_FALSE(repo->metric_last(j.id, "none").value().has_value());
}

TEST_F(RepositoryTest, MetricSeriesFiltersBySinceAndDownsamplesInBuckets) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  std::vector<MetricRow> rows;
  for (int step = 1; step <= 10; ++step) {
    rows.push_back({j.id, "loss", step, static_cast<double>(step)});
    rows.push_back({j.id, "val_loss", step, -1.0});
  }
  ASSERT_TRUE(repo->insert_metrics(rows).ok());

  // Few enough points: all of them, ascending.
  std::vector<MetricPoint> all = repo->metric_series(j.id, "loss", 0, 10).value();
  ASSERT_EQ(all.size(), 10u);
  EXPECT_EQ(all.front().step, 1);
  EXPECT_EQ(all.back().step, 10);
  std::vector<MetricPoint> since = repo->metric_series(j.id, "loss", 7, 0).value();
  ASSERT_EQ(since.size(), 3u);
  EXPECT_EQ(since[0].step, 8);

  // Steps 1..10 into 3 buckets: b = (step-1)*3/10 → {1..4} {5..7} {8..10}.
  std::vector<MetricPoint> three = repo->metric_series(j.id, "loss", 0, 3).value();
  ASSERT_EQ(three.size(), 3u);
  EXPECT_EQ(three[0].step, 4);
  EXPECT_DOUBLE_EQ(three[0].value, 2.5);
  EXPECT_EQ(three[1].step, 7);
  EXPECT_DOUBLE_EQ(three[1].value, 6.0);
  EXPECT_EQ(three[2].step, 10);
  EXPECT_DOUBLE_EQ(three[2].value, 9.0);

  // Steps 5..10 (since 4) into 3 buckets: b = (step-5)*3/6 → {5,6} {7,8} {9,10}.
  std::vector<MetricPoint> later = repo->metric_series(j.id, "loss", 4, 3).value();
  ASSERT_EQ(later.size(), 3u);
  EXPECT_EQ(later[0].step, 6);
  EXPECT_DOUBLE_EQ(later[0].value, 5.5);
  EXPECT_EQ(later[1].step, 8);
  EXPECT_DOUBLE_EQ(later[1].value, 7.5);
  EXPECT_EQ(later[2].step, 10);
  EXPECT_DOUBLE_EQ(later[2].value, 9.5);

  EXPECT_TRUE(repo->metric_series(j.id, "loss", 10, 3).value().empty());
  EXPECT_TRUE(repo->metric_series(j.id, "nope", 0, 3).value().empty());
  EXPECT_EQ(repo->metric_names(j.id).value(), (std::vector<std::string>{"loss", "val_loss"}));
  EXPECT_TRUE(repo->metric_names(j.id + 1).value().empty());
}

TEST_F(RepositoryTest, MetricSeriesDownsamplesALongRun) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  std::vector<MetricRow> rows;
  for (int step = 1; step <= 100000; ++step) rows.push_back({j.id, "loss", step, 1.0 * step});
  ASSERT_TRUE(repo->insert_metrics(rows).ok());

  std::vector<MetricPoint> s = repo->metric_series(j.id, "loss", 0, 500).value();
  ASSERT_LE(s.size(), 500u);
  ASSERT_GE(s.size(), 490u);
  for (size_t i = 1; i < s.size(); ++i) EXPECT_LT(s[i - 1].step, s[i].step);
  EXPECT_EQ(s.back().step, 100000);
  // 100,000 steps in 500 buckets of 200: the first is steps 1..200, mean 100.5.
  EXPECT_EQ(s.front().step, 200);
  EXPECT_DOUBLE_EQ(s.front().value, 100.5);

  std::vector<MetricPoint> tail = repo->metric_series(j.id, "loss", 99900, 500).value();
  ASSERT_EQ(tail.size(), 100u);  // 100 points ≤ 500: not downsampled
  EXPECT_EQ(tail.front().step, 99901);
}

TEST_F(RepositoryTest, RoutingKeepsTheHigherStep) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  EXPECT_FALSE(repo->get_routing(j.id).value().has_value());
  ASSERT_TRUE(repo->set_routing(j.id, 100, json{{"layers", {1, 2}}}).ok());
  ASSERT_TRUE(repo->set_routing(j.id, 50, json{{"layers", {0}}}).ok());  // older: ignored
  auto r = repo->get_routing(j.id).value();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 100);
  EXPECT_EQ(r->second, (json{{"layers", {1, 2}}}));
  ASSERT_TRUE(repo->set_routing(j.id, 200, json{{"layers", {3}}}).ok());
  EXPECT_EQ(repo->get_routing(j.id).value()->first, 200);
}

// ---- checkpoints -----------------------------------------------------------------------------

TEST_F(RepositoryTest, CheckpointsAreUniquePerStepAndDeletedOnesAreHidden) {
  auto repo = open_repo();
  ASSERT_TRUE(repo);
  JobRow j = insert(*repo, job_for(make_user(*repo, "alice"), "a"));
  CheckpointRow c;
  c.job_id = j.id;
  c.step = 200;
  c.path = "runs/1/ckpt-200";
  c.created_at = 5.0;
  c.files = {{"model.safetensors", 1000, std::string(64, 'f')}, {"state.json", 24, "ab"}};
  Result<CheckpointRow> second = repo->insert_checkpoint(c);
  ASSERT_TRUE(second.ok()) << second.error().to_string();
  EXPECT_EQ(second.value().state, "complete");
  EXPECT_EQ(second.value().bytes, 1024);
  c.step = 100;
  c.path = "runs/1/ckpt-100";
  Result<CheckpointRow> first = repo->insert_checkpoint(c);
  ASSERT_TRUE(first.ok());

  Result<CheckpointRow> dup = repo->insert_checkpoint(c);
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);

  std::vector<CheckpointRow> list = repo->list_checkpoints(j.id).value();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].step, 100);  // oldest step first
  EXPECT_EQ(list[1].step, 200);
  ASSERT_EQ(list[1].files.size(), 2u);
  EXPECT_EQ(list[1].files[0].name, "model.safetensors");
  EXPECT_EQ(list[1].files[0].bytes, 1000);
  EXPECT_EQ(list[1].files[0].sha256, std::string(64, 'f'));

  ASSERT_TRUE(repo->mark_checkpoint_deleted(first.value().id).ok());
  list = repo->list_checkpoints(j.id).value();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].step, 200);
  list = repo->list_checkpoints(j.id, /*include_deleted=*/true).value();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].state, "deleted");
  EXPECT_EQ(repo->get_checkpoint(first.value().id).value()->state, "deleted");
  EXPECT_FALSE(repo->get_checkpoint(9999).value().has_value());
  Status missing = repo->mark_checkpoint_deleted(9999);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

// ---- concurrency -----------------------------------------------------------------------------

TEST_F(RepositoryTest, ASecondWriterGetsUnavailableAfterTheBusyTimeout) {
  auto first = open_repo();
  ASSERT_TRUE(first);
  RawDb holder(file_);  // another connection holding the write lock
  ASSERT_EQ(holder.exec("BEGIN IMMEDIATE"), SQLITE_OK);
  ASSERT_EQ(holder.exec("INSERT INTO users(name, role, created_at) VALUES ('held', 'user', 0)"),
            SQLITE_OK);

  auto second = open_repo(/*read_only=*/false, /*busy_timeout_ms=*/200);
  ASSERT_TRUE(second);
  const auto t0 = std::chrono::steady_clock::now();
  Result<UserRow> r = second->create_user("bob", "user", 0, 1.0);
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(r.error().message.find("database is busy"), std::string::npos) << r.error().message;
  EXPECT_GE(waited, 0.15);  // it waited for the timeout…
  EXPECT_LT(waited, 3.0);   // …and no longer
  // Transactions (update_job, insert_metrics) fail the same way at BEGIN IMMEDIATE.
  Status m = second->insert_metrics({{1, "loss", 1, 1.0}});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kUnavailable);

  ASSERT_EQ(holder.exec("COMMIT"), SQLITE_OK);
  EXPECT_TRUE(second->create_user("bob", "user", 0, 1.0).ok());  // free again
  EXPECT_TRUE(first->get_user_by_name("held").value().has_value());
}

TEST_F(RepositoryTest, AReaderSeesCommittedDataWhileTheWriterWorks) {
  auto writer = open_repo();
  ASSERT_TRUE(writer);
  make_user(*writer, "alice");
  auto reader = open_repo(/*read_only=*/true);
  ASSERT_TRUE(reader);
  EXPECT_EQ(reader->schema_version(), writer->schema_version());
  EXPECT_TRUE(reader->get_user_by_name("alice").value().has_value());

  // An uncommitted write neither blocks the reader nor shows through.
  RawDb holder(file_);
  ASSERT_EQ(holder.exec("BEGIN IMMEDIATE"), SQLITE_OK);
  ASSERT_EQ(holder.exec("INSERT INTO users(name, role, created_at) VALUES ('pending', 'user', 0)"),
            SQLITE_OK);
  Result<std::optional<UserRow>> pending = reader->get_user_by_name("pending");
  ASSERT_TRUE(pending.ok()) << pending.error().to_string();
  EXPECT_FALSE(pending.value().has_value());
  ASSERT_EQ(holder.exec("COMMIT"), SQLITE_OK);
  EXPECT_TRUE(reader->get_user_by_name("pending").value().has_value());

  make_user(*writer, "bob");
  EXPECT_TRUE(reader->get_user_by_name("bob").value().has_value());
  // The reader cannot write.
  Result<UserRow> w = reader->create_user("carol", "user", 0, 1.0);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(writer->get_user_by_name("carol").value().has_value());
}

// ---- benchmark -------------------------------------------------------------------------------

TEST_F(RepositoryTest, BenchMetricsIngestReportsARate) {
  Result<double> rate = bench_metrics_ingest(file_, 2000, 500);
  ASSERT_TRUE(rate.ok()) << rate.error().to_string();
  EXPECT_GT(rate.value(), 0.0);
  RawDb raw(file_);
  EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM metrics"), "2000");
}

// Not a test: a measurement. Run with --gtest_also_run_disabled_tests.
TEST_F(RepositoryTest, DISABLED_BenchMetricsIngest200k) {
  Result<double> rate = bench_metrics_ingest(file_, 200000, 10000);
  ASSERT_TRUE(rate.ok()) << rate.error().to_string();
  std::printf("bench_metrics_ingest(200000 rows, batch 10000): %.0f rows/s\n", rate.value());
}

}  // namespace
}  // namespace mohge::db
