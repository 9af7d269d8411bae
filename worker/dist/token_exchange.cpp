#include "worker/dist/token_exchange.hpp"

#include <chrono>
#include <cstring>

namespace mohge {

TokenExchange::TokenExchange(Communicator& control, Communicator& data, Backend& backend,
                             const ExpertPlacement& placement, int64_t dim)
    : control_(control),
      data_(data),
      be_(backend),
      dim_(dim),
      world_(control.world()),
      rank_(control.rank()),
      local_offsets_{0} {
  set_placement(placement);
}

void TokenExchange::set_placement(const ExpertPlacement& placement) {
  n_mine_ = placement.experts[static_cast<size_t>(rank_)].size();
  slot_of_expert_.assign(placement.owner.size(), 0);
  slot_begin_.assign(static_cast<size_t>(world_) + 1, 0);
  int32_t slot = 0;
  for (int r = 0; r < world_; ++r) {
    slot_begin_[static_cast<size_t>(r)] = slot;
    for (int e : placement.experts[static_cast<size_t>(r)])
      slot_of_expert_[static_cast<size_t>(e)] = slot++;
  }
  slot_begin_[static_cast<size_t>(world_)] = slot;
}

Status TokenExchange::plan(const DispatchPlan& local) {
  const size_t R = static_cast<size_t>(world_);
  const size_t n_mine = n_mine_;
  // Counts of rows per (destination, expert of the destination), in slot order.
  std::vector<int64_t> send_counts(local.expert_offsets.size() - 1);
  for (size_t s = 0; s < send_counts.size(); ++s)
    send_counts[s] = local.expert_offsets[s + 1] - local.expert_offsets[s];
  std::vector<int64_t> send_bytes(R), recv_bytes(R);
  send_rows_.assign(R, 0);
  for (size_t p = 0; p < R; ++p) {
    const int64_t n_p = slot_begin_[p + 1] - slot_begin_[p];
    send_bytes[p] = n_p * int64_t{sizeof(int64_t)};
    recv_bytes[p] = static_cast<int64_t>(n_mine * sizeof(int64_t));
    send_rows_[p] = local.expert_offsets[static_cast<size_t>(slot_begin_[p + 1])] -
                    local.expert_offsets[static_cast<size_t>(slot_begin_[p])];
  }
  recv_counts_.assign(R * n_mine, 0);
  const auto t0 = std::chrono::steady_clock::now();
  Status s = control_.all_to_all_v(send_counts.data(), send_bytes.data(), recv_counts_.data(),
                                   recv_bytes.data());
  comm_ms_ +=
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!s.ok()) return s;
  // A peer's counts size everything below (buffers, copies): check them first. Every rank
  // routes a micro-batch of the same shape, so no peer sends more than num_tokens · top_k rows.
  const int64_t max_rows = local.num_tokens * local.top_k;
  for (size_t src = 0; src < R; ++src) {
    int64_t rows = 0;
    for (size_t j = 0; j < n_mine; ++j) {
      const int64_t c = recv_counts_[src * n_mine + j];
      if (c < 0 || c > max_rows - rows) {
        return Error{ErrorCode::kDataLoss,
                     "rank " + std::to_string(src) + " announced " + std::to_string(c) +
                         " rows for expert slot " + std::to_string(j) +
                         ", more than its micro-batch can route (" + std::to_string(max_rows) +
                         " rows in all); its exchange is refused",
                     ""};
      }
      rows += c;
    }
  }
  recv_rows_.assign(R, 0);
  local_offsets_.assign(n_mine + 1, 0);
  for (size_t src = 0; src < R; ++src) {
    for (size_t j = 0; j < n_mine; ++j) {
      recv_rows_[src] += recv_counts_[src * n_mine + j];
      local_offsets_[j + 1] += recv_counts_[src * n_mine + j];
    }
  }
  for (size_t j = 0; j < n_mine; ++j) local_offsets_[j + 1] += local_offsets_[j];
  if (staging_.size() < local_rows() * dim_) staging_.resize(be_, local_rows() * dim_);
  return {};
}

Status TokenExchange::all_to_all_rows(const float* send, const std::vector<int64_t>& send_rows,
                                      float* recv, const std::vector<int64_t>& recv_rows) {
  std::vector<int64_t> send_bytes(send_rows.size()), recv_bytes(recv_rows.size());
  for (size_t p = 0; p < send_rows.size(); ++p) {
    send_bytes[p] = send_rows[p] * dim_ * int64_t{sizeof(float)};
    recv_bytes[p] = recv_rows[p] * dim_ * int64_t{sizeof(float)};
    if (static_cast<int>(p) != rank_) comm_bytes_ += send_bytes[p];
  }
  const auto t0 = std::chrono::steady_clock::now();
  Status s = data_.all_to_all_v(send, send_bytes.data(), recv, recv_bytes.data());
  comm_ms_ +=
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

void TokenExchange::permute(const float* from, float* to, bool to_expert_major) {
  const size_t R = static_cast<size_t>(world_);
  const size_t n_mine = local_offsets_.size() - 1;
  // Offsets of block (s, j) in the source-major layout.
  std::vector<int64_t> src_major(R * n_mine + 1, 0);
  for (size_t b = 0; b < R * n_mine; ++b) src_major[b + 1] = src_major[b] + recv_counts_[b];
  // One backend copy per (source, expert) block: R × local experts copies, queued in order.
  for (size_t j = 0; j < n_mine; ++j) {
    int64_t expert_row = local_offsets_[j];
    for (size_t s = 0; s < R; ++s) {
      const size_t b = s * n_mine + j;
      const int64_t rows = recv_counts_[b];
      const int64_t src_row = src_major[b];
      if (rows > 0) {
        if (to_expert_major) {
          be_.copy(to + expert_row * dim_, from + src_row * dim_, rows * dim_);
        } else {
          be_.copy(to + src_row * dim_, from + expert_row * dim_, rows * dim_);
        }
      }
      expert_row += rows;
    }
  }
}

Status TokenExchange::dispatch(const float* sorted, float* expert_rows) {
  if (Status s = all_to_all_rows(sorted, send_rows_, staging_.data(), recv_rows_); !s.ok())
    return s;
  permute(staging_.data(), expert_rows, true);
  return {};
}

Status TokenExchange::combine(const float* expert_rows, float* sorted) {
  permute(expert_rows, staging_.data(), false);
  return all_to_all_rows(staging_.data(), recv_rows_, sorted, send_rows_);
}

}  // namespace mohge
