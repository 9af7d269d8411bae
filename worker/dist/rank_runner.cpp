#include "worker/dist/rank_runner.hpp"

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
  Result<std::unique_ptr<Backend>> backend = make_job_backend(c.spec, c.threads);
  if (!backend.ok()) {
    comm.value()->abort(backend.error().message);
    return finish(backend.error());
  }

  TrainOptions opt = c.train;
  opt.comm = comm.value().get();
  opt.progress = opt.progress && c.rank == 0;
  Result<std::unique_ptr<Trainer>> trainer = Trainer::create(c.spec, opt, *backend.value());
  Status s = trainer.ok() ? trainer.value()->run(on_step) : Status(trainer.error());
  if (s.ok()) {
    s = comm.value()->finalize();
  } else {
    comm.value()->abort(s.error().message);
  }
  return finish(s);
}

}  // namespace mohge
