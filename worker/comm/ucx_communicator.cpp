// The UCX communicator: the ucp tag API over shared memory on one host, TCP or RDMA between
// hosts. Collectives are the textbook ones: all-to-all-v posts every receive and send at once;
// all-reduce is a ring (reduce-scatter, then all-gather, so every rank ends with the same
// bits); broadcast is linear from the root.
//
// Error handling mode NONE (PEER forces TCP and costs 2-3× on shared memory): dead peers are
// found by deadlines and by the rendezvous abort signal.
//
// Tags: [sequence number of the collective: 40 bits][source rank: 16][kind: 8], matched
// exactly, so messages of different collectives or peers never mix.
#include "worker/comm/ucx_communicator.hpp"

#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

namespace mohge {

namespace {

using Clock = std::chrono::steady_clock;

enum TagKind : uint64_t { kA2a = 1, kReduceScatter = 2, kAllGather = 3, kBcast = 4, kP2p = 5 };

std::string ucs_error(ucs_status_t st) {
  return ucs_status_string(st);
}

class UcxCommunicator final : public Communicator {
 public:
  UcxCommunicator(Rendezvous& rv, const CommOptions& opt)
      : rv_(rv), opt_(opt), rank_(rv.rank()), world_(rv.world()) {}

  ~UcxCommunicator() override {
    if (!finalized_) abort("communicator destroyed without finalize()");
    release();
  }

  Status init() {
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) return fail_init("ucp_config_read", st);
    if (opt_.no_shared_memory && std::getenv("UCX_TLS") == nullptr) {
      st = ucp_config_modify(config, "TLS", "^sm");
      if (st != UCS_OK) {
        ucp_config_release(config);
        return fail_init("ucp_config_modify(TLS)", st);
      }
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG;
    st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (st != UCS_OK) return fail_init("ucp_init", st);
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    st = ucp_worker_create(context_, &wp, &worker_);
    if (st != UCS_OK) return fail_init("ucp_worker_create", st);
    ucp_address_t* addr = nullptr;
    size_t addr_len = 0;
    st = ucp_worker_get_address(worker_, &addr, &addr_len);
    if (st != UCS_OK) return fail_init("ucp_worker_get_address", st);
    const std::string mine(reinterpret_cast<const char*>(addr), addr_len);
    ucp_worker_release_address(worker_, addr);

    Result<std::vector<std::string>> all = rv_.exchange(mine, opt_.timeout_s);
    if (!all.ok()) return all.error();
    eps_.assign(static_cast<size_t>(world_), nullptr);
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) continue;
      ucp_ep_params_t ep{};
      ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
      ep.address =
          reinterpret_cast<const ucp_address_t*>(all.value()[static_cast<size_t>(p)].data());
      ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
      st = ucp_ep_create(worker_, &ep, &eps_[static_cast<size_t>(p)]);
      if (st != UCS_OK) {
        unreachable_ = {p};
        return Error{ErrorCode::kUnreachable,
                     "UCX: cannot connect rank " + std::to_string(rank_) + " to " +
                         peer_label(opt_, p) + ": " + ucs_error(st),
                     ""};
      }
    }
    // Wire up every pair before the first real collective; the lanes are chosen by then.
    if (Status s = barrier(); !s.ok()) return s;
    transports_.assign(static_cast<size_t>(world_), "");
    for (int p = 0; p < world_; ++p)
      transports_[static_cast<size_t>(p)] =
          p == rank_ ? "self" : ep_transports(eps_[static_cast<size_t>(p)]);
    return {};
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string name() const override { return "ucx"; }
  int64_t bytes_sent() const override { return bytes_sent_; }
  double busy_seconds() const override { return busy_s_; }
  std::vector<int> unreachable_peers() const override { return unreachable_; }
  std::vector<std::string> peer_transports() const override { return transports_; }

  Status all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                      const int64_t* recv_bytes) override {
    if (Status s = usable(); !s.ok()) return s;
    const uint64_t seq = next_seq_++;
    std::vector<Pending> reqs;
    const char* src = static_cast<const char*>(send);
    char* dst = static_cast<char*>(recv);
    int64_t soff = 0, roff = 0;
    std::vector<int64_t> send_off(static_cast<size_t>(world_)),
        recv_off(static_cast<size_t>(world_));
    for (int p = 0; p < world_; ++p) {
      send_off[static_cast<size_t>(p)] = soff;
      recv_off[static_cast<size_t>(p)] = roff;
      soff += send_bytes[p];
      roff += recv_bytes[p];
    }
    for (int p = 0; p < world_; ++p) {
      if (p != rank_ && recv_bytes[p] > 0)
        post_recv(reqs, p, dst + recv_off[static_cast<size_t>(p)], recv_bytes[p],
                  tag(seq, p, kA2a));
    }
    for (int k = 1; k < world_; ++k) {  // staggered: rank r sends to r+1 first
      const int p = (rank_ + k) % world_;
      if (send_bytes[p] > 0)
        post_send(reqs, p, src + send_off[static_cast<size_t>(p)], send_bytes[p],
                  tag(seq, rank_, kA2a));
    }
    const size_t me = static_cast<size_t>(rank_);
    if (send_bytes[rank_] != recv_bytes[rank_]) {
      post_error_peer_ = -1;  // not the network: a caller's bug (reported as kUnavailable)
      post_error_ = "all_to_all_v: rank " + std::to_string(rank_) + " sends itself " +
                    std::to_string(send_bytes[rank_]) + " bytes but expects " +
                    std::to_string(recv_bytes[rank_]);
    } else if (send_bytes[rank_] > 0) {
      std::memcpy(dst + recv_off[me], src + send_off[me], static_cast<size_t>(send_bytes[rank_]));
    }
    return wait(reqs, "all_to_all_v");
  }

  Status send_recv(int peer, const void* send, int64_t send_bytes, void* recv,
                   int64_t recv_bytes) override {
    if (Status s = usable(); !s.ok()) return s;
    const uint64_t seq = next_seq_++;
    std::vector<Pending> reqs;
    if (recv_bytes > 0) post_recv(reqs, peer, recv, recv_bytes, tag(seq, peer, kP2p));
    if (send_bytes > 0) post_send(reqs, peer, send, send_bytes, tag(seq, rank_, kP2p));
    return wait(reqs, "send_recv");
  }

  Status all_reduce(float* data, int64_t count, ReduceOp op) override {
    return ring_all_reduce(data, count, op);
  }
  Status all_reduce(double* data, int64_t count, ReduceOp op) override {
    return ring_all_reduce(data, count, op);
  }

  Status broadcast(void* data, int64_t bytes, int root) override {
    if (Status s = usable(); !s.ok()) return s;
    const uint64_t seq = next_seq_++;
    if (world_ == 1 || bytes == 0) return {};
    std::vector<Pending> reqs;
    if (rank_ == root) {
      for (int p = 0; p < world_; ++p)
        if (p != root) post_send(reqs, p, data, bytes, tag(seq, root, kBcast));
    } else {
      post_recv(reqs, root, data, bytes, tag(seq, root, kBcast));
    }
    return wait(reqs, "broadcast");
  }

  Status barrier() override {
    float one = 1.0f;
    return all_reduce(&one, 1, ReduceOp::kSum);
  }

  void abort(const std::string& why) override {
    if (aborted_) return;
    aborted_ = true;
    abort_reason_ = why;
    for (ucp_ep_h& ep : eps_) {
      if (ep == nullptr) continue;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_EP_CLOSE_FLAG_FORCE;
      void* req = ucp_ep_close_nbx(ep, &p);
      if (UCS_PTR_IS_PTR(req)) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(200);
        while (ucp_request_check_status(req) == UCS_INPROGRESS && Clock::now() < deadline)
          ucp_worker_progress(worker_);
        ucp_request_free(req);
      }
      ep = nullptr;
    }
  }

  Status finalize() override {
    if (finalized_) return {};
    Status s =
        aborted_ ? Status(Error{ErrorCode::kFailedPrecondition, abort_reason_, ""}) : barrier();
    finalized_ = true;
    // Close every endpoint at once, then wait once against one deadline.
    std::vector<void*> closing;
    for (ucp_ep_h& ep : eps_) {
      if (ep == nullptr) continue;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = s.ok() ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
      void* req = ucp_ep_close_nbx(ep, &p);
      if (UCS_PTR_IS_PTR(req)) closing.push_back(req);
      ep = nullptr;
    }
    const auto deadline = Clock::now() + std::chrono::duration<double>(opt_.timeout_s);
    for (void* req : closing) {
      while (ucp_request_check_status(req) == UCS_INPROGRESS && Clock::now() < deadline &&
             !rv_.abort_signal().raised())
        ucp_worker_progress(worker_);
      ucp_request_free(req);
    }
    release();
    return s;
  }

 private:
  struct Pending {
    void* req;  // UCX request (never null here)
    int peer;
    bool is_send;
  };

  static uint64_t tag(uint64_t seq, int src, TagKind kind) {
    return (seq << 24) | (static_cast<uint64_t>(src) << 8) | kind;
  }

  // The transports of an endpoint's lanes ("tcp/eth0", "posix/memory+cma/memory"), read from
  // UCX's own description of the endpoint (UCX 1.13 has no query for them): its lines
  // "lane[N]: <index>:<transport>/<device>.<path> md[...] ...".
  static std::string ep_transports(ucp_ep_h ep) {
    char* text = nullptr;
    size_t size = 0;
    FILE* f = open_memstream(&text, &size);
    if (f == nullptr) return "";
    ucp_ep_print_info(ep, f);
    std::fclose(f);
    const std::string info(text, size);
    std::free(text);
    std::vector<std::string> seen;
    size_t at = 0;
    while ((at = info.find("lane[", at)) != std::string::npos) {
      at = info.find(':', at);
      if (at == std::string::npos) break;
      size_t b = info.find_first_not_of(' ', at + 1);
      if (b == std::string::npos) break;
      b = info.find(':', b);  // after the resource index
      if (b == std::string::npos) break;
      const size_t e = info.find_first_of(" \t\n", b + 1);
      std::string tl = info.substr(b + 1, (e == std::string::npos ? info.size() : e) - b - 1);
      if (const size_t dot = tl.rfind('.'); dot != std::string::npos && dot > tl.find('/'))
        tl.resize(dot);  // "tcp/eth0.0" → "tcp/eth0"
      if (!tl.empty() && std::find(seen.begin(), seen.end(), tl) == seen.end()) seen.push_back(tl);
      at = b;
    }
    std::string out;
    for (const std::string& t : seen) out += (out.empty() ? "" : "+") + t;
    return out;
  }

  Status fail_init(const char* what, ucs_status_t st) {
    return Error{ErrorCode::kUnavailable, std::string("UCX ") + what + " failed: " + ucs_error(st),
                 ""};
  }

  Status usable() const {
    if (aborted_)
      return Error{ErrorCode::kFailedPrecondition, "communicator aborted: " + abort_reason_, ""};
    if (finalized_) return Error{ErrorCode::kFailedPrecondition, "communicator finalized", ""};
    return {};
  }

  void post_send(std::vector<Pending>& reqs, int peer, const void* buf, int64_t bytes, uint64_t t) {
    ucp_request_param_t p{};
    void* req =
        ucp_tag_send_nbx(eps_[static_cast<size_t>(peer)], buf, static_cast<size_t>(bytes), t, &p);
    bytes_sent_ += bytes;
    if (req == nullptr) return;  // completed in place
    if (UCS_PTR_IS_ERR(req)) {
      post_error_ =
          "send to " + peer_label(opt_, peer) + " failed: " + ucs_error(UCS_PTR_STATUS(req));
      post_error_peer_ = peer;
      return;
    }
    reqs.push_back({req, peer, true});
  }

  void post_recv(std::vector<Pending>& reqs, int peer, void* buf, int64_t bytes, uint64_t t) {
    ucp_request_param_t p{};
    void* req = ucp_tag_recv_nbx(worker_, buf, static_cast<size_t>(bytes), t, ~uint64_t{0}, &p);
    if (req == nullptr) return;  // matched an already-arrived message: complete
    if (UCS_PTR_IS_ERR(req)) {
      post_error_ =
          "receive from " + peer_label(opt_, peer) + " failed: " + ucs_error(UCS_PTR_STATUS(req));
      post_error_peer_ = peer;
      return;
    }
    reqs.push_back({req, peer, false});
  }

  // Progresses until every request completes, the deadline passes (naming the peers still
  // outstanding), or the abort signal fires.
  Status wait(std::vector<Pending>& reqs, const char* op) {
    const auto start = Clock::now();
    struct Busy {  // the time in here counts as communication, however the wait ends
      double& total;
      Clock::time_point start;
      ~Busy() { total += std::chrono::duration<double>(Clock::now() - start).count(); }
    } busy{busy_s_, start};
    const auto deadline = start + std::chrono::duration<double>(opt_.timeout_s);
    std::string error = post_error_;
    post_error_.clear();
    // The peers this wait could not reach (a transport failure, or silence past the deadline):
    // the error is then the network's (kUnreachable) unless an abort explains it.
    std::vector<int> unreachable;
    if (!error.empty() && post_error_peer_ >= 0) unreachable.push_back(post_error_peer_);
    post_error_peer_ = -1;
    size_t done = 0;
    std::vector<bool> finished(reqs.size(), false);
    int idle = 0;
    bool transport_failed = !error.empty();
    while (done < reqs.size() && error.empty()) {
      // Spin while messages flow; yield the core once idle (ranks may share cores).
      if (ucp_worker_progress(worker_) != 0) {
        idle = 0;
      } else if (++idle > 256) {
        std::this_thread::yield();
      }
      for (size_t i = 0; i < reqs.size(); ++i) {
        if (finished[i]) continue;
        const ucs_status_t st = ucp_request_check_status(reqs[i].req);
        if (st == UCS_INPROGRESS) continue;
        finished[i] = true;
        ++done;
        if (st != UCS_OK) {
          transport_failed = true;
          unreachable = {reqs[i].peer};
          error = std::string(op) + ": " + (reqs[i].is_send ? "send to " : "receive from ") +
                  peer_label(opt_, reqs[i].peer) + " failed: " + ucs_error(st);
        }
      }
      if (done == reqs.size()) break;
      if (rv_.abort_signal().raised()) {
        error = rv_.abort_signal().reason() + " (during " + op + ")";
      } else if (Clock::now() > deadline) {
        std::string peers;
        std::vector<int> silent;
        for (size_t i = 0; i < reqs.size(); ++i) {
          if (!finished[i]) {
            peers += (peers.empty() ? "" : ", ") + std::string(reqs[i].is_send ? "to " : "from ") +
                     "rank " + std::to_string(reqs[i].peer);
            if (std::find(silent.begin(), silent.end(), reqs[i].peer) == silent.end())
              silent.push_back(reqs[i].peer);
          }
        }
        std::string who;
        for (int p : silent) who += (who.empty() ? "" : ", ") + peer_label(opt_, p);
        unreachable = silent;
        error = std::string(op) + " on " + peer_label(opt_, rank_) + ": no progress within " +
                std::to_string(static_cast<int>(opt_.timeout_s)) + " s (" + peers +
                " outstanding): unreachable peer " + who +
                " (dead, silent, or cut off by the network)";
      }
    }
    if (transport_failed) {
      // A transport error usually means the peer process is gone. Its own reason (or the
      // rendezvous' "rank N exited") is on its way over the rendezvous connection and says
      // more than "shared memory error": give it a moment to arrive.
      const auto grace = Clock::now() + std::chrono::seconds(1);
      while (!rv_.abort_signal().raised() && Clock::now() < grace)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      if (rv_.abort_signal().raised())
        error = rv_.abort_signal().reason() + " (during " + op + "; " + error + ")";
    }
    // An abort (a peer's own failure, a cancel) explains the error better than the network.
    if (rv_.abort_signal().raised()) unreachable.clear();
    if (!error.empty()) {
      // Cancel what has not matched, force-close the endpoints, and progress (bounded) while
      // the buffers are still alive, so nothing writes into them after this returns.
      for (size_t i = 0; i < reqs.size(); ++i)
        if (!finished[i]) ucp_request_cancel(worker_, reqs[i].req);
      abort(error);
      const auto until = Clock::now() + std::chrono::milliseconds(500);
      for (size_t i = 0; i < reqs.size(); ++i) {
        while (!finished[i] && ucp_request_check_status(reqs[i].req) == UCS_INPROGRESS &&
               Clock::now() < until)
          ucp_worker_progress(worker_);
      }
    }
    for (Pending& r : reqs) ucp_request_free(r.req);
    reqs.clear();
    if (error.empty()) return {};
    if (unreachable.empty()) return Error{ErrorCode::kUnavailable, error, ""};
    unreachable_ = unreachable;
    return Error{ErrorCode::kUnreachable, error, ""};
  }

  template <class T>
  Status ring_all_reduce(T* data, int64_t count, ReduceOp op) {
    if (Status s = usable(); !s.ok()) return s;
    const int R = world_;
    if (R > 1 && count > 0) {
      auto begin = [&](int c) { return count * c / R; };
      auto size = [&](int c) { return begin(c + 1) - begin(c); };
      const int right = (rank_ + 1) % R, left = (rank_ + R - 1) % R;
      std::vector<T> incoming(static_cast<size_t>((count + R - 1) / R + 1));  // the largest chunk
      for (int s = 0; s < R - 1; ++s) {                                       // reduce-scatter
        const int send_c = (rank_ - s + R) % R, recv_c = (rank_ - s - 1 + 2 * R) % R;
        std::vector<Pending> reqs;
        const uint64_t seq = next_seq_++;  // one per ring step
        const int64_t bytes_in = size(recv_c) * int64_t{sizeof(T)};
        const int64_t bytes_out = size(send_c) * int64_t{sizeof(T)};
        if (bytes_in > 0)
          post_recv(reqs, left, incoming.data(), bytes_in, tag(seq, left, kReduceScatter));
        if (bytes_out > 0)
          post_send(reqs, right, data + begin(send_c), bytes_out, tag(seq, rank_, kReduceScatter));
        if (Status st = wait(reqs, "all_reduce"); !st.ok()) return st;
        T* dst = data + begin(recv_c);
        for (int64_t i = 0; i < size(recv_c); ++i) dst[i] += incoming[static_cast<size_t>(i)];
      }
      for (int s = 0; s < R - 1; ++s) {  // all-gather
        const int send_c = (rank_ + 1 - s + R) % R, recv_c = (rank_ - s + R) % R;
        std::vector<Pending> reqs;
        const uint64_t seq = next_seq_++;
        const int64_t bytes_in = size(recv_c) * int64_t{sizeof(T)};
        const int64_t bytes_out = size(send_c) * int64_t{sizeof(T)};
        if (bytes_in > 0)
          post_recv(reqs, left, data + begin(recv_c), bytes_in, tag(seq, left, kAllGather));
        if (bytes_out > 0)
          post_send(reqs, right, data + begin(send_c), bytes_out, tag(seq, rank_, kAllGather));
        if (Status st = wait(reqs, "all_reduce"); !st.ok()) return st;
      }
    }
    if (op == ReduceOp::kAverage) {
      for (int64_t i = 0; i < count; ++i) data[i] /= static_cast<T>(R);
    }
    return {};
  }

  void release() {
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (context_ != nullptr) ucp_cleanup(context_);
    worker_ = nullptr;
    context_ = nullptr;
  }

  Rendezvous& rv_;
  CommOptions opt_;
  int rank_, world_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<ucp_ep_h> eps_;  // (R) nullptr for self
  uint64_t next_seq_ = 1;
  int64_t bytes_sent_ = 0;
  double busy_s_ = 0.0;                  // seconds inside wait()
  std::vector<std::string> transports_;  // per peer rank, after init
  bool aborted_ = false;
  bool finalized_ = false;
  std::string abort_reason_;
  std::string post_error_;        // a post failure, reported by the next wait()
  int post_error_peer_ = -1;      // the peer of that post
  std::vector<int> unreachable_;  // the peers of the last kUnreachable error
};

}  // namespace

void ucx_process_defaults() {
  // UCX 1.13 reads UCT transport options from the environment only (ucp_config_modify does
  // not reach them).
  ::setenv("UCX_TCP_CONN_NB", "y", /*overwrite=*/0);
}

Result<std::unique_ptr<Communicator>> make_ucx_communicator(Rendezvous& rendezvous,
                                                            const CommOptions& options) {
  auto comm = std::make_unique<UcxCommunicator>(rendezvous, options);
  if (Status s = comm->init(); !s.ok()) {
    if (s.error().code == ErrorCode::kUnreachable && options.unreachable != nullptr)
      *options.unreachable = comm->unreachable_peers();
    return s.error();
  }
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace mohge
