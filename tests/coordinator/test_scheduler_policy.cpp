// The scheduling policy as a pure function: hand-built snapshots, exact decisions. Each decision
// is compared in full through describe(), which lists starts, preemptions and every pending job
// (in queue position order) one per line, so a failure shows the whole difference.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/scheduler_policy.hpp"

namespace mohge::sched {
namespace {

constexpr int64_t kAlice = 1;
constexpr int64_t kBob = 2;

Worker cpu(std::string name) {
  return Worker{.name = std::move(name), .device = "cpu"};
}

Worker cuda(std::string name) {
  return Worker{.name = std::move(name), .device = "cuda"};
}

Worker offline_cpu(std::string name) {
  return Worker{.name = std::move(name), .device = "cpu", .online = false};
}

/// Alice and Bob, no quotas, no usage.
Snapshot cluster(std::vector<Worker> workers) {
  Snapshot s;
  s.workers = std::move(workers);
  s.users[kAlice] = User{.id = kAlice, .name = "alice"};
  s.users[kBob] = User{.id = kBob, .name = "bob"};
  return s;
}

/// Adds a running job and marks its workers as held by it, as the Scheduler's snapshot does.
void add_running(Snapshot& s, RunningJob job) {
  for (Worker& w : s.workers) {
    if (std::find(job.workers.begin(), job.workers.end(), w.name) != job.workers.end()) {
      w.job = job.id;
    }
  }
  s.running.push_back(std::move(job));
}

/// The whole decision, one line per start, preemption and pending job (by position).
std::string describe(const Decision& d) {
  std::string out;
  for (const Start& s : d.starts) {
    out += "start " + std::to_string(s.job) + " on";
    for (const std::string& w : s.workers) out += " " + w;
    out += "\n";
  }
  for (int64_t p : d.preempt) out += "preempt " + std::to_string(p) + "\n";
  std::vector<std::pair<int64_t, Pending>> pending(d.pending.begin(), d.pending.end());
  std::stable_sort(pending.begin(), pending.end(), [](const auto& a, const auto& b) {
    return a.second.position < b.second.position;
  });
  for (const auto& [id, p] : pending) {
    out +=
        "wait " + std::to_string(id) + " #" + std::to_string(p.position) + ": " + p.reason + "\n";
  }
  return out;
}

// ---- unreachable peers (rule 8) -------------------------------------------------------------

TEST(SchedulerUnreachable, ARecoveringJobDoesNotPairWorkersAcrossTheCut) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1}};
  s.avoid[1] = {{"w2", "w1"}};
  // w1 is taken first; w2 would pair with it across the cut; w3 stands in.
  EXPECT_EQ(describe(schedule(s)), "start 1 on w1 w3\n");
}

TEST(SchedulerUnreachable, ALargerGangKeepsTheOthersAndDropsOneSideOfTheCut) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3"), cpu("w4")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 3, .submitted_at = 1}};
  s.avoid[1] = {{"w1", "w2"}};
  EXPECT_EQ(describe(schedule(s)), "start 1 on w1 w3 w4\n");
}

TEST(SchedulerUnreachable, WithNoOtherWorkerFreeItStartsOnTheSameSet) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1}};
  s.avoid[1] = {{"w1", "w2"}};
  EXPECT_EQ(describe(schedule(s)), "start 1 on w1 w2\n");
}

TEST(SchedulerUnreachable, AnotherJobIsNotAffected) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3")});
  s.queued = {QueuedJob{.id = 2, .user_id = kAlice, .workers = 2, .submitted_at = 1}};
  s.avoid[1] = {{"w1", "w2"}};
  EXPECT_EQ(describe(schedule(s)), "start 2 on w1 w2\n");
}

// ---- experiments ---------------------------------------------------------------------------

TEST(SchedulerExperiments, MaxParallelCapsAnExperimentsPlacedJobsAndOthersStillStart) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3"), cpu("w4")});
  s.experiment_limits[7] = 2;
  add_running(s, RunningJob{.id = 1, .user_id = kAlice, .workers = {"w1"}, .experiment = 7});
  s.queued = {QueuedJob{.id = 2, .user_id = kAlice, .submitted_at = 1, .experiment = 7},
              QueuedJob{.id = 3, .user_id = kAlice, .submitted_at = 2, .experiment = 7},
              QueuedJob{.id = 4, .user_id = kAlice, .submitted_at = 3, .experiment = 7},
              QueuedJob{.id = 5, .user_id = kBob, .submitted_at = 4}};
  // One more of experiment 7 fits under its limit of 2; the rest wait without reserving the
  // free worker, which goes to Bob's job behind them.
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w2\n"
            "start 5 on w3\n"
            "wait 3 #1: experiment 7 runs at most 2 jobs at once (max_parallel)\n"
            "wait 4 #2: experiment 7 runs at most 2 jobs at once (max_parallel)\n");
}

TEST(SchedulerExperiments, AJobHeldByMaxParallelNeitherPreemptsNorReserves) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.experiment_limits[7] = 1;
  add_running(
      s,
      RunningJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = {"w1"}, .experiment = 7});
  add_running(s, RunningJob{.id = 2, .user_id = kBob, .priority = 10, .workers = {"w2"}});
  s.queued = {
      QueuedJob{.id = 3, .user_id = kAlice, .priority = 90, .submitted_at = 1, .experiment = 7},
      QueuedJob{.id = 4, .user_id = kBob, .priority = 10, .workers = 1, .submitted_at = 2}};
  // Job 3 outranks job 2 but its experiment is at its limit: no preemption of 2, and job 4
  // behind it is not held back by a reservation (it waits for a free worker like any job).
  EXPECT_EQ(describe(schedule(s)),
            "wait 3 #1: experiment 7 runs at most 1 job at once (max_parallel)\n"
            "wait 4 #2: waiting for 1 free cpu worker (0 free of 2 online)\n");
}

TEST(SchedulerExperiments, AnExperimentWithoutALimitStartsWhatFits) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .submitted_at = 1, .experiment = 3},
              QueuedJob{.id = 2, .user_id = kAlice, .submitted_at = 2, .experiment = 3},
              QueuedJob{.id = 3, .user_id = kAlice, .submitted_at = 3, .experiment = 3}};
  EXPECT_EQ(describe(schedule(s)),
            "start 1 on w1\n"
            "start 2 on w2\n"
            "wait 3 #1: waiting for 1 free cpu worker (0 free of 2 online)\n");
}

// ---- order --------------------------------------------------------------------------------

TEST(SchedulerOrder, FifoAmongEqualPriority) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .submitted_at = 20},
              QueuedJob{.id = 2, .user_id = kAlice, .submitted_at = 10},
              QueuedJob{.id = 3, .user_id = kAlice, .submitted_at = 30}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w1\n"
            "start 1 on w2\n"
            "wait 3 #1: waiting for 1 free cpu worker (0 free of 2 online)\n");
}

TEST(SchedulerOrder, IdBreaksTiesInSubmissionTime) {
  Snapshot s = cluster({cpu("w1")});
  s.queued = {QueuedJob{.id = 9, .user_id = kAlice, .submitted_at = 10},
              QueuedJob{.id = 4, .user_id = kAlice, .submitted_at = 10}};
  EXPECT_EQ(describe(schedule(s)),
            "start 4 on w1\n"
            "wait 9 #1: waiting for 1 free cpu worker (0 free of 1 online)\n");
}

TEST(SchedulerOrder, PriorityBeatsFifo) {
  Snapshot s = cluster({cpu("w1")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .submitted_at = 0},
              QueuedJob{.id = 2, .user_id = kAlice, .priority = 80, .submitted_at = 100}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w1\n"
            "wait 1 #1: waiting for 1 free cpu worker (0 free of 1 online)\n");
}

TEST(SchedulerOrder, FairShareOrdersEqualPriorityByUsage) {
  Snapshot s = cluster({cpu("w1")});
  s.users[kAlice].recent_usage = 5000;
  s.users[kBob].recent_usage = 100;
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .submitted_at = 0},
              QueuedJob{.id = 2, .user_id = kBob, .submitted_at = 50}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w1\n"
            "wait 1 #1: waiting for 1 free cpu worker (0 free of 1 online)\n");
}

TEST(SchedulerOrder, PriorityBeatsFairShare) {
  Snapshot s = cluster({cpu("w1")});
  s.users[kAlice].recent_usage = 5000;
  s.queued = {QueuedJob{.id = 1, .user_id = kBob, .priority = 50},
              QueuedJob{.id = 2, .user_id = kAlice, .priority = 60}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w1\n"
            "wait 1 #1: waiting for 1 free cpu worker (0 free of 1 online)\n");
}

TEST(SchedulerOrder, PositionsCountOnlyJobsThatDidNotStart) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3")});
  add_running(s, RunningJob{.id = 100, .user_id = kBob, .workers = {"w3"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = 1},
              QueuedJob{.id = 2, .user_id = kAlice, .priority = 80, .workers = 5},
              QueuedJob{.id = 3, .user_id = kAlice, .priority = 70, .workers = 1},
              QueuedJob{.id = 4, .user_id = kAlice, .priority = 60, .workers = 2},
              QueuedJob{.id = 5, .user_id = kAlice, .priority = 50, .workers = 1}};
  const Decision d = schedule(s);
  EXPECT_EQ(describe(d),
            "start 1 on w1\n"
            "start 3 on w2\n"
            "wait 2 #1: needs 5 cpu workers; the cluster has 3 online\n"
            "wait 4 #2: waiting for 2 free cpu workers (0 free of 3 online)\n"
            "wait 5 #3: waiting for 1 free cpu worker (0 free of 3 online)\n");
  ASSERT_EQ(d.pending.size(), 3u);
  EXPECT_EQ(d.pending.at(2).position, 1);
  EXPECT_EQ(d.pending.at(4).position, 2);
  EXPECT_EQ(d.pending.at(5).position, 3);
}

// ---- gang and placement -------------------------------------------------------------------

TEST(SchedulerGang, AllOrNoneNamesTheNumbers) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  add_running(s, RunningJob{.id = 100, .user_id = kBob, .workers = {"w2"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for 2 free cpu workers (1 free of 2 online)\n");
}

TEST(SchedulerGang, TwoGangsOnThreeFreeWorkersStartExactlyOne) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1},
              QueuedJob{.id = 2, .user_id = kBob, .workers = 2, .submitted_at = 2}};
  const Decision d = schedule(s);
  EXPECT_EQ(describe(d),
            "start 1 on w1 w2\n"
            "wait 2 #1: waiting for 2 free cpu workers (1 free of 3 online)\n");
  EXPECT_TRUE(d.preempt.empty());
}

TEST(SchedulerGang, WorkersAreInNameOrder) {
  Snapshot s = cluster({cpu("w3"), cpu("w1"), cpu("w4"), cpu("w2")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 3}};
  EXPECT_EQ(describe(schedule(s)), "start 1 on w1 w2 w3\n");
}

TEST(SchedulerGang, DeviceMismatchNeverFits) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .device = "cuda", .submitted_at = 1},
              QueuedJob{.id = 2, .user_id = kAlice, .device = "cpu", .submitted_at = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w1\n"
            "wait 1 #1: needs 1 cuda worker; the cluster has 0 online\n");
}

TEST(SchedulerGang, JobsGetWorkersOfTheirDeviceOnly) {
  Snapshot s = cluster({cpu("a-cpu"), cuda("b-gpu"), cuda("c-gpu")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .device = "cuda"},
              QueuedJob{.id = 2, .user_id = kBob, .workers = 1, .device = "cpu"}};
  EXPECT_EQ(describe(schedule(s)),
            "start 1 on b-gpu c-gpu\n"
            "start 2 on a-cpu\n");
}

TEST(SchedulerGang, OfflineWorkersAreNotUsedNorCounted) {
  Snapshot s = cluster({offline_cpu("w1"), cpu("w2")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1},
              QueuedJob{.id = 2, .user_id = kAlice, .workers = 1, .submitted_at = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w2\n"
            "wait 1 #1: needs 2 cpu workers; the cluster has 1 online\n");
}

TEST(SchedulerGang, NeverFittingJobBlocksNothing) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  add_running(s, RunningJob{.id = 100, .user_id = kBob, .priority = 10, .workers = {"w2"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = 4},
              QueuedJob{.id = 2, .user_id = kAlice, .priority = 50, .workers = 1}};
  const Decision d = schedule(s);
  EXPECT_EQ(describe(d),
            "start 2 on w1\n"
            "wait 1 #1: needs 4 cpu workers; the cluster has 2 online\n");
  EXPECT_TRUE(d.preempt.empty());
}

TEST(SchedulerGang, WorkersListedByARunningJobAreNeverFree) {
  // A preempting job keeps its workers until it leaves the running list, even if the
  // worker's own record already says free.
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.running = {RunningJob{.id = 100, .user_id = kBob, .workers = {"w1"}, .preempting = true}};
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for job(s) 100 to checkpoint and stop (already stopping)\n");
}

TEST(SchedulerGang, InvalidGangSizeWaitsWithAReason) {
  Snapshot s = cluster({cpu("w1")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 0}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: invalid gang: needs at least 1 worker, asks for 0\n");
}

// ---- quota --------------------------------------------------------------------------------

TEST(SchedulerQuota, BlocksAndNamesTheUser) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3"), cpu("w4")});
  s.users[kAlice].max_workers = 2;
  add_running(s, RunningJob{.id = 100, .user_id = kAlice, .workers = {"w1", "w2"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = 2},
              QueuedJob{.id = 2, .user_id = kBob, .priority = 50, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w3 w4\n"
            "wait 1 #1: quota: alice holds 2 of 2 workers; this job needs 2\n");
}

TEST(SchedulerQuota, CountsStartsOfTheSameDecision) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3"), cpu("w4")});
  s.users[kAlice].max_workers = 3;
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1},
              QueuedJob{.id = 2, .user_id = kAlice, .workers = 2, .submitted_at = 2},
              QueuedJob{.id = 3, .user_id = kAlice, .workers = 1, .submitted_at = 3}};
  EXPECT_EQ(describe(schedule(s)),
            "start 1 on w1 w2\n"
            "start 3 on w3\n"
            "wait 2 #1: quota: alice holds 2 of 3 workers; this job needs 2\n");
}

TEST(SchedulerQuota, GangLargerThanQuotaSaysItCanNeverStart) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3")});
  s.users[kBob].max_workers = 2;
  s.queued = {QueuedJob{.id = 1, .user_id = kBob, .workers = 3}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: quota: bob may hold at most 2 workers; this job needs 3 and can never "
            "start\n");
}

TEST(SchedulerQuota, QuotaBlockedJobReservesNothingAndPreemptsNothing) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  s.users[kAlice].max_workers = 2;
  add_running(s, RunningJob{.id = 100, .user_id = kAlice, .priority = 10, .workers = {"w1"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = 2},
              QueuedJob{.id = 2, .user_id = kBob, .priority = 50, .workers = 1}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w2\n"
            "wait 1 #1: quota: alice holds 1 of 2 workers; this job needs 2\n");
}

// ---- reservation and backfill -------------------------------------------------------------

TEST(SchedulerReservation, LaterSmallJobCannotTakeTheReservedWorker) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  add_running(s, RunningJob{.id = 100, .user_id = kBob, .priority = 50, .workers = {"w2"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1},
              QueuedJob{.id = 2, .user_id = kBob, .workers = 1, .submitted_at = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for 2 free cpu workers (1 free of 2 online)\n"
            "wait 2 #2: waiting for 1 free cpu worker (1 free of 2 online, 1 reserved for job "
            "1)\n");
}

TEST(SchedulerReservation, BackfillUsesWorkersBeyondTheReservation) {
  // Job 1 holds back the one free cpu worker; the free cuda workers are beyond its
  // reservation and a later cuda job uses them.
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cuda("g1"), cuda("g2")});
  add_running(s, RunningJob{.id = 100, .user_id = kBob, .priority = 50, .workers = {"w2"}});
  s.queued = {
      QueuedJob{.id = 1, .user_id = kAlice, .workers = 2, .submitted_at = 1},
      QueuedJob{.id = 2, .user_id = kBob, .workers = 1, .submitted_at = 2},
      QueuedJob{.id = 3, .user_id = kBob, .workers = 2, .device = "cuda", .submitted_at = 3}};
  EXPECT_EQ(describe(schedule(s)),
            "start 3 on g1 g2\n"
            "wait 1 #1: waiting for 2 free cpu workers (1 free of 2 online)\n"
            "wait 2 #2: waiting for 1 free cpu worker (1 free of 2 online, 1 reserved for job "
            "1)\n");
}

TEST(SchedulerReservation, JobsAheadOfTheBlockedJobKeepTheirStarts) {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3")});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = 1},
              QueuedJob{.id = 2, .user_id = kAlice, .priority = 80, .workers = 3},
              QueuedJob{.id = 3, .user_id = kBob, .priority = 70, .workers = 1}};
  EXPECT_EQ(describe(schedule(s)),
            "start 1 on w1\n"
            "wait 2 #1: waiting for 3 free cpu workers (2 free of 3 online)\n"
            "wait 3 #2: waiting for 1 free cpu worker (2 free of 3 online, 2 reserved for job "
            "2)\n");
}

// ---- preemption ---------------------------------------------------------------------------

/// Four busy cpu workers: 10 and 11 at priority 10 (11 started later), 12 at 20, 13 at 80.
Snapshot busy_cluster() {
  Snapshot s = cluster({cpu("w1"), cpu("w2"), cpu("w3"), cpu("w4")});
  add_running(
      s,
      RunningJob{.id = 10, .user_id = kBob, .priority = 10, .workers = {"w1"}, .started_at = 100});
  add_running(
      s,
      RunningJob{.id = 11, .user_id = kBob, .priority = 10, .workers = {"w2"}, .started_at = 200});
  add_running(
      s,
      RunningJob{.id = 12, .user_id = kBob, .priority = 20, .workers = {"w3"}, .started_at = 300});
  add_running(
      s,
      RunningJob{.id = 13, .user_id = kBob, .priority = 80, .workers = {"w4"}, .started_at = 50});
  return s;
}

TEST(SchedulerPreemption, PicksLowestPriorityMostRecentlyStartedFewest) {
  Snapshot s = busy_cluster();
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 11\n"
            "preempt 10\n"
            "wait 1 #1: waiting for job(s) 10, 11 to checkpoint and stop (preempted for this "
            "job)\n");
}

TEST(SchedulerPreemption, FreeWorkersReduceTheVictims) {
  Snapshot s = busy_cluster();
  s.running.erase(s.running.begin());  // job 10 finished: w1 is free
  s.workers[0].job = 0;
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 11\n"
            "wait 1 #1: waiting for job(s) 11 to checkpoint and stop (preempted for this job)\n");
}

TEST(SchedulerPreemption, HigherPriorityVictimOnlyWhenLowerOnesAreNotEnough) {
  Snapshot s = busy_cluster();
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 3}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 11\n"
            "preempt 10\n"
            "preempt 12\n"
            "wait 1 #1: waiting for job(s) 10, 11, 12 to checkpoint and stop (preempted for "
            "this job)\n");
}

TEST(SchedulerPreemption, IdBreaksTiesInStartTime) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  add_running(
      s,
      RunningJob{.id = 20, .user_id = kBob, .priority = 10, .workers = {"w1"}, .started_at = 100});
  add_running(
      s,
      RunningJob{.id = 21, .user_id = kBob, .priority = 10, .workers = {"w2"}, .started_at = 100});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 1}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 21\n"
            "wait 1 #1: waiting for job(s) 21 to checkpoint and stop (preempted for this job)\n");
}

TEST(SchedulerPreemption, NeverPreemptsEqualOrHigherPriority) {
  Snapshot s = cluster({cpu("w1"), cpu("w2")});
  add_running(s, RunningJob{.id = 20, .user_id = kBob, .priority = 50, .workers = {"w1"}});
  add_running(s, RunningJob{.id = 21, .user_id = kBob, .priority = 80, .workers = {"w2"}});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 1}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for 1 free cpu worker (0 free of 2 online)\n");
}

TEST(SchedulerPreemption, NoPartialPreemptionWhenLowerJobsCannotCoverTheNeed) {
  Snapshot s = busy_cluster();
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 15, .workers = 3}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for 3 free cpu workers (0 free of 4 online)\n");
}

TEST(SchedulerPreemption, NoDuplicateWhileStoppingJobsWillFreeEnough) {
  Snapshot s = busy_cluster();
  s.running[1].preempting = true;  // job 11 (w2) already asked to stop
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 1}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for job(s) 11 to checkpoint and stop (already stopping)\n");
}

TEST(SchedulerPreemption, AsksOnlyForTheShortfallBeyondStoppingJobs) {
  Snapshot s = busy_cluster();
  s.running[1].preempting = true;  // job 11 (w2) already asked to stop
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 10\n"
            "wait 1 #1: waiting for job(s) 10, 11 to checkpoint and stop (10 preempted for this "
            "job, 11 already stopping)\n");
}

TEST(SchedulerPreemption, StoppingJobsAreNamedWhenNothingMoreCanBePreempted) {
  Snapshot s = busy_cluster();
  s.running[1].preempting = true;  // job 11 (w2) already asked to stop
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 5, .workers = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "wait 1 #1: waiting for 2 free cpu workers (0 free of 4 online, 1 being released by "
            "job(s) 11)\n");
}

TEST(SchedulerPreemption, OnlyTheFirstBlockedJobPreempts) {
  Snapshot s = busy_cluster();
  s.queued = {
      QueuedJob{.id = 1, .user_id = kAlice, .priority = 60, .workers = 1, .submitted_at = 1},
      QueuedJob{.id = 2, .user_id = kAlice, .priority = 60, .workers = 1, .submitted_at = 2}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 11\n"
            "wait 1 #1: waiting for job(s) 11 to checkpoint and stop (preempted for this job)\n"
            "wait 2 #2: waiting for 1 free cpu worker (0 free of 4 online)\n");
}

TEST(SchedulerPreemption, NeverFittingJobPreemptsNothing) {
  Snapshot s = busy_cluster();
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 90, .workers = 5}};
  EXPECT_EQ(describe(schedule(s)), "wait 1 #1: needs 5 cpu workers; the cluster has 4 online\n");
}

TEST(SchedulerPreemption, VictimsComeFromTheBlockedJobsDevice) {
  Snapshot s = cluster({cpu("w1"), cuda("g1")});
  add_running(
      s,
      RunningJob{.id = 20, .user_id = kBob, .priority = 10, .workers = {"w1"}, .started_at = 100});
  add_running(
      s,
      RunningJob{.id = 21, .user_id = kBob, .priority = 20, .workers = {"g1"}, .started_at = 50});
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .device = "cuda"}};
  EXPECT_EQ(describe(schedule(s)),
            "preempt 21\n"
            "wait 1 #1: waiting for job(s) 21 to checkpoint and stop (preempted for this job)\n");
}

// ---- determinism --------------------------------------------------------------------------

TEST(SchedulerDeterminism, SameSnapshotSameDecision) {
  Snapshot s = busy_cluster();
  s.workers.push_back(cpu("w5"));
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 3},
              QueuedJob{.id = 2, .user_id = kBob, .priority = 50, .workers = 1},
              QueuedJob{.id = 3, .user_id = kAlice, .priority = 90, .workers = 1}};
  const std::string first = describe(schedule(s));
  EXPECT_EQ(describe(schedule(s)), first);
  EXPECT_EQ(first,
            "start 3 on w5\n"
            "preempt 11\n"
            "preempt 10\n"
            "preempt 12\n"
            "wait 1 #1: waiting for job(s) 10, 11, 12 to checkpoint and stop (preempted for "
            "this job)\n"
            "wait 2 #2: waiting for 1 free cpu worker (0 free of 5 online)\n");
}

TEST(SchedulerDeterminism, InputOrderDoesNotMatter) {
  Snapshot s = busy_cluster();
  s.workers.push_back(cpu("w5"));
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .priority = 50, .workers = 2},
              QueuedJob{.id = 2, .user_id = kBob, .priority = 50, .workers = 1},
              QueuedJob{.id = 3, .user_id = kAlice, .priority = 90, .workers = 1}};
  Snapshot reversed = s;
  std::reverse(reversed.workers.begin(), reversed.workers.end());
  std::reverse(reversed.queued.begin(), reversed.queued.end());
  std::reverse(reversed.running.begin(), reversed.running.end());
  EXPECT_EQ(describe(schedule(reversed)), describe(schedule(s)));
}

TEST(SchedulerDeterminism, EmptySnapshotDecidesNothing) {
  EXPECT_EQ(describe(schedule(Snapshot{})), "");
}

// ---- usage ledger -------------------------------------------------------------------------

TEST(UsageLedger, DecayHalvesAfterOneHalfLife) {
  UsageLedger ledger(100.0);
  ledger.add(kAlice, 2, 0, 50);  // 100 worker-seconds at t = 50
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 50), 100.0);
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 150), 50.0);
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 250), 25.0);
}

TEST(UsageLedger, AddAccumulatesAfterDecayingTheOldValue) {
  UsageLedger ledger(100.0);
  ledger.add(kAlice, 1, 0, 100);    // 100 at t = 100
  ledger.add(kAlice, 1, 100, 100);  // zero-length interval adds nothing
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 100), 100.0);
  ledger.add(kAlice, 3, 150, 200);  // 100 decays to 50 at t = 200, plus 150
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 200), 200.0);
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 300), 100.0);
}

TEST(UsageLedger, UsersAreSeparate) {
  UsageLedger ledger(100.0);
  ledger.add(kAlice, 1, 0, 10);
  ledger.add(kBob, 4, 0, 10);
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 10), 10.0);
  EXPECT_DOUBLE_EQ(ledger.usage(kBob, 10), 40.0);
}

TEST(UsageLedger, UnknownUserIsZero) {
  UsageLedger ledger;
  EXPECT_EQ(ledger.usage(42, 1000), 0.0);
  ledger.add(kAlice, 1, 0, 10);
  EXPECT_EQ(ledger.usage(42, 1000), 0.0);
}

TEST(UsageLedger, OutOfOrderAddDecaysTheNewAmountToTheLatestTime) {
  UsageLedger ledger(100.0);
  ledger.add(kAlice, 1, 100, 200);  // 100 at t = 200
  ledger.add(kAlice, 1, 0, 100);    // 100 at t = 100, worth 50 at t = 200
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 200), 150.0);
}

TEST(UsageLedger, NegativeDurationAddsNothing) {
  UsageLedger ledger(100.0);
  ledger.add(kAlice, 2, 50, 10);
  EXPECT_DOUBLE_EQ(ledger.usage(kAlice, 50), 0.0);
}

TEST(UsageLedger, FeedsFairShare) {
  UsageLedger ledger(3600.0);
  ledger.add(kAlice, 4, 0, 3600);  // alice used 4 workers for an hour
  ledger.add(kBob, 1, 0, 600);     // bob one worker for ten minutes
  Snapshot s = cluster({cpu("w1")});
  s.users[kAlice].recent_usage = ledger.usage(kAlice, 7200);
  s.users[kBob].recent_usage = ledger.usage(kBob, 7200);
  s.queued = {QueuedJob{.id = 1, .user_id = kAlice, .submitted_at = 0},
              QueuedJob{.id = 2, .user_id = kBob, .submitted_at = 10}};
  EXPECT_EQ(describe(schedule(s)),
            "start 2 on w1\n"
            "wait 1 #1: waiting for 1 free cpu worker (0 free of 1 online)\n");
}

}  // namespace
}  // namespace mohge::sched
