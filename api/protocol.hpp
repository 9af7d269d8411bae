// The control plane between the coordinator and its worker daemons (DESIGN.md §2), described
// in api/PROTOCOL.md: TCP, frames of [u32 big-endian length][JSON object], every object with a
// "type". The worker speaks first (hello, carrying kProtocolVersion); a coordinator of another
// version answers "refused" with the reason and closes.
//
// Connection owns one socket: reads run as an async loop delivering each message to a handler;
// writes are queued and sent in order. All of it runs on the connection's strand; send() and
// close() may be called from any thread.
#pragma once

#include <utility>  // before Asio: its awaitable.hpp uses std::exchange

#include <boost/asio.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mohge::proto {

/// Bumped on any incompatible change of a message below. 2: hello carries the join secret and
/// the daemon's instance id; metrics carry their rank; the coordinator may answer "error".
constexpr int kProtocolVersion = 2;
/// Frames above this are a protocol error (the connection is closed).
constexpr uint32_t kMaxFrameBytes = 64u << 20;
/// Before a worker has authenticated, frames above this close the connection.
constexpr uint32_t kMaxHelloFrameBytes = 64u << 10;

// Message types (the "type" field). Direction and fields are in api/PROTOCOL.md.
inline constexpr const char* kHello = "hello";                           // worker → coordinator
inline constexpr const char* kWelcome = "welcome";                       // coordinator → worker
inline constexpr const char* kRefused = "refused";                       // coordinator → worker
inline constexpr const char* kHeartbeat = "heartbeat";                   // worker → coordinator
inline constexpr const char* kLaunch = "launch";                         // coordinator → worker
inline constexpr const char* kCancel = "cancel";                         // coordinator → worker
inline constexpr const char* kCheckpoint = "checkpoint";                 // coordinator → worker
inline constexpr const char* kRvPublish = "rv_publish";                  // worker → coordinator
inline constexpr const char* kRvAll = "rv_all";                          // coordinator → worker
inline constexpr const char* kAbort = "abort";                           // coordinator → worker
inline constexpr const char* kMetrics = "metrics";                       // worker → coordinator
inline constexpr const char* kLog = "log";                               // worker → coordinator
inline constexpr const char* kCheckpointWritten = "checkpoint_written";  // worker → coordinator
inline constexpr const char* kRankExited = "rank_exited";                // worker → coordinator
inline constexpr const char* kAck = "ack";                               // coordinator → worker
inline constexpr const char* kError = "error";                           // coordinator → worker

/// [u32 big-endian length][body].
std::string frame_encode(const nlohmann::json& message);

/// Base64 (RFC 4648) for binary blobs inside JSON (UCX worker addresses).
std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text);  // invalid characters are skipped

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using MessageHandler = std::function<void(const nlohmann::json&)>;
  using CloseHandler = std::function<void(const std::string& why)>;

  explicit Connection(boost::asio::ip::tcp::socket socket);
  ~Connection();

  /// Starts the read loop. `on_message` runs on the connection's strand for every message in
  /// order; `on_close` runs once when the connection ends (peer closed, error, bad frame, or
  /// close()). An exception escaping `on_message` closes the connection (logged with the
  /// peer); it never reaches the io thread. Call once.
  void start(MessageHandler on_message, CloseHandler on_close);
  /// Queues a message; dropped silently once the connection is closed.
  void send(const nlohmann::json& message);
  /// Closes after the queued messages are written (bounded by the socket's send buffer).
  void close(const std::string& why = "closed");
  bool open() const { return open_.load(); }
  /// Frames longer than this close the connection (default kMaxFrameBytes). A frame body is
  /// allocated as its bytes arrive, so a length claim alone costs nothing.
  void set_max_frame(uint32_t bytes) { max_frame_.store(bytes); }
  std::string peer() const { return peer_; }

 private:
  void read_header();
  void read_body(uint32_t n);
  void read_more(uint32_t n);
  void write_next();
  void shutdown(const std::string& why);

  boost::asio::ip::tcp::socket socket_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  std::string peer_;
  std::atomic<bool> open_{true};
  std::atomic<uint32_t> max_frame_{kMaxFrameBytes};
  unsigned char header_[4] = {};
  std::vector<char> body_;
  std::deque<std::string> out_;  // strand only
  bool closing_ = false;         // strand only: close after the queue drains
  MessageHandler on_message_;
  CloseHandler on_close_;
};

}  // namespace mohge::proto
