// The scheduling policy (see scheduler_policy.hpp for the rules). Details the header leaves open,
// decided here:
//  - Devices are separate pools. Reservation and preemption are per device: the first job in
//    queue order that fits its device's online workers and its owner's quota but not the free
//    workers of its device becomes that device's blocked job; it reserves the free workers of
//    that device (all of them, since fewer are free than it needs) and only it may ask for
//    preemption. A blocked cuda job does not hold back cpu jobs.
//  - A worker is free when it is online, holds no job (`job == 0`) and is listed by no running
//    job (a preempting job keeps its workers until it leaves the running list).
//  - A running job's device, and what preempting it would release, are the online workers of
//    that device it holds (offline ones would not come back as free).
//  - Workers preempting jobs are about to release count towards the blocked job's need, so a
//    preemption in flight is never doubled; new victims are asked for only when free + in flight
//    does not cover the need, and then only as many as cover the rest.
//  - Victims are taken in order (priority asc, started_at desc, id desc) until the need is
//    covered: lowest priority wins over the smallest victim count.
//  - Checks per job, in order: invalid gang size, gang larger than the owner's quota, gang
//    larger than the device's online workers, quota, the experiment's max_parallel, free
//    workers.
#include "coordinator/scheduler_policy.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <string_view>
#include <utility>

namespace mohge::sched {
namespace {

/// The free pool of one device during one decision.
struct DevicePool {
  std::vector<std::string> free;  // free workers, sorted by name; the first `num_reserved`
                                  // are reserved for `reserved_for`
  int num_online = 0;             // online workers of the device, free or not
  int num_reserved = 0;
  int64_t reserved_for = 0;  // the device's blocked job; 0 = none yet
};

/// What the blocked job of a device waits for besides free workers.
struct PreemptionPlan {
  std::vector<int64_t> stopping;  // already preempting jobs of the device, id asc
  std::vector<int64_t> victims;   // newly chosen, in choice order
  int num_stopping_workers = 0;   // workers `stopping` will release
  bool covers = false;            // free + stopping + victims ≥ need
};

/// "1 worker", "2 workers".
std::string count_of(int n, std::string_view noun) {
  std::string s = std::to_string(n) + " " + std::string(noun);
  if (n != 1) s += "s";
  return s;
}

/// "7, 9".
std::string join_ids(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(ids[i]);
  }
  return s;
}

/// The user's name, or "user <id>" for an owner the snapshot lacks (the caller's contract says
/// it never does; the policy stays total anyway).
std::string user_name(const Snapshot& snap, int64_t user_id) {
  auto it = snap.users.find(user_id);
  if (it == snap.users.end() || it->second.name.empty()) return "user " + std::to_string(user_id);
  return it->second.name;
}

int user_max_workers(const Snapshot& snap, int64_t user_id) {
  auto it = snap.users.find(user_id);
  return it == snap.users.end() ? 0 : it->second.max_workers;
}

double user_usage(const Snapshot& snap, int64_t user_id) {
  auto it = snap.users.find(user_id);
  return it == snap.users.end() ? 0.0 : it->second.recent_usage;
}

/// Queued jobs in rule-1 order: priority desc, owner's usage asc, submitted_at asc, id asc.
std::vector<const QueuedJob*> order_queue(const Snapshot& snap) {
  std::vector<const QueuedJob*> order;
  order.reserve(snap.queued.size());
  for (const QueuedJob& j : snap.queued) order.push_back(&j);
  std::stable_sort(order.begin(), order.end(), [&](const QueuedJob* a, const QueuedJob* b) {
    if (a->priority != b->priority) return a->priority > b->priority;
    const double ua = user_usage(snap, a->user_id);
    const double ub = user_usage(snap, b->user_id);
    if (ua != ub) return ua < ub;
    if (a->submitted_at != b->submitted_at) return a->submitted_at < b->submitted_at;
    return a->id < b->id;
  });
  return order;
}

/// Name → worker, for the workers the snapshot lists.
std::map<std::string, const Worker*> index_workers(const Snapshot& snap) {
  std::map<std::string, const Worker*> by_name;
  for (const Worker& w : snap.workers) by_name.emplace(w.name, &w);
  return by_name;
}

/// Online workers of `device` that `job` holds: what stopping it would release there.
int releasable(const RunningJob& job, const std::string& device,
               const std::map<std::string, const Worker*>& by_name) {
  int n = 0;
  for (const std::string& name : job.workers) {
    auto it = by_name.find(name);
    if (it != by_name.end() && it->second->online && it->second->device == device) ++n;
  }
  return n;
}

/// The free pools, by device.
std::map<std::string, DevicePool> build_pools(const Snapshot& snap) {
  std::set<std::string> held;
  for (const RunningJob& r : snap.running) held.insert(r.workers.begin(), r.workers.end());
  std::map<std::string, DevicePool> pools;
  for (const Worker& w : snap.workers) {
    if (!w.online) continue;
    DevicePool& pool = pools[w.device];
    ++pool.num_online;
    if (w.job == 0 && !held.contains(w.name)) pool.free.push_back(w.name);
  }
  for (auto& [device, pool] : pools) std::sort(pool.free.begin(), pool.free.end());
  return pools;
}

/// Rule 5 for `job`, the blocked job of `device`, with `num_free` free workers there.
/// `already_chosen` holds victims chosen for other devices in this decision.
PreemptionPlan plan_preemption(const Snapshot& snap, const QueuedJob& job,
                               const std::string& device, int num_free,
                               const std::map<std::string, const Worker*>& by_name,
                               const std::set<int64_t>& already_chosen) {
  PreemptionPlan plan;
  std::vector<std::pair<const RunningJob*, int>> candidates;  // job, releasable workers
  for (const RunningJob& r : snap.running) {
    const int n = releasable(r, device, by_name);
    if (n == 0 || already_chosen.contains(r.id)) continue;
    if (r.preempting) {
      plan.stopping.push_back(r.id);
      plan.num_stopping_workers += n;
    } else if (r.priority < job.priority) {
      candidates.emplace_back(&r, n);
    }
  }
  std::sort(plan.stopping.begin(), plan.stopping.end());
  int covered = num_free + plan.num_stopping_workers;
  if (covered >= job.workers) {
    plan.covers = true;
    return plan;
  }
  int available = covered;
  for (const auto& [r, n] : candidates) available += n;
  if (available < job.workers) return plan;  // even stopping them all would not be enough

  std::sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    const RunningJob& x = *a.first;
    const RunningJob& y = *b.first;
    if (x.priority != y.priority) return x.priority < y.priority;
    if (x.started_at != y.started_at) return x.started_at > y.started_at;
    return x.id > y.id;
  });
  for (const auto& [r, n] : candidates) {
    if (covered >= job.workers) break;
    plan.victims.push_back(r->id);
    covered += n;
  }
  plan.covers = true;
  return plan;
}

/// The reason of a device's blocked job, given its preemption plan.
std::string blocked_reason(const QueuedJob& job, const DevicePool& pool, int num_free,
                           const PreemptionPlan& plan) {
  if (plan.covers && (!plan.victims.empty() || !plan.stopping.empty())) {
    std::vector<int64_t> all = plan.stopping;
    all.insert(all.end(), plan.victims.begin(), plan.victims.end());
    std::sort(all.begin(), all.end());
    std::string why;
    if (plan.stopping.empty()) {
      why = "preempted for this job";
    } else if (plan.victims.empty()) {
      why = "already stopping";
    } else {
      std::vector<int64_t> victims = plan.victims;
      std::sort(victims.begin(), victims.end());
      why = join_ids(victims) + " preempted for this job, " + join_ids(plan.stopping) +
            " already stopping";
    }
    return "waiting for job(s) " + join_ids(all) + " to checkpoint and stop (" + why + ")";
  }
  std::string reason = "waiting for " + count_of(job.workers, "free " + job.device + " worker") +
                       " (" + std::to_string(num_free) + " free of " +
                       std::to_string(pool.num_online) + " online";
  if (plan.num_stopping_workers > 0) {
    reason += ", " + std::to_string(plan.num_stopping_workers) + " being released by job(s) " +
              join_ids(plan.stopping);
  }
  return reason + ")";
}

}  // namespace

Decision schedule(const Snapshot& snapshot) {
  Decision decision;
  const std::map<std::string, const Worker*> by_name = index_workers(snapshot);
  std::map<std::string, DevicePool> pools = build_pools(snapshot);
  std::map<int64_t, int> held;    // workers per user: running jobs + starts of this decision
  std::map<int64_t, int> placed;  // jobs per limited experiment: running + starts
  for (const RunningJob& r : snapshot.running) {
    held[r.user_id] += static_cast<int>(r.workers.size());
    if (r.experiment != 0) ++placed[r.experiment];
  }
  std::set<int64_t> chosen_victims;
  int position = 0;

  auto wait = [&](const QueuedJob& job, std::string reason) {
    decision.pending[job.id] = Pending{++position, std::move(reason)};
  };

  for (const QueuedJob* jp : order_queue(snapshot)) {
    const QueuedJob& job = *jp;
    DevicePool& pool = pools[job.device];  // an unknown device gets an empty pool
    const int max_workers = user_max_workers(snapshot, job.user_id);

    if (job.workers < 1) {
      wait(job, "invalid gang: needs at least 1 worker, asks for " + std::to_string(job.workers));
      continue;
    }
    if (max_workers > 0 && job.workers > max_workers) {
      wait(job, "quota: " + user_name(snapshot, job.user_id) + " may hold at most " +
                    count_of(max_workers, "worker") + "; this job needs " +
                    std::to_string(job.workers) + " and can never start");
      continue;
    }
    if (job.workers > pool.num_online) {
      wait(job, "needs " + count_of(job.workers, job.device + " worker") + "; the cluster has " +
                    std::to_string(pool.num_online) + " online");
      continue;
    }
    const int user_held = held[job.user_id];
    if (max_workers > 0 && user_held + job.workers > max_workers) {
      wait(job, "quota: " + user_name(snapshot, job.user_id) + " holds " +
                    std::to_string(user_held) + " of " + count_of(max_workers, "worker") +
                    "; this job needs " + std::to_string(job.workers));
      continue;
    }

    if (job.experiment != 0) {
      const auto limit = snapshot.experiment_limits.find(job.experiment);
      if (limit != snapshot.experiment_limits.end() && limit->second > 0 &&
          placed[job.experiment] >= limit->second) {
        wait(job, "experiment " + std::to_string(job.experiment) + " runs at most " +
                      count_of(limit->second, "job") + " at once (max_parallel)");
        continue;
      }
    }

    const int num_free = static_cast<int>(pool.free.size());
    if (job.workers <= num_free - pool.num_reserved) {
      // Starts on the first free workers by name beyond the reservation (backfill).
      const auto first = pool.free.begin() + pool.num_reserved;
      std::vector<std::string> gang(first, first + job.workers);
      if (const auto avoid = snapshot.avoid.find(job.id); avoid != snapshot.avoid.end()) {
        // Rule 8: skip a worker that would pair with a taken one across a cut.
        auto cut = [&](const std::string& a, const std::string& b) {
          for (const auto& [x, y] : avoid->second)
            if ((x == a && y == b) || (x == b && y == a)) return true;
          return false;
        };
        std::vector<std::string> picked;
        for (auto it = first; it != pool.free.end() && picked.size() < gang.size(); ++it) {
          bool ok = true;
          for (const std::string& p : picked) ok = ok && !cut(p, *it);
          if (ok) picked.push_back(*it);
        }
        if (picked.size() == gang.size()) gang = picked;
      }
      decision.starts.push_back(Start{job.id, gang});
      for (const std::string& w : gang)
        pool.free.erase(std::find(pool.free.begin() + pool.num_reserved, pool.free.end(), w));
      held[job.user_id] += job.workers;
      if (job.experiment != 0) ++placed[job.experiment];
      continue;
    }

    if (pool.reserved_for != 0) {
      std::string reason =
          "waiting for " + count_of(job.workers, "free " + job.device + " worker") + " (" +
          std::to_string(num_free) + " free of " + std::to_string(pool.num_online) + " online";
      if (pool.num_reserved > 0) {
        reason += ", " + std::to_string(pool.num_reserved) + " reserved for job " +
                  std::to_string(pool.reserved_for);
      }
      wait(job, reason + ")");
      continue;
    }

    // The device's blocked job: reserve what is free, preempt if that helps.
    pool.reserved_for = job.id;
    pool.num_reserved = std::min(num_free, job.workers);
    const PreemptionPlan plan =
        plan_preemption(snapshot, job, job.device, num_free, by_name, chosen_victims);
    for (int64_t v : plan.victims) {
      decision.preempt.push_back(v);
      chosen_victims.insert(v);
    }
    wait(job, blocked_reason(job, pool, num_free, plan));
  }
  return decision;
}

namespace {

/// `value` at `at`, decayed to `to` (≥ at) with half-life `half_life_s`; a non-positive
/// half-life means no decay.
double decay(double value, double at, double to, double half_life_s) {
  if (half_life_s <= 0 || to <= at) return value;
  return value * std::exp2(-(to - at) / half_life_s);
}

}  // namespace

// The interval's use is counted as if it all happened at `to` (no decay inside [from, to]):
// conservative, it slightly overstates recent usage of long intervals. An add with `to` before
// the entry's time decays the new amount to the entry's time instead, so adds may come out of
// order. Negative durations or worker counts add nothing.
void UsageLedger::add(int64_t user, int workers, double from, double to) {
  const double amount = std::max(0, workers) * std::max(0.0, to - from);
  auto [it, inserted] = entries_.try_emplace(user, Entry{0.0, to});
  Entry& e = it->second;
  if (to >= e.at) {
    e.value = decay(e.value, e.at, to, half_life_s_) + amount;
    e.at = to;
  } else {
    e.value += decay(amount, to, e.at, half_life_s_);
  }
}

// Unknown user → 0. `now` before the last add returns the value at the last add (no growth).
double UsageLedger::usage(int64_t user, double now) const {
  auto it = entries_.find(user);
  if (it == entries_.end()) return 0.0;
  return decay(it->second.value, it->second.at, now, half_life_s_);
}

}  // namespace mohge::sched
