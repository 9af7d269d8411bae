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

int64_t expert_moves_count(const ModelSpec& model, const ExpertPlacement& from,
                           const ExpertPlacement& to) {
  return static_cast<int64_t>(moves(model, from, to).size());
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
  auto floats = [&](const Move& m) { return A * 3 * D * model.ffn.expert_hidden_width(m.expert); };

  // Sizes per peer; the blocks lie in peer order, each in (layer, expert) order.
  std::vector<int64_t> send_floats(static_cast<size_t>(R), 0),
      recv_floats(static_cast<size_t>(R), 0);
  for (const Move& m : all) {
    if (m.from == rank) send_floats[static_cast<size_t>(m.to)] += floats(m);
    if (m.to == rank) recv_floats[static_cast<size_t>(m.from)] += floats(m);
  }
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < R; ++p) {
    send_total += send_floats[static_cast<size_t>(p)];
    recv_total += recv_floats[static_cast<size_t>(p)];
  }
  Buffer<float> send(backend, std::max<int64_t>(send_total, 1));
  Buffer<float> recv(backend, std::max<int64_t>(recv_total, 1));

  // Pack, by the names the slots have now.
  int64_t at = 0;
  for (int p = 0; p < R; ++p) {
    for (const Move& m : all) {
      if (m.from != rank || m.to != p) continue;
      const std::string name = ffn_expert_name(model.ffn, m.layer, m.expert);
      for (const char* proj : kProjections) {
        const int index = params.find(name + proj);
        MOHGE_CHECK(index >= 0, "rank " << rank << " does not hold " << name << proj);
        const ParamInfo& info = params.info(index);
        for (float* arena : arenas) {
          backend.copy(send.data() + at, arena + info.offset, info.size);
          at += info.size;
        }
      }
    }
  }
  std::vector<int64_t> send_bytes(static_cast<size_t>(R)), recv_bytes(static_cast<size_t>(R));
  ExpertMoves out;
  out.experts_moved = static_cast<int64_t>(all.size());
  for (int p = 0; p < R; ++p) {
    send_bytes[static_cast<size_t>(p)] = send_floats[static_cast<size_t>(p)] * 4;
    recv_bytes[static_cast<size_t>(p)] = recv_floats[static_cast<size_t>(p)] * 4;
    if (p != rank) out.bytes_sent += send_bytes[static_cast<size_t>(p)];
  }
  if (Status s = data.all_to_all_v(send.data(), send_bytes.data(), recv.data(), recv_bytes.data());
      !s.ok()) {
    return s.error();
  }
  rename();
  // Unpack, by the names the slots have after `to`.
  at = 0;
  for (int p = 0; p < R; ++p) {
    for (const Move& m : all) {
      if (m.to != rank || m.from != p) continue;
      const std::string name = ffn_expert_name(model.ffn, m.layer, m.expert);
      for (const char* proj : kProjections) {
        const int index = params.find(name + proj);
        MOHGE_CHECK(index >= 0, "rank " << rank << " has no slot named " << name << proj);
        const ParamInfo& info = params.info(index);
        for (float* arena : arenas) {
          backend.copy(arena + info.offset, recv.data() + at, info.size);
          at += info.size;
        }
      }
    }
  }
  backend.synchronize();
  out.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace mohge
