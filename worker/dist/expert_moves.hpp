// Moving routed experts between ranks when an adaptive placement changes (DESIGN.md §15).
//
// Under All-size every rank holds n/R experts of every group in ascending id order, so a new
// placement changes which expert each slot of a rank's parameter arena holds, never its shape.
// An expert "moves" in a layer when its owner or its slot changes; its three tensors travel
// in every arena laid out like the parameters (the values and the AdamW moments; gradients are
// zeroed before each step and need not travel) in one all-to-all over the data plane, in
// backend memory, at a step boundary. Every rank computes the same plans from the same loads,
// so all ranks agree without talking.
#pragma once

#include <functional>
#include <vector>

#include "api/job_spec.hpp"
#include "api/result.hpp"
#include "kernels/backend.hpp"
#include "worker/comm/communicator.hpp"
#include "worker/dist/placement.hpp"
#include "worker/model/params.hpp"

namespace mohge {

struct ExpertMoves {
  int64_t experts_moved = 0;  // (layer, expert) pairs moved by all ranks
  int64_t bytes_sent = 0;     // by this rank to the others
  double ms = 0.0;            // on this rank, from the first pack to the last unpack
};

struct ExpertMoveSize {
  int64_t experts = 0;  // (layer, expert) pairs whose owner or slot differs
  int64_t floats = 0;   // their parameters (per arena: times 3 with the two AdamW moments)
};

/// What going from `from` to `to` moves, without moving it.
ExpertMoveSize expert_moves_size(const ModelSpec& model, const ExpertPlacement& from,
                                 const ExpertPlacement& to);

/// Moves the experts that change between `from` and `to` (every layer) in each of `arenas`
/// (base pointers of arenas laid out like `params`). `rename` runs after this rank's experts
/// left and before the arrivals are stored: it must make `params` name the slots after `to`
/// (Transformer::placement_changed). A failed exchange is returned (the communicator is then
/// unusable, as for any collective).
Result<ExpertMoves> expert_moves_apply(ParamStore& params, const std::vector<float*>& arenas,
                                       const ModelSpec& model, const ExpertPlacement& from,
                                       const ExpertPlacement& to, Communicator& data,
                                       Backend& backend, const std::function<void()>& rename);

}  // namespace mohge
