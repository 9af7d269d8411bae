// The scheduling policy (coordinator/scheduler_policy.hpp) on hand-built snapshots: every test
// asserts the exact decision — what starts where, what is preempted, each waiting job's
// position and reason. Time is a number in the snapshot (a manual clock).
#include <gtest/gtest.h>

#include "coordinator/scheduler_policy.hpp"

namespace mohge::sched {
namespace {

Snapshot cluster(int cpu_workers, int cuda_workers = 0) {
  Snapshot s;
  for (int i = 0; i < cpu_workers; ++i)
    s.workers.push_back({"cpu-" + std::to_string(i), "cpu", true, 0});
  for (int i = 0; i < cuda_workers; ++i)
    s.workers.push_back({"gpu-" + std::to_string(i), "cuda", true, 0});
  s.users[1] = {1, "alice", 0, 0.0};
  s.users[2] = {2, "bob", 0, 0.0};
  return s;
}

QueuedJob queued(int64_t id, int workers, int priority = 50, double at = 0.0, int64_t user = 1,
                 const std::string& device = "cpu") {
  QueuedJob j;
  j.id = id;
  j.user_id = user;
  j.priority = priority;
  j.workers = workers;
  j.device = device;
  j.submitted_at = at == 0.0 ? static_cast<double>(id) : at;
  return j;
}

/// Marks `workers` as held by a running job.
void run(Snapshot& s, int64_t id, std::vector<std::string> workers, int priority = 50,
         double started = 0.0, int64_t user = 1, bool preempting = false) {
  for (Worker& w : s.workers)
    for (const std::string& name : workers)
      if (w.name == name) w.job = id;
  s.running.push_back({id, user, priority, std::move(workers), started, preempting});
}

using Names = std::vector<std::string>;

TEST(SchedulerPolicy, EqualPriorityJobsStartFirstComeFirstServed) {
  Snapshot s = cluster(2);
  s.queued = {queued(3, 1, 50, 30.0), queued(1, 1, 50, 10.0), queued(2, 2, 50, 20.0)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 1);
  EXPECT_EQ(d.starts[0].workers, Names{"cpu-0"});
  // Job 2 (2 workers) is next: it reserves the remaining free worker, so job 3 cannot take it.
  ASSERT_EQ(d.pending.size(), 2u);
  EXPECT_EQ(d.pending.at(2).position, 1);
  EXPECT_EQ(d.pending.at(2).reason, "waiting for 2 free cpu workers (1 free of 2 online)");
  EXPECT_EQ(d.pending.at(3).position, 2);
  EXPECT_EQ(d.pending.at(3).reason,
            "waiting for 1 free cpu worker (1 free of 2 online, 1 reserved for job 2)");
  EXPECT_TRUE(d.preempt.empty());
}

TEST(SchedulerPolicy, HigherPriorityGoesFirstRegardlessOfAge) {
  Snapshot s = cluster(1);
  s.queued = {queued(1, 1, 10, 1.0), queued(2, 1, 90, 100.0)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 2);
  EXPECT_EQ(d.pending.at(1).position, 1);
}

TEST(SchedulerPolicy, FairShareFavoursTheUserWithLessRecentUsage) {
  Snapshot s = cluster(1);
  s.users[1].recent_usage = 5000.0;  // alice has used the cluster a lot lately
  s.users[2].recent_usage = 10.0;
  s.queued = {queued(1, 1, 50, 1.0, /*user=*/1), queued(2, 1, 50, 2.0, /*user=*/2)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 2);  // bob's, although submitted later
  EXPECT_EQ(d.pending.at(1).position, 1);
}

TEST(SchedulerPolicy, AGangStartsWhollyOrNotAtAll) {
  Snapshot s = cluster(3);
  run(s, 9, {"cpu-0"});
  s.queued = {queued(1, 3)};
  const Decision d = schedule(s);
  EXPECT_TRUE(d.starts.empty());
  EXPECT_EQ(d.pending.at(1).reason, "waiting for 3 free cpu workers (2 free of 3 online)");
}

TEST(SchedulerPolicy, TwoGangsAndThreeFreeWorkersStartExactlyOne) {
  Snapshot s = cluster(3);
  s.queued = {queued(1, 2), queued(2, 2)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 1);
  EXPECT_EQ(d.starts[0].workers, (Names{"cpu-0", "cpu-1"}));
  EXPECT_EQ(d.pending.at(2).reason, "waiting for 2 free cpu workers (1 free of 3 online)");
}

TEST(SchedulerPolicy, DevicesAreSeparatePools) {
  Snapshot s = cluster(2, 0);
  s.queued = {queued(1, 1, 50, 0.0, 1, "cuda"), queued(2, 2)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 2);  // the cuda job that can never fit holds nothing back
  EXPECT_EQ(d.pending.at(1).reason, "needs 1 cuda worker; the cluster has 0 online");
}

TEST(SchedulerPolicy, OfflineWorkersAreNotUsed) {
  Snapshot s = cluster(2);
  s.workers[0].online = false;
  s.queued = {queued(1, 2)};
  const Decision d = schedule(s);
  EXPECT_TRUE(d.starts.empty());
  EXPECT_EQ(d.pending.at(1).reason, "needs 2 cpu workers; the cluster has 1 online");
}

TEST(SchedulerPolicy, QuotaLimitsWhatAUserHoldsAtOnce) {
  Snapshot s = cluster(4);
  s.users[1].max_workers = 2;
  run(s, 9, {"cpu-0"}, 50, 0.0, /*user=*/1);
  s.queued = {queued(1, 2, 50, 0.0, 1), queued(2, 1, 50, 0.0, 2)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 2);  // bob's job is not held back by alice's quota
  EXPECT_EQ(d.pending.at(1).reason, "quota: alice holds 1 of 2 workers; this job needs 2");
}

TEST(SchedulerPolicy, QuotaCountsStartsOfTheSameDecision) {
  Snapshot s = cluster(4);
  s.users[1].max_workers = 2;
  s.queued = {queued(1, 2), queued(2, 1)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 1);
  EXPECT_EQ(d.pending.at(2).reason, "quota: alice holds 2 of 2 workers; this job needs 1");
}

TEST(SchedulerPolicy, TheBlockedJobsReservationIsNotTakenBySmallerJobs) {
  Snapshot s = cluster(4);
  run(s, 9, {"cpu-0", "cpu-1"});
  // Job 1 needs 3 (2 free): it reserves both, so job 2 (1 worker) cannot starve it.
  s.queued = {queued(1, 3), queued(2, 1)};
  Decision d = schedule(s);
  EXPECT_TRUE(d.starts.empty());
  EXPECT_EQ(d.pending.at(1).reason, "waiting for 3 free cpu workers (2 free of 4 online)");
  EXPECT_EQ(d.pending.at(2).reason,
            "waiting for 1 free cpu worker (2 free of 4 online, 2 reserved for job 1)");
  // A fifth worker arrives: job 1 starts on the three free ones, job 2 still waits.
  s.workers.push_back({"cpu-4", "cpu", true, 0});
  d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 1);
  EXPECT_EQ(d.starts[0].workers, (Names{"cpu-2", "cpu-3", "cpu-4"}));
  EXPECT_EQ(d.pending.at(2).reason, "waiting for 1 free cpu worker (0 free of 5 online)");
}

TEST(SchedulerPolicy, ANeverFittingJobDoesNotBlockOthers) {
  Snapshot s = cluster(2);
  s.queued = {queued(1, 5), queued(2, 2)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 2);
  EXPECT_EQ(d.pending.at(1).reason, "needs 5 cpu workers; the cluster has 2 online");
  EXPECT_EQ(d.pending.at(1).position, 1);
}

TEST(SchedulerPolicy, PreemptionTakesTheLowestPriorityMostRecentJobsAndNoMore) {
  Snapshot s = cluster(4);
  run(s, 10, {"cpu-0"}, /*priority=*/10, /*started=*/100.0);
  run(s, 11, {"cpu-1"}, 10, 200.0);  // same priority, started later: preempted first
  run(s, 12, {"cpu-2"}, 30, 300.0);
  run(s, 13, {"cpu-3"}, 90, 400.0);  // higher than the queued job: never preempted
  s.queued = {queued(1, 2, /*priority=*/80)};
  const Decision d = schedule(s);
  EXPECT_TRUE(d.starts.empty());
  EXPECT_EQ(d.preempt, (std::vector<int64_t>{11, 10}));
  EXPECT_EQ(d.pending.at(1).reason,
            "waiting for job(s) 10, 11 to checkpoint and stop (preempted for this job)");
}

TEST(SchedulerPolicy, EqualOrHigherPriorityJobsAreNotPreempted) {
  Snapshot s = cluster(2);
  run(s, 10, {"cpu-0", "cpu-1"}, 50);
  s.queued = {queued(1, 2, 50)};
  const Decision d = schedule(s);
  EXPECT_TRUE(d.preempt.empty());
  EXPECT_EQ(d.pending.at(1).reason, "waiting for 2 free cpu workers (0 free of 2 online)");
}

TEST(SchedulerPolicy, APreemptionInFlightIsNotDoubled) {
  Snapshot s = cluster(3);
  run(s, 10, {"cpu-0", "cpu-1"}, 10, 100.0, 1, /*preempting=*/true);
  run(s, 11, {"cpu-2"}, 10, 200.0);
  s.queued = {queued(1, 2, 80)};
  const Decision d = schedule(s);
  EXPECT_TRUE(d.preempt.empty());  // job 10's two workers cover the need
  EXPECT_EQ(d.pending.at(1).reason,
            "waiting for job(s) 10 to checkpoint and stop (already stopping)");
}

TEST(SchedulerPolicy, OnlyTheFirstBlockedJobPreempts) {
  Snapshot s = cluster(2);
  run(s, 10, {"cpu-0"}, 10, 100.0);
  run(s, 11, {"cpu-1"}, 10, 200.0);
  s.queued = {queued(1, 1, 80), queued(2, 1, 70)};
  const Decision d = schedule(s);
  EXPECT_EQ(d.preempt, (std::vector<int64_t>{11}));
  EXPECT_EQ(d.pending.at(1).position, 1);
  EXPECT_EQ(d.pending.at(2).position, 2);
}

TEST(SchedulerPolicy, PositionsFollowTheQueueOrderOfWaitingJobs) {
  Snapshot s = cluster(1);
  s.queued = {queued(1, 1, 50, 1.0), queued(2, 1, 50, 2.0), queued(3, 1, 60, 3.0),
              queued(4, 1, 50, 4.0)};
  const Decision d = schedule(s);
  ASSERT_EQ(d.starts.size(), 1u);
  EXPECT_EQ(d.starts[0].job, 3);
  EXPECT_EQ(d.pending.at(1).position, 1);
  EXPECT_EQ(d.pending.at(2).position, 2);
  EXPECT_EQ(d.pending.at(4).position, 3);
}

TEST(SchedulerPolicy, TheSameSnapshotGivesTheSameDecision) {
  Snapshot s = cluster(3, 1);
  run(s, 10, {"cpu-0"}, 10, 5.0);
  s.queued = {queued(1, 2, 70), queued(2, 1, 50), queued(3, 1, 50, 0.0, 2, "cuda"),
              queued(4, 3, 90)};
  const Decision a = schedule(s), b = schedule(s);
  ASSERT_EQ(a.starts.size(), b.starts.size());
  for (size_t i = 0; i < a.starts.size(); ++i) {
    EXPECT_EQ(a.starts[i].job, b.starts[i].job);
    EXPECT_EQ(a.starts[i].workers, b.starts[i].workers);
  }
  EXPECT_EQ(a.preempt, b.preempt);
  ASSERT_EQ(a.pending.size(), b.pending.size());
  for (const auto& [id, p] : a.pending) {
    EXPECT_EQ(p.position, b.pending.at(id).position);
    EXPECT_EQ(p.reason, b.pending.at(id).reason);
  }
}

TEST(UsageLedger, DecaysByHalfEveryHalfLifeAndAccumulates) {
  UsageLedger ledger(/*half_life_s=*/100.0);
  EXPECT_EQ(ledger.usage(7, 0.0), 0.0);
  ledger.add(1, /*workers=*/2, /*from=*/0.0, /*to=*/50.0);  // 100 worker-seconds at t=50
  EXPECT_DOUBLE_EQ(ledger.usage(1, 50.0), 100.0);
  EXPECT_DOUBLE_EQ(ledger.usage(1, 150.0), 50.0);
  EXPECT_DOUBLE_EQ(ledger.usage(1, 250.0), 25.0);
  ledger.add(1, 1, 150.0, 250.0);  // +100 at t=250
  EXPECT_DOUBLE_EQ(ledger.usage(1, 250.0), 125.0);
  EXPECT_EQ(ledger.usage(2, 250.0), 0.0);
}

}  // namespace
}  // namespace mohge::sched
