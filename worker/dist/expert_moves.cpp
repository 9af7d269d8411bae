#include "worker/dist/expert_moves.hpp"

#include <chrono>

#include "kernels/check.hpp"

#include "worker/model/ffn.hpp"

namespace mohge {

namespace {

// Slot of every expert in its owner's ascending list, for one layer's placement.
std::vector<int> slots(const ExpertPlacement& p) {
  std::vector<int> slot(p.owner.size(), 0);
  for (const std::vector<int>& mine : p.experts)
    for (size_t j = 0; j < mine.size(); ++j)
      slot[static_cast<size_t>(mine[j])] = static_cast<int>(j);
  return slot;
}

struct Move {
  int layer = 0, expert = 0, from = 0, to = 0;
};

std::vector<Move> moves(const ModelSpec& model, const ExpertPlacement& from,
                        const ExpertPlacement& to) {
  std::vector<Move> out;
  for (int l = 0; l < model.layers; ++l) {
    const ExpertPlacement& a = from.layer(l);
    const ExpertPlacement& b = to.layer(l);
    const std::vector<int> sa = slots(a), sb = slots(b);
    for (size_t e = 0; e < a.owner.size(); ++e) {
      if (a.owner[e] != b.owner[e] || sa[e] != sb[e])
        out.push_back({l, static_cast<int>(e), a.owner[e], b.owner[e]});
    }
  }
  return out;
}

const char* const kProjections[] = {".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"};

}  // namespace

ExpertMoveSize expert_moves_size(const ModelSpec& model, const ExpertPlacement& from,
                                 const ExpertPlacement& to) {
  ExpertMoveSize size;
  for (const Move& m : moves(model, from, to)) {
    ++size.experts;
    size.floats += 3 * int64_t{model.d_model} * model.ffn.expert_hidden_width(m.expert);
  }
  return size;
}

Result<ExpertMoves> expert_moves_apply(ParamStore& params, const std::vector<float*>& arenas,
                                       const ModelSpec& model, const ExpertPlacement& from,
                                       const ExpertPlacement& to, Communicator& data,
                                       Backend& backend, const std::function<void()>& rename) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rank = data.rank(), R = data.world();
  const std::vector<Move> all = moves(model, from, to);
  const int64_t A = static_cast<int64_t>(arenas.size());
  const int64_t D = model.d_model;

  // Sizes per peer; the blocks lie in peer order, each in (layer, expert) order.
  std::vector<int64_t> send_bytes(static_cast<size_t>(R), 0), recv_bytes(static_cast<size_t>(R), 0);
  for (const Move& m : all) {
    const int64_t bytes = A * 3 * D * model.ffn.expert_hidden_width(m.expert) * 4;
    if (m.from == rank) send_bytes[static_cast<size_t>(m.to)] += bytes;
    if (m.to == rank) recv_bytes[static_cast<size_t>(m.from)] += bytes;
  }
  int64_t send_total = 0, recv_total = 0;
  ExpertMoves out;
  out.experts_moved = static_cast<int64_t>(all.size());
  for (int p = 0; p < R; ++p) {
    send_total += send_bytes[static_cast<size_t>(p)] / 4;
    recv_total += recv_bytes[static_cast<size_t>(p)] / 4;
    if (p != rank) out.bytes_sent += send_bytes[static_cast<size_t>(p)];
  }
  Buffer<float> send(backend, std::max<int64_t>(send_total, 1));
  Buffer<float> recv(backend, std::max<int64_t>(recv_total, 1));

  // Visits, in buffer order, every tensor range this rank sends (`sending`) or receives, as
  // the slots are named at the time of the call: copy(arena range, buffer offset, floats).
  auto each_range = [&](bool sending, const std::function<void(float*, int64_t, int64_t)>& copy) {
    int64_t at = 0;
    for (int p = 0; p < R; ++p) {
      for (const Move& m : all) {
        if ((sending ? m.from : m.to) != rank || (sending ? m.to : m.from) != p) continue;
        const std::string name = ffn_expert_name(model.ffn, m.layer, m.expert);
        for (const char* proj : kProjections) {
          const int index = params.find(name + proj);
          MOHGE_CHECK(index >= 0, "rank " << rank << " has no slot named " << name << proj);
          const ParamInfo& info = params.info(index);
          for (float* arena : arenas) {
            copy(arena + info.offset, at, info.size);
            at += info.size;
          }
        }
      }
    }
  };
  // Pack by the names the slots have now; exchange; rename; unpack by the new names.
  each_range(
      true, [&](float* range, int64_t at, int64_t n) { backend.copy(send.data() + at, range, n); });
  if (Status s = data.all_to_all_v(send.data(), send_bytes.data(), recv.data(), recv_bytes.data());
      !s.ok()) {
    return s.error();
  }
  rename();
  each_range(false, [&](float* range, int64_t at, int64_t n) {
    backend.copy(range, recv.data() + at, n);
  });
  backend.synchronize();
  out.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace mohge
