// TokenExchange: moves token rows between the ranks of an MoE/MoHGE layer (DESIGN.md §6).
//
// Each rank sorts its token-expert assignments by "slot": experts in owner-major order (all
// experts of rank 0, then of rank 1, …), so the rows for each destination are one contiguous
// block. plan() exchanges the per-expert row counts; dispatch() sends the rows to the experts'
// owners, which receive them expert-major (expert j's rows from source 0, then source 1, …:
// the token order of the single-process run); combine() sends expert outputs back to the
// rows' sources in their original order. The backward of dispatch is a combine and the
// backward of combine is a dispatch, with the same plan.
//
// The counts travel over the control communicator (host memory); the rows over the data
// communicator, in the backend's memory, and the layout permutes are backend copies, so the
// rows never leave a GPU rank's device.
//
// Shape legend: D model width, M assignments of this rank (N·K), L rows this rank computes.
#pragma once

#include <cstdint>
#include <vector>

#include "api/result.hpp"
#include "kernels/backend.hpp"
#include "worker/comm/communicator.hpp"
#include "worker/dist/placement.hpp"

namespace mohge {

class TokenExchange {
 public:
  /// `control` (counts), `data` (rows) and `backend` must outlive the exchange; `placement`
  /// is the layer's (copied).
  TokenExchange(Communicator& control, Communicator& data, Backend& backend,
                const ExpertPlacement& placement, int64_t dim);

  /// The layer's experts moved (adaptive placement): the slots follow the new owners.
  void set_placement(const ExpertPlacement& placement);

  /// (E) slot of each global expert id: the order the local dispatch plan must sort by.
  const std::vector<int32_t>& slot_of_expert() const { return slot_of_expert_; }

  /// Exchanges row counts for this step's routing. `local` is the dispatch plan over slots.
  Status plan(const DispatchPlan& local);
  /// L: rows this rank computes (all sources, all of its experts).
  int64_t local_rows() const { return local_offsets_.back(); }
  /// (local experts + 1) offsets of each owned expert's rows in the expert-major buffer.
  const std::vector<int64_t>& local_offsets() const { return local_offsets_; }

  /// sorted (M, D) in slot order → expert_rows (L, D) expert-major on the owners (both in
  /// backend memory, as for the two calls below).
  Status dispatch(const float* sorted, float* expert_rows);
  /// expert_rows (L, D) expert-major → sorted (M, D) back in this rank's slot order.
  Status combine(const float* expert_rows, float* sorted);

  /// Milliseconds spent in the exchanges and bytes sent to other ranks since the last reset.
  double comm_ms() const { return comm_ms_; }
  int64_t comm_bytes() const { return comm_bytes_; }
  void reset_stats() {
    comm_ms_ = 0.0;
    comm_bytes_ = 0;
  }

 private:
  // Copies rows between source-major ([s][j]) and expert-major ([j][s]) layouts.
  void permute(const float* from, float* to, bool to_expert_major);
  Status all_to_all_rows(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                         const std::vector<int64_t>& recv_rows);

  Communicator& control_;
  Communicator& data_;
  Backend& be_;
  size_t n_mine_ = 0;  // experts this rank owns
  int64_t dim_;        // D
  int world_, rank_;
  std::vector<int32_t> slot_of_expert_;  // (E)
  std::vector<int> slot_begin_;          // (R+1) first slot of each rank
  std::vector<int64_t> send_rows_;       // (R) rows this rank sends to each owner
  std::vector<int64_t> recv_counts_;     // (R, local experts) rows from source s for expert j
  std::vector<int64_t> recv_rows_;       // (R) rows from each source
  std::vector<int64_t> local_offsets_;   // (local experts + 1)
  Buffer<float> staging_;                // (L, D) source-major rows, backend memory
  double comm_ms_ = 0.0;
  int64_t comm_bytes_ = 0;
};

}  // namespace mohge
