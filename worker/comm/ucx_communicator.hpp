// The UCX implementation of Communicator (see ucx_communicator.cpp).
#pragma once

#include <memory>

#include "api/result.hpp"
#include "worker/comm/communicator.hpp"
#include "worker/comm/rendezvous.hpp"

namespace mohge {

/// Call once at the start of main, before any thread: UCX settings this project needs that
/// UCX takes only from the environment (kept when the user set them):
///   UCX_TCP_CONN_NB=y  TCP endpoints connect in the background, so an unreachable peer is
///                      met by the deadline of the first wait; by default ucp_ep_create
///                      blocks in connect() until the kernel gives up (about two minutes).
void ucx_process_defaults();

/// Creates the UCX context and worker, exchanges worker addresses through `rendezvous` and
/// connects to every peer. `rendezvous` must outlive the communicator (its abort signal stops
/// every wait).
Result<std::unique_ptr<Communicator>> make_ucx_communicator(Rendezvous& rendezvous,
                                                            const CommOptions& options);

}  // namespace mohge
