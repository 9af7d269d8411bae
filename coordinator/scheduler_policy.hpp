// The scheduling policy of the shared cluster (DESIGN.md §8), as a pure function of a snapshot:
// no clock reads, no I/O, no threads. The Scheduler actor builds the snapshot from the state it
// owns, calls schedule(), and carries out the decision; tests call schedule() directly with
// hand-built snapshots and assert the exact decision.
//
// Rules, in order:
//  1. Order: queued jobs are ordered by priority (higher first), then by their owner's recent
//     usage (fair share: less usage first), then by submission time, then by id (FIFO).
//  2. Gang: a job starts only when `workers` free, online workers of its device are available
//     at once; it gets all of them or none. There are never partly placed jobs, so two gangs
//     cannot deadlock each other.
//  3. Quota: a job whose owner already holds `max_workers` (0 = no limit) minus fewer than the
//     job's gang size waits ("quota").
//  4. Reservation: the first job in order that fits the cluster and its quota but not the free
//     workers of its device reserves them, so later (smaller) jobs cannot starve it. Jobs of
//     other devices, and jobs behind one that can never fit or is held by its owner's quota,
//     still start (without runtime estimates there is no safe backfill into a reservation).
//  5. Preemption: when that first blocked job could fit if running jobs of strictly lower
//     priority released their workers, the fewest such jobs are chosen (lowest priority first,
//     then most recently started) and asked to checkpoint and stop; they come back as queued
//     jobs. While a preemption is in flight no further preemption is asked for that job.
//  6. Experiments: a job of an experiment with `max_parallel` > 0 whose experiment already has
//     that many placed jobs (running ones plus starts of this decision) waits; it reserves
//     nothing and preempts nothing, so it never holds back other jobs.
//  7. Every queued job that does not start gets a position (1-based, in order) and a reason
//     that a user can act on.
//  8. Unreachable peers: a recovering job whose last attempt ended because some of its ranks
//     could not reach each other (a network partition between worker hosts) gets its gang
//     from the free workers by name, skipping a worker that would pair with one already taken
//     across such a cut; when that leaves too few, it starts on the first free workers as
//     usual (the network may have healed).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mohge::sched {

struct Worker {
  std::string name;
  std::string device;  // "cpu" | "cuda"
  bool online = true;
  int64_t job = 0;  // the job holding it, 0 = free
};

struct QueuedJob {
  int64_t id = 0;
  int64_t user_id = 0;
  int priority = 50;
  int workers = 1;
  std::string device = "cpu";
  double submitted_at = 0;  // time it (re-)entered the queue
  int64_t experiment = 0;   // the experiment it belongs to, 0 = none
};

struct RunningJob {
  int64_t id = 0;
  int64_t user_id = 0;
  int priority = 50;
  std::vector<std::string> workers;  // held workers (rank order)
  double started_at = 0;
  bool preempting = false;  // already asked to checkpoint and stop
  int64_t experiment = 0;   // the experiment it belongs to, 0 = none
};

struct User {
  int64_t id = 0;
  std::string name;
  int max_workers = 0;      // 0 = no limit
  double recent_usage = 0;  // decayed worker-seconds (see UsageLedger)
};

struct Snapshot {
  std::vector<Worker> workers;
  std::vector<QueuedJob> queued;
  std::vector<RunningJob> running;  // placed jobs: STARTING, RUNNING, RECOVERING
  std::map<int64_t, User> users;    // by id; every job's owner is present
  // Experiment id → max_parallel (> 0); experiments without a limit are absent.
  std::map<int64_t, int> experiment_limits;
  // Job id → worker pairs whose ranks could not reach each other in its last attempt: not
  // placed together again while other free workers can stand in (rule 8).
  std::map<int64_t, std::vector<std::pair<std::string, std::string>>> avoid;
};

struct Start {
  int64_t job = 0;
  std::vector<std::string> workers;  // rank order: sorted by worker name
};

struct Pending {
  int position = 0;    // 1-based place in the queue order
  std::string reason;  // e.g. "waiting for 2 free cpu workers (1 free of 2 online)"
};

struct Decision {
  std::vector<Start> starts;           // in queue order
  std::vector<int64_t> preempt;        // running jobs to checkpoint and stop
  std::map<int64_t, Pending> pending;  // every queued job that does not start
};

/// Decides what starts, what is preempted, and why the rest waits. Deterministic: the same
/// snapshot always gives the same decision.
Decision schedule(const Snapshot& snapshot);

/// Recent usage per user for fair share: worker-seconds with exponential decay (half-life
/// `half_life_s`). Time is passed in (a manual clock in tests).
class UsageLedger {
 public:
  explicit UsageLedger(double half_life_s = 3600.0) : half_life_s_(half_life_s) {}
  /// Adds `workers` × (to − from) seconds of use by `user`, decayed to `to`.
  void add(int64_t user, int workers, double from, double to);
  /// The user's decayed usage at `now` (≥ the time of the last add).
  double usage(int64_t user, double now) const;

 private:
  struct Entry {
    double value = 0;
    double at = 0;
  };
  double half_life_s_;
  std::map<int64_t, Entry> entries_;
};

}  // namespace mohge::sched
