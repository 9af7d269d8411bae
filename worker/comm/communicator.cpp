#include "worker/comm/communicator.hpp"

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

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace mohge
