// NCCL communicator: grouped ncclSend/ncclRecv for all-to-all-v, ncclAllReduce, ncclBroadcast
// on one CUDA stream; every wait polls the stream with a deadline (never a blocking sync).
#include "worker/comm/nccl_communicator.hpp"

#include <chrono>
#include <cstring>
#include <thread>

#ifdef MOHGE_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace mohge {

#ifndef MOHGE_HAVE_NCCL

bool nccl_available(std::string* why_not) {
  if (why_not != nullptr)
    *why_not = "built without CUDA/NCCL (MOHGE_WITH_CUDA=OFF or NCCL not found)";
  return false;
}

Result<std::unique_ptr<Communicator>> make_nccl_communicator(Rendezvous&, const CommOptions&, int,
                                                             void*) {
  std::string why;
  nccl_available(&why);
  return Error{ErrorCode::kFailedPrecondition, "NCCL communicator unavailable: " + why, ""};
}

#else

namespace {

using Clock = std::chrono::steady_clock;

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Rendezvous& rv, const CommOptions& opt, int device, void* stream)
      : rv_(rv),
        opt_(opt),
        device_(device),
        rank_(rv.rank()),
        world_(rv.world()),
        stream_(static_cast<cudaStream_t>(stream)),
        own_stream_(stream == nullptr) {}

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (finalized_) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (own_stream_ && stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Status init() {
    if (cudaSetDevice(device_) != cudaSuccess)
      return Error{ErrorCode::kUnavailable, "cannot use CUDA device " + std::to_string(device_),
                   ""};
    if ((own_stream_ &&
         cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess) ||
        cudaMalloc(&scratch_, sizeof(float)) != cudaSuccess)
      return Error{ErrorCode::kUnavailable, "CUDA stream or memory allocation failed", ""};
    ncclUniqueId id{};
    if (rank_ == 0 && ncclGetUniqueId(&id) != ncclSuccess)
      return Error{ErrorCode::kUnavailable, "ncclGetUniqueId failed", ""};
    const std::string mine = rank_ == 0 ? std::string(id.internal, sizeof(id.internal)) : "";
    Result<std::vector<std::string>> all = rv_.exchange(mine, opt_.timeout_s);
    if (!all.ok()) return all.error();
    std::memcpy(id.internal, all.value()[0].data(), sizeof(id.internal));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, world_, id, rank_, &config);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_error("ncclCommInitRank", r);
    return wait_comm("ncclCommInitRank");
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string name() const override { return "nccl"; }
  int64_t bytes_sent() const override { return bytes_sent_; }
  std::vector<std::string> peer_transports() const override {
    // NCCL picks NVLink, PCIe, shared memory or the network per pair itself and does not say.
    std::vector<std::string> out(static_cast<size_t>(world_), "nccl");
    out[static_cast<size_t>(rank_)] = "self";
    return out;
  }

  Status all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                      const int64_t* recv_bytes) override {
    const char* src = static_cast<const char*>(send);
    char* dst = static_cast<char*>(recv);
    int64_t soff = 0, roff = 0;
    ncclGroupStart();
    for (int p = 0; p < world_; ++p) {
      if (send_bytes[p] > 0)
        ncclSend(src + soff, static_cast<size_t>(send_bytes[p]), ncclChar, p, comm_, stream_);
      if (recv_bytes[p] > 0)
        ncclRecv(dst + roff, static_cast<size_t>(recv_bytes[p]), ncclChar, p, comm_, stream_);
      if (p != rank_) bytes_sent_ += send_bytes[p];
      soff += send_bytes[p];
      roff += recv_bytes[p];
    }
    const ncclResult_t r = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) return nccl_error("all_to_all_v", r);
    return wait_stream("all_to_all_v");
  }

  Status send_recv(int peer, const void* send, int64_t send_bytes, void* recv,
                   int64_t recv_bytes) override {
    ncclGroupStart();
    if (send_bytes > 0)
      ncclSend(send, static_cast<size_t>(send_bytes), ncclChar, peer, comm_, stream_);
    if (recv_bytes > 0)
      ncclRecv(recv, static_cast<size_t>(recv_bytes), ncclChar, peer, comm_, stream_);
    const ncclResult_t r = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) return nccl_error("send_recv", r);
    bytes_sent_ += send_bytes;
    return wait_stream("send_recv");
  }

  Status all_reduce(float* data, int64_t count, ReduceOp op) override {
    return reduce(data, count, ncclFloat, op);
  }
  Status all_reduce(double* data, int64_t count, ReduceOp op) override {
    return reduce(data, count, ncclDouble, op);
  }

  Status broadcast(void* data, int64_t bytes, int root) override {
    const ncclResult_t r =
        ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclChar, root, comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_error("broadcast", r);
    return wait_stream("broadcast");
  }

  Status barrier() override {
    return reduce(static_cast<float*>(scratch_), 1, ncclFloat, ReduceOp::kSum);
  }

  void abort(const std::string&) override {
    if (comm_ != nullptr && !finalized_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  Status finalize() override {
    if (comm_ == nullptr) return Error{ErrorCode::kFailedPrecondition, "communicator aborted", ""};
    Status s = barrier();
    if (s.ok()) {
      finalized_ = true;  // the destructor may then destroy the communicator in order
    } else {
      abort(s.error().message);  // never ncclCommDestroy on a communicator in error
    }
    return s;
  }

 private:
  Status reduce(void* data, int64_t count, ncclDataType_t type, ReduceOp op) {
    const ncclResult_t r = ncclAllReduce(data, data, static_cast<size_t>(count), type,
                                         op == ReduceOp::kSum ? ncclSum : ncclAvg, comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_error("all_reduce", r);
    return wait_stream("all_reduce");
  }

  Status nccl_error(const char* op, ncclResult_t r) {
    return Error{ErrorCode::kUnavailable, std::string(op) + ": " + ncclGetErrorString(r), ""};
  }

  Status wait_comm(const char* op) {
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(opt_.timeout_s));
    ncclResult_t state = ncclInProgress;
    while (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress) {
      if (Status s = check_deadline(op, deadline); !s.ok()) return s;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (state != ncclSuccess) return nccl_error(op, state);
    return {};
  }

  Status wait_stream(const char* op) {
    // A non-blocking communicator may return from ncclGroupEnd (or a collective) before the
    // work is on the stream (connections are set up lazily): wait until it is, or the
    // stream would look idle and later work would run before the data arrived.
    if (Status s = wait_comm(op); !s.ok()) return s;
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(opt_.timeout_s));
    while (true) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return {};
      if (e != cudaErrorNotReady)
        return Error{ErrorCode::kUnavailable, std::string(op) + ": " + cudaGetErrorString(e), ""};
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) return nccl_error(op, state);
      if (Status s = check_deadline(op, deadline); !s.ok()) return s;
    }
  }

  Status check_deadline(const char* op, Clock::time_point deadline) {
    std::string why;
    if (rv_.abort_signal().raised()) {
      why = rv_.abort_signal().reason() + " (during " + op + ")";
    } else if (Clock::now() > deadline) {
      why = std::string(op) + " on rank " + std::to_string(rank_) + ": no progress within " +
            std::to_string(static_cast<int>(opt_.timeout_s)) + " s (a peer is dead or silent)";
    } else {
      return {};
    }
    abort(why);
    return Error{ErrorCode::kUnavailable, why, ""};
  }

  Rendezvous& rv_;
  CommOptions opt_;
  int device_, rank_, world_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool own_stream_ = true;
  void* scratch_ = nullptr;  // one float on the device, for barrier()
  int64_t bytes_sent_ = 0;
  bool finalized_ = false;
};

}  // namespace

bool nccl_available(std::string* why_not) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (why_not != nullptr) *why_not = "no CUDA device is visible";
    return false;
  }
  return true;
}

Result<std::unique_ptr<Communicator>> make_nccl_communicator(Rendezvous& rendezvous,
                                                             const CommOptions& options, int device,
                                                             void* stream) {
  auto comm = std::make_unique<NcclCommunicator>(rendezvous, options, device, stream);
  if (Status s = comm->init(); !s.ok()) return s.error();
  return std::unique_ptr<Communicator>(std::move(comm));
}

#endif

}  // namespace mohge
