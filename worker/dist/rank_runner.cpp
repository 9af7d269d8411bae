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
        RendezvousServer::start(c.rendezvous, c.world, job);
    if (!s.ok()) return s.error();
    server = std::move(s).value();
  }
  Result<std::unique_ptr<Rendezvous>> rv =
      rendezvous_connect(c.rendezvous, c.rank, c.world, job, c.comm_timeout_s);
  if (!rv.ok()) return rv.error();
  Result<std::unique_ptr<Communicator>> comm =
      make_ucx_communicator(*rv.value(), {.timeout_s = c.comm_timeout_s});
  if (!comm.ok()) return comm.error();
  auto backend = make_cpu_backend(c.threads);

  TrainOptions opt = c.train;
  opt.comm = comm.value().get();
  opt.progress = opt.progress && c.rank == 0;
  Result<std::unique_ptr<Trainer>> trainer = Trainer::create(c.spec, opt, *backend);
  if (!trainer.ok()) {
    comm.value()->abort(trainer.error().message);
    return trainer.error();
  }
  Status s = trainer.value()->run(on_step);
  if (s.ok()) s = comm.value()->finalize();
  if (s.ok()) rv.value()->leave();
  return s;
}

}  // namespace mohge
