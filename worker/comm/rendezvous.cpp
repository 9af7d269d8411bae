// The TCP rendezvous service and its client (Boost.Asio).
//
// Wire format: frames of [u32 little-endian length of what follows][u8 type][payload];
// strings are [u32 length][bytes].
//   HELLO   client→server  u32 version, u32 rank, u32 world, str job, str secret
//   WELCOME server→client  (empty)
//   PUBLISH client→server  u32 round, str blob
//   ALL     server→client  u32 round, u32 count, count × str
//   ABORT   server→client  str reason (the job must stop)
//   LEAVE   client→server  (empty; a later disconnect is not a failure)
//   FAIL    client→server  str reason (forwarded to every other rank as ABORT)
// The server runs all handlers on one io thread, so its state needs no lock.
#include "worker/comm/rendezvous.hpp"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

namespace mohge {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

constexpr uint32_t kProtocolVersion = 2;       // 2: HELLO carries the job's secret
constexpr uint32_t kMaxFrame = 1u << 20;       // blobs are UCX addresses and NCCL ids
constexpr uint32_t kMaxHelloFrame = 4u << 10;  // before a connection has joined
constexpr size_t kMaxPending = 64;             // connections that have not joined yet

enum FrameType : uint8_t { kHello = 1, kWelcome, kPublish, kAll, kAbort, kLeave, kFail };

class Writer {
 public:
  explicit Writer(FrameType type) { buf_.push_back(static_cast<char>(type)); }
  Writer& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  Writer& str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    buf_.insert(buf_.end(), s.begin(), s.end());
    return *this;
  }
  /// The framed bytes.
  std::shared_ptr<std::string> frame() const {
    auto out = std::make_shared<std::string>();
    const uint32_t n = static_cast<uint32_t>(buf_.size());
    for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(n >> (8 * i)));
    out->append(buf_.begin(), buf_.end());
    return out;
  }

 private:
  std::vector<char> buf_;
};

class Reader {
 public:
  explicit Reader(const std::vector<char>& b) : b_(b) {}
  uint8_t type() { return need(1) ? static_cast<uint8_t>(b_[pos_++]) : 0; }
  uint32_t u32() {
    if (!need(4)) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
      v |= static_cast<uint32_t>(static_cast<unsigned char>(b_[pos_++])) << (8 * i);
    return v;
  }
  std::string str() {
    const uint32_t n = u32();
    if (!need(n)) return {};
    std::string s(b_.begin() + static_cast<std::ptrdiff_t>(pos_),
                  b_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return s;
  }
  bool ok() const { return ok_; }

 private:
  bool need(size_t n) {
    if (pos_ + n > b_.size()) ok_ = false;
    return ok_;
  }
  const std::vector<char>& b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

uint32_t frame_length(const char* header) {
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i)
    n |= static_cast<uint32_t>(static_cast<unsigned char>(header[i])) << (8 * i);
  return n;
}

}  // namespace

Result<std::pair<std::string, int>> parse_host_port(const std::string& host_port,
                                                    const std::string& field) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == host_port.size()) {
    return invalid_argument(field, "must be HOST:PORT, got \"" + host_port + "\"");
  }
  const std::string port = host_port.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoi(port) > 65535) {
    return invalid_argument(field, "port must be a number in [0, 65535], got \"" + port + "\"");
  }
  return std::make_pair(host_port.substr(0, colon), std::stoi(port));
}

// ---- server ------------------------------------------------------------------------------

struct RendezvousServer::Impl {
  struct Conn {
    explicit Conn(tcp::socket s) : sock(std::move(s)) {}
    tcp::socket sock;
    int rank = -1;
    bool left = false;
    bool closed = false;
    bool refused = false;  // closed after its ABORT is written
    char header[4];
    std::vector<char> body;
    std::deque<std::shared_ptr<std::string>> out;
  };

  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;
  int world = 0;
  std::string job;
  std::string secret;
  std::vector<std::shared_ptr<Conn>> conns;
  std::map<uint32_t, std::map<int, std::string>> rounds;  // round → rank → blob
  bool aborting = false;
  int port = 0;
  // Set (under done_mu) once every rank that joined has left, failed or disconnected.
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool done = false;

  void check_done() {
    int joined = 0, finished = 0;
    for (const auto& c : conns) {
      if (c->rank < 0) continue;
      ++joined;
      if (c->left || c->closed) ++finished;
    }
    if (joined == world && finished == world) {
      std::lock_guard<std::mutex> lock(done_mu);
      done = true;
      done_cv.notify_all();
    }
  }

  void abort_all(const std::shared_ptr<Conn>& except, const std::string& why) {
    if (aborting) return;
    aborting = true;
    const auto frame = Writer(kAbort).str(why).frame();
    for (const auto& other : conns)
      if (other != except && other->rank >= 0) send(other, frame);
  }

  void accept() {
    acceptor.async_accept([this](const boost::system::error_code& ec, tcp::socket sock) {
      if (ec) return;  // acceptor closed
      sock.set_option(tcp::no_delay(true));
      size_t pending = 0;
      for (const auto& other : conns) pending += other->rank < 0 && !other->closed ? 1 : 0;
      if (pending >= kMaxPending) {
        boost::system::error_code ignored;
        sock.close(ignored);
      } else {
        auto c = std::make_shared<Conn>(std::move(sock));
        conns.push_back(c);
        read_header(c);
      }
      accept();
    });
  }

  void read_header(const std::shared_ptr<Conn>& c) {
    asio::async_read(c->sock, asio::buffer(c->header, 4),
                     [this, c](const boost::system::error_code& ec, size_t) {
                       if (ec) return lost(c);
                       const uint32_t n = frame_length(c->header);
                       if (n == 0 || n > (c->rank >= 0 ? kMaxFrame : kMaxHelloFrame))
                         return lost(c);
                       c->body.resize(n);
                       asio::async_read(c->sock, asio::buffer(c->body),
                                        [this, c](const boost::system::error_code& ec2, size_t) {
                                          if (ec2) return lost(c);
                                          handle(c);
                                          if (!c->closed) read_header(c);
                                        });
                     });
  }

  void send(const std::shared_ptr<Conn>& c, std::shared_ptr<std::string> frame) {
    if (c->closed) return;
    c->out.push_back(std::move(frame));
    if (c->out.size() == 1) write_next(c);
  }

  void write_next(const std::shared_ptr<Conn>& c) {
    asio::async_write(c->sock, asio::buffer(*c->out.front()),
                      [this, c](const boost::system::error_code& ec, size_t) {
                        if (ec) return lost(c);
                        c->out.pop_front();
                        if (!c->out.empty()) return write_next(c);
                        if (c->refused) lost(c);
                      });
  }

  // Refused connections are told why and closed once that is written; never members.
  void refuse(const std::shared_ptr<Conn>& c, const std::string& why) {
    c->rank = -1;
    c->refused = true;
    send(c, Writer(kAbort).str(why).frame());
  }

  void handle(const std::shared_ptr<Conn>& c) {
    Reader r(c->body);
    const uint8_t type = r.type();
    if (type == kHello) {
      if (c->rank >= 0 || c->refused) return;  // one HELLO per connection
      const uint32_t version = r.u32(), rank = r.u32(), w = r.u32();
      const std::string j = r.str();
      const std::string presented = r.str();
      if (!r.ok()) return refuse(c, "malformed HELLO");
      if (aborting) return refuse(c, "the job is already stopping after a failure");
      if (version != kProtocolVersion) {
        return refuse(c, "rendezvous protocol version " + std::to_string(version) +
                             " does not match the service's " + std::to_string(kProtocolVersion));
      }
      // Compared in constant time: the secret is what keeps strangers out of the job.
      unsigned char diff = presented.size() == secret.size() ? 0 : 1;
      for (size_t i = 0; i < presented.size() && i < secret.size(); ++i)
        diff |= static_cast<unsigned char>(presented[i] ^ secret[i]);
      if (diff != 0) return refuse(c, "wrong or missing rendezvous secret for this job");
      if (static_cast<int>(w) != world || j != job) {
        return refuse(c, "this rendezvous serves job \"" + job + "\" of " + std::to_string(world) +
                             " ranks, not \"" + j + "\" of " + std::to_string(w));
      }
      if (static_cast<int>(rank) >= world) {
        return refuse(
            c, "rank " + std::to_string(rank) + " outside [0, " + std::to_string(world) + ")");
      }
      for (const auto& other : conns) {
        if (other != c && other->rank == static_cast<int>(rank) && !other->closed) {
          return refuse(c, "rank " + std::to_string(rank) + " is already connected");
        }
      }
      c->rank = static_cast<int>(rank);
      send(c, Writer(kWelcome).frame());
    } else if (type == kPublish && c->rank >= 0) {
      const uint32_t round = r.u32();
      std::string blob = r.str();
      if (!r.ok() || round > 1000) return;
      auto& got = rounds[round];
      got[c->rank] = std::move(blob);
      if (static_cast<int>(got.size()) == world) {
        Writer w(kAll);
        w.u32(round).u32(static_cast<uint32_t>(world));
        for (const auto& [rk, b] : got) w.str(b);
        const auto frame = w.frame();
        for (const auto& other : conns)
          if (other->rank >= 0) send(other, frame);
        rounds.erase(round);
      }
    } else if (type == kLeave && c->rank >= 0 && !c->left) {
      c->left = true;
      check_done();
    } else if (type == kFail && c->rank >= 0) {
      c->left = true;  // its disconnect is explained
      abort_all(c, r.str());
      check_done();
    }
  }

  void lost(const std::shared_ptr<Conn>& c) {
    if (c->closed) return;
    c->closed = true;
    boost::system::error_code ignored;
    c->sock.close(ignored);
    // A connection that never joined leaves no trace (members stay: they count for done).
    if (c->rank < 0) {
      conns.erase(std::remove(conns.begin(), conns.end(), c), conns.end());
      return;
    }
    if (c->rank >= 0 && !c->left) {
      abort_all(c, "rank " + std::to_string(c->rank) +
                       " exited or lost its connection to the rendezvous service");
    }
    check_done();
  }
};

RendezvousServer::RendezvousServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RendezvousServer::~RendezvousServer() {
  stop();
}

Result<std::unique_ptr<RendezvousServer>> RendezvousServer::start(const std::string& host_port,
                                                                  int world, const std::string& job,
                                                                  const std::string& secret) {
  Result<std::pair<std::string, int>> hp = parse_host_port(host_port, "--rendezvous");
  if (!hp.ok()) return hp.error();
  if (secret.empty()) {
    return invalid_argument("MOHGE_RENDEZVOUS_SECRET",
                            "the rendezvous needs the job's secret (every rank gives the same)");
  }
  auto impl = std::make_unique<Impl>();
  impl->world = world;
  impl->job = job;
  impl->secret = secret;
  boost::system::error_code ec;
  const auto addr =
      asio::ip::make_address(hp.value().first == "localhost" ? "127.0.0.1" : hp.value().first, ec);
  if (ec)
    return invalid_argument("--rendezvous", "cannot parse address \"" + hp.value().first + "\"");
  const tcp::endpoint ep(addr, static_cast<uint16_t>(hp.value().second));
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Error{ErrorCode::kUnavailable,
                 "cannot listen on " + host_port + " for the rendezvous: " + ec.message(),
                 "--rendezvous"};
  }
  impl->port = impl->acceptor.local_endpoint().port();
  impl->accept();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<RendezvousServer>(new RendezvousServer(std::move(impl)));
}

int RendezvousServer::port() const {
  return impl_->port;
}

bool RendezvousServer::wait_done(double timeout_s) {
  std::unique_lock<std::mutex> lock(impl_->done_mu);
  return impl_->done_cv.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                 [&] { return impl_->done; });
}

void RendezvousServer::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  asio::post(impl_->io, [impl = impl_.get()] {
    boost::system::error_code ec;
    impl->acceptor.close(ec);
    impl->io.stop();
  });
  impl_->thread.join();
}

// ---- client ------------------------------------------------------------------------------

namespace {

class TcpRendezvous final : public Rendezvous {
 public:
  TcpRendezvous(int rank, int world) : rank_(rank), world_(world), sock_(io_) {}

  ~TcpRendezvous() override {
    // Close once the queued frames (LEAVE or FAIL among them) are written. Without either,
    // the service reads the disconnect as this rank having exited.
    asio::post(io_, [this] {
      closing_ = true;
      if (out_.empty()) close_socket();
    });
    if (thread_.joinable()) thread_.join();
  }

  Status connect(const std::string& host, int port, const std::string& job,
                 const std::string& secret, double timeout_s) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    boost::system::error_code ec;
    tcp::resolver resolver(io_);
    std::string last_error;
    while (true) {
      auto endpoints = resolver.resolve(host, std::to_string(port), ec);
      if (!ec) {
        asio::connect(sock_, endpoints, ec);
        if (!ec) break;
      }
      last_error = ec.message();
      if (std::chrono::steady_clock::now() > deadline) {
        return Error{ErrorCode::kUnavailable,
                     "rank " + std::to_string(rank_) + " could not reach the rendezvous at " +
                         host + ":" + std::to_string(port) + " within " +
                         std::to_string(static_cast<int>(timeout_s)) + " s: " + last_error,
                     "--rendezvous"};
      }
      sock_.close(ec);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    sock_.set_option(tcp::no_delay(true));
    // The handshake must not hang on a listener that accepts but never answers.
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(std::max(1.0, timeout_s));
    ::setsockopt(sock_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const auto hello = Writer(kHello)
                           .u32(kProtocolVersion)
                           .u32(static_cast<uint32_t>(rank_))
                           .u32(static_cast<uint32_t>(world_))
                           .str(job)
                           .str(secret)
                           .frame();
    asio::write(sock_, asio::buffer(*hello), ec);
    std::vector<char> body;
    if (!ec) read_frame_sync(body, ec);
    if (ec)
      return Error{ErrorCode::kUnavailable, "rendezvous handshake failed: " + ec.message(), ""};
    Reader r(body);
    const uint8_t type = r.type();
    if (type == kAbort)
      return Error{ErrorCode::kFailedPrecondition,
                   "rendezvous refused rank " + std::to_string(rank_) + ": " + r.str(),
                   "--rendezvous"};
    if (type != kWelcome) return Error{ErrorCode::kUnavailable, "unexpected rendezvous reply", ""};
    tv.tv_sec = 0;  // asynchronous reads from here on
    ::setsockopt(sock_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    read_async();
    thread_ = std::thread([this] { io_.run(); });
    return {};
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  AbortSignal& abort_signal() override { return abort_; }

  Result<std::vector<std::string>> exchange(const std::string& blob, double timeout_s) override {
    const uint32_t round = next_round_++;
    post_frame(Writer(kPublish).u32(round).str(blob).frame());
    std::unique_lock<std::mutex> lock(mu_);
    const bool done = cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                   [&] { return results_.contains(round) || abort_.raised(); });
    if (abort_.raised()) return Error{ErrorCode::kUnavailable, abort_.reason(), ""};
    if (!done) {
      return Error{ErrorCode::kUnavailable,
                   "rendezvous: not every rank published within " +
                       std::to_string(static_cast<int>(timeout_s)) + " s",
                   ""};
    }
    std::vector<std::string> all = std::move(results_[round]);
    results_.erase(round);
    return all;
  }

  void leave() override {
    if (left_.exchange(true)) return;
    post_frame(Writer(kLeave).frame());
  }

  void fail(const std::string& reason) override {
    if (left_.exchange(true)) return;
    post_frame(Writer(kFail).str(reason).frame());
  }

 private:
  void read_frame_sync(std::vector<char>& body, boost::system::error_code& ec) {
    char header[4];
    asio::read(sock_, asio::buffer(header, 4), ec);
    if (ec) return;
    const uint32_t n = frame_length(header);
    if (n == 0 || n > kMaxFrame) {
      ec = asio::error::message_size;
      return;
    }
    body.resize(n);
    asio::read(sock_, asio::buffer(body), ec);
  }

  void post_frame(std::shared_ptr<std::string> frame) {
    asio::post(io_, [this, frame] {
      out_.push_back(frame);
      if (out_.size() == 1) write_next();
    });
  }

  void write_next() {
    asio::async_write(sock_, asio::buffer(*out_.front()),
                      [this](const boost::system::error_code& ec, size_t) {
                        if (ec) return close_socket();  // the reader reports the break
                        out_.pop_front();
                        if (!out_.empty()) {
                          write_next();
                        } else if (closing_) {
                          close_socket();
                        }
                      });
  }

  void close_socket() {
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
  }

  void read_async() {
    asio::async_read(sock_, asio::buffer(header_, 4),
                     [this](const boost::system::error_code& ec, size_t) {
                       if (ec) return disconnected();
                       const uint32_t n = frame_length(header_);
                       if (n == 0 || n > kMaxFrame) return disconnected();
                       body_.resize(n);
                       asio::async_read(sock_, asio::buffer(body_),
                                        [this](const boost::system::error_code& ec2, size_t) {
                                          if (ec2) return disconnected();
                                          handle();
                                          read_async();
                                        });
                     });
  }

  void handle() {
    Reader r(body_);
    const uint8_t type = r.type();
    std::lock_guard<std::mutex> lock(mu_);
    if (type == kAll) {
      const uint32_t round = r.u32(), count = r.u32();
      std::vector<std::string> blobs;
      for (uint32_t i = 0; i < count && r.ok(); ++i) blobs.push_back(r.str());
      if (r.ok()) results_[round] = std::move(blobs);
    } else if (type == kAbort) {
      abort_.raise(r.str());
    }
    cv_.notify_all();
  }

  void disconnected() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!left_.load())
      abort_.raise("lost the connection to the rendezvous service (rank 0 exited?)");
    cv_.notify_all();
  }

  int rank_, world_;
  asio::io_context io_;
  tcp::socket sock_;
  std::thread thread_;
  char header_[4];
  std::vector<char> body_;
  std::deque<std::shared_ptr<std::string>> out_;  // io thread only
  bool closing_ = false;                          // io thread only
  std::mutex mu_;                                 // guards results_ (io thread ↔ callers)
  std::condition_variable cv_;
  std::map<uint32_t, std::vector<std::string>> results_;
  uint32_t next_round_ = 0;
  std::atomic<bool> left_{false};
  AbortSignal abort_;
};

}  // namespace

Result<std::unique_ptr<Rendezvous>> rendezvous_connect(const std::string& host_port, int rank,
                                                       int world, const std::string& job,
                                                       const std::string& secret,
                                                       double timeout_s) {
  Result<std::pair<std::string, int>> hp = parse_host_port(host_port, "--rendezvous");
  if (!hp.ok()) return hp.error();
  if (world < 1 || rank < 0 || rank >= world) {
    return invalid_argument("--rank", "must be in [0, " + std::to_string(world) + ")");
  }
  auto r = std::make_unique<TcpRendezvous>(rank, world);
  if (Status s = r->connect(hp.value().first, hp.value().second, job, secret, timeout_s); !s.ok())
    return s.error();
  return std::unique_ptr<Rendezvous>(std::move(r));
}

}  // namespace mohge
