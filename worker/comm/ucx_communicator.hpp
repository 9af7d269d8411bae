// The UCX implementation of Communicator (see ucx_communicator.cpp).
#pragma once

#include <memory>

#include "api/result.hpp"
#include "worker/comm/communicator.hpp"
#include "worker/comm/rendezvous.hpp"

namespace mohge {

/// Creates the UCX context and worker, exchanges worker addresses through `rendezvous` and
/// connects to every peer. `rendezvous` must outlive the communicator (its abort signal stops
/// every wait).
Result<std::unique_ptr<Communicator>> make_ucx_communicator(Rendezvous& rendezvous,
                                                            const CommOptions& options);

}  // namespace mohge
