#include "worker/comm/communicator.hpp"

#include <algorithm>
#include <cstring>

namespace mohge {

namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string name() const override { return "local"; }
  int64_t bytes_sent() const override { return 0; }
  Status all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                      const int64_t* recv_bytes) override {
    if (send_bytes[0] != recv_bytes[0])
      return Error{ErrorCode::kInternal, "all_to_all_v: send and receive sizes differ", ""};
    if (send_bytes[0] > 0 && send != recv)
      std::memmove(recv, send, static_cast<size_t>(send_bytes[0]));
    return {};
  }
  Status send_recv(int, const void* send, int64_t send_bytes, void* recv,
                   int64_t recv_bytes) override {
    if (send_bytes != recv_bytes)
      return Error{ErrorCode::kInternal, "send_recv: send and receive sizes differ", ""};
    if (send_bytes > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(send_bytes));
    return {};
  }
  Status all_reduce(float*, int64_t, ReduceOp) override { return {}; }
  Status all_reduce(double*, int64_t, ReduceOp) override { return {}; }
  Status broadcast(void*, int64_t, int) override { return {}; }
  Status barrier() override { return {}; }
  void abort(const std::string&) override {}
  Status finalize() override { return {}; }
};

}  // namespace

namespace {

// One UCX transport ("component/device") by family.
std::string kind_of(const std::string& transport) {
  const std::string tl = transport.substr(0, transport.find('/'));
  if (tl == "self" || tl == "nccl") return tl;
  if (tl == "posix" || tl == "sysv" || tl == "cma" || tl == "knem" || tl == "xpmem") return "shm";
  if (tl == "tcp" || tl == "sockcm") return "tcp";
  if (tl.rfind("rc", 0) == 0 || tl.rfind("ud", 0) == 0 || tl.rfind("dc", 0) == 0) return "rdma";
  return "other";
}

}  // namespace

std::string transport_kinds(const std::string& transports) {
  if (transports.empty()) return "unknown";
  std::vector<std::string> kinds;
  size_t begin = 0;
  while (begin <= transports.size()) {
    const size_t end = std::min(transports.find('+', begin), transports.size());
    const std::string k = kind_of(transports.substr(begin, end - begin));
    if (std::find(kinds.begin(), kinds.end(), k) == kinds.end()) kinds.push_back(k);
    begin = end + 1;
  }
  std::string out;
  for (const std::string& k : kinds) out += (out.empty() ? "" : "+") + k;
  return out;
}

std::string peer_label(const CommOptions& options, int rank) {
  std::string out = "rank " + std::to_string(rank);
  if (rank >= 0 && rank < static_cast<int>(options.peer_names.size()) &&
      !options.peer_names[static_cast<size_t>(rank)].empty())
    out += " (" + options.peer_names[static_cast<size_t>(rank)] + ")";
  return out;
}

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace mohge
