#include "worker/dist/rank_runner.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "worker/comm/nccl_communicator.hpp"
#include "worker/comm/rendezvous.hpp"
#include "worker/comm/ucx_communicator.hpp"

namespace mohge {

namespace {

// How many rank pairs use each transport kind, from each rank's own view of its peers (data
// plane): rank r counts its pairs (r, p > r) under the pair's set of kinds (a bit mask), and
// one all-reduce of 2^7 counts on the control plane sums them. Each rank logs its peers.
// Keys join the kinds with "_" (record keys are [A-Za-z0-9_.]): "tcp", "shm_tcp".
Result<std::map<std::string, int>> transport_pair_counts(Communicator& control,
                                                         const Communicator& data) {
  static const std::vector<std::string> kKinds = {"self", "shm",   "tcp",    "rdma",
                                                  "nccl", "other", "unknown"};
  const int R = control.world(), me = control.rank();
  const std::vector<std::string> mine = data.peer_transports();
  std::vector<double> counts(size_t{1} << kKinds.size(), 0.0);
  std::string line;
  for (int p = 0; p < R; ++p) {
    if (p == me) continue;
    const std::string t = p < static_cast<int>(mine.size()) ? mine[static_cast<size_t>(p)] : "";
    const std::string kinds = transport_kinds(t);
    size_t mask = 0;
    for (size_t k = 0; k < kKinds.size(); ++k)
      if (("+" + kinds + "+").find("+" + kKinds[k] + "+") != std::string::npos) mask |= 1u << k;
    if (p > me) counts[mask] += 1;
    line += (line.empty() ? "" : ", ") +
            ("rank " + std::to_string(p) + " " + kinds + (t.empty() ? "" : " (" + t + ")"));
  }
  spdlog::info("rank {} reaches its peers over: {}", me, line);
  if (Status s =
          control.all_reduce(counts.data(), static_cast<int64_t>(counts.size()), ReduceOp::kSum);
      !s.ok())
    return s.error();
  std::map<std::string, int> out;
  for (size_t mask = 1; mask < counts.size(); ++mask) {
    if (counts[mask] == 0) continue;
    std::string key;
    for (size_t k = 0; k < kKinds.size(); ++k)
      if (mask & (1u << k)) key += (key.empty() ? "" : "_") + kKinds[k];
    out[key] = static_cast<int>(counts[mask]);
  }
  return out;
}

}  // namespace

Status rank_run(const RankConfig& c, const std::function<void(const StepReport&)>& on_step) {
  if (c.world < 1 || c.rank < 0 || c.rank >= c.world) {
    return invalid_argument("--rank", "must be in [0, " + std::to_string(c.world) + ")");
  }
  const std::string job = c.job_id.empty() ? c.spec.name : c.job_id;
  std::unique_ptr<RendezvousServer> server;
  if (c.rank == 0 && c.host_rendezvous) {
    Result<std::unique_ptr<RendezvousServer>> s =
        RendezvousServer::start(c.rendezvous, c.world, job, c.rendezvous_secret);
    if (!s.ok()) return s.error();
    server = std::move(s).value();
  }
  Result<std::unique_ptr<Rendezvous>> rv =
      rendezvous_connect(c.rendezvous, c.rank, c.world, job, c.rendezvous_secret, c.comm_timeout_s);
  if (!rv.ok()) return rv.error();

  Status s = rank_run(c, *rv.value(), on_step);
  if (server) server->wait_done(s.ok() ? c.comm_timeout_s : 10.0);
  return s;
}

Status rank_run(const RankConfig& c, Rendezvous& rv,
                const std::function<void(const StepReport&)>& on_step) {
  // Every outcome is announced: success lets the others finish in peace; a failure stops them
  // at once with this rank's reason (not after a deadline).
  auto finish = [&](Status s) -> Status {
    if (s.ok()) {
      rv.leave();
    } else {
      rv.fail("rank " + std::to_string(c.rank) + " failed: " + s.error().to_string());
    }
    return s;
  };
  CommOptions comm_options;
  comm_options.timeout_s = c.comm_timeout_s;
  comm_options.peer_names = c.peer_names;
  comm_options.unreachable = c.unreachable;
  for (const std::string& host : c.peer_hosts)
    comm_options.no_shared_memory = comm_options.no_shared_memory || host != c.peer_hosts[0];
  Result<std::unique_ptr<Communicator>> comm = make_ucx_communicator(rv, comm_options);
  if (!comm.ok()) return finish(comm.error());
  Result<std::unique_ptr<Backend>> backend = make_job_backend(c.spec, c.threads, c.gpu);
  if (!backend.ok()) {
    comm.value()->abort(backend.error().message);
    return finish(backend.error());
  }
  // GPU ranks: token rows and gradients stay on the device, carried by NCCL on the backend's
  // stream; the unique id travels over the same rendezvous. Every rank decides the same way
  // (the spec is the same), so all or none of them join.
  std::unique_ptr<Communicator> data;
  if (c.world > 1 && backend.value()->stream() != nullptr) {
    std::string why;
    Result<std::unique_ptr<Communicator>> nccl =
        nccl_available(&why)
            ? make_nccl_communicator(rv, comm_options, c.gpu, backend.value()->stream())
            : Result<std::unique_ptr<Communicator>>(invalid_argument(
                  "resources.workers", "more than one \"cuda\" rank needs NCCL: " + why));
    if (!nccl.ok()) {
      comm.value()->abort(nccl.error().message);
      return finish(nccl.error());
    }
    data = std::move(nccl).value();
  }

  TrainOptions opt = c.train;
  if (c.world > 1) {
    Result<std::map<std::string, int>> transports =
        transport_pair_counts(*comm.value(), data ? *data : *comm.value());
    if (!transports.ok()) {
      if (data) data->abort(transports.error().message);
      comm.value()->abort(transports.error().message);
      return finish(transports.error());
    }
    opt.transport_pairs = std::move(transports).value();
  }
  opt.comm = comm.value().get();
  opt.data_comm = data.get();
  opt.progress = opt.progress && c.rank == 0;
  Result<std::unique_ptr<Trainer>> trainer = Trainer::create(c.spec, opt, *backend.value());
  Status s = trainer.ok() ? trainer.value()->run(on_step) : Status(trainer.error());
  if (s.ok() && data) s = data->finalize();
  if (s.ok()) {
    s = comm.value()->finalize();
  }
  if (!s.ok() && s.error().code == ErrorCode::kUnreachable && c.unreachable != nullptr) {
    for (const Communicator* x : {comm.value().get(), data.get()}) {
      if (x == nullptr) continue;
      for (int p : x->unreachable_peers())
        if (std::find(c.unreachable->begin(), c.unreachable->end(), p) == c.unreachable->end())
          c.unreachable->push_back(p);
    }
  }
  if (!s.ok()) {
    if (data) data->abort(s.error().message);
    comm.value()->abort(s.error().message);
  }
  return finish(s);
}

}  // namespace mohge
