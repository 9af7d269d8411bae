#include "worker/dist/rank_runner.hpp"

#include "worker/comm/nccl_communicator.hpp"
#include "worker/comm/rendezvous.hpp"
#include "worker/comm/ucx_communicator.hpp"

namespace mohge {

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
  Result<std::unique_ptr<Communicator>> comm =
      make_ucx_communicator(rv, {.timeout_s = c.comm_timeout_s});
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
            ? make_nccl_communicator(rv, {.timeout_s = c.comm_timeout_s}, c.gpu,
                                     backend.value()->stream())
            : Result<std::unique_ptr<Communicator>>(invalid_argument(
                  "resources.workers", "more than one \"cuda\" rank needs NCCL: " + why));
    if (!nccl.ok()) {
      comm.value()->abort(nccl.error().message);
      return finish(nccl.error());
    }
    data = std::move(nccl).value();
  }

  TrainOptions opt = c.train;
  opt.comm = comm.value().get();
  opt.data_comm = data.get();
  opt.progress = opt.progress && c.rank == 0;
  Result<std::unique_ptr<Trainer>> trainer = Trainer::create(c.spec, opt, *backend.value());
  Status s = trainer.ok() ? trainer.value()->run(on_step) : Status(trainer.error());
  if (s.ok() && data) s = data->finalize();
  if (s.ok()) {
    s = comm.value()->finalize();
  } else {
    if (data) data->abort(s.error().message);
    comm.value()->abort(s.error().message);
  }
  return finish(s);
}

}  // namespace mohge
