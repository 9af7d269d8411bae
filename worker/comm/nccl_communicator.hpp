// The NCCL implementation of Communicator, for GPU ranks. All data pointers passed to it are
// device memory of `device`. Available when the build found CUDA and NCCL
// (MOHGE_WITH_CUDA); otherwise make_nccl_communicator() says so.
#pragma once

#include <memory>

#include "api/result.hpp"
#include "worker/comm/communicator.hpp"
#include "worker/comm/rendezvous.hpp"

namespace mohge {

/// True when this build includes NCCL and a CUDA device is visible; `why_not` says otherwise.
bool nccl_available(std::string* why_not);

/// Rank 0 creates the NCCL unique id and shares it through `rendezvous`; every rank then joins
/// the NCCL communicator on `device`. Its transfers run on `stream` (a cudaStream_t: the
/// rank's backend stream, so they follow the ops that produce their data) or, when null, on a
/// stream of its own. Each call waits for its stream by polling it against the deadline (the
/// data plane's one host synchronisation per transfer) and aborts the NCCL communicator when
/// the deadline passes or the rendezvous abort signal fires.
Result<std::unique_ptr<Communicator>> make_nccl_communicator(Rendezvous& rendezvous,
                                                             const CommOptions& options, int device,
                                                             void* stream = nullptr);

}  // namespace mohge
