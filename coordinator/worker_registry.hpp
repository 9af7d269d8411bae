// WorkerRegistry actor: the worker daemons' control connections (api/PROTOCOL.md). It accepts
// connections, authenticates the hello (protocol version, join secret, unique name), tracks
// heartbeats, declares a worker lost when it is silent or disconnected past the deadline, sends
// orders, and hands every report, decoded and checked (api/messages.hpp), to the Scheduler,
// which accepts it only from the worker holding that job rank in the current attempt.
//
// Before a connection has authenticated it may send one frame of at most kMaxHelloFrameBytes
// within options.hello_timeout_s; at most kMaxUnauthenticated such connections are open at
// once (more are closed at accept). A message that fails its checks is answered with an
// "error" frame and the connection is closed; nothing a peer sends can end the process.
#pragma once

#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
#include "api/messages.hpp"
#include "api/protocol.hpp"
#include "coordinator/hub.hpp"
#include "storage/repository.hpp"

namespace mohge::coord {

class WorkerRegistry : public Actor {
 public:
  WorkerRegistry(boost::asio::io_context& io, Hub& hub);

  /// Listens on options.control; errors name the address.
  Status listen();
  /// Known workers from the database (all offline until they connect). Before start only.
  void load(const std::vector<db::WorkerRow>& rows);
  void stop();

  /// Sends an order to a connected worker (dropped when it is not connected).
  void send(const std::string& worker, nlohmann::json message);
  /// The SHA-256 (hex) of the cluster join secret every hello must present. Before start, or
  /// posted after a rotation (connected workers stay; new hellos need the new secret).
  void set_join_secret_sha256(std::string sha256_hex);

  static constexpr size_t kMaxUnauthenticated = 64;
  /// Silence of every worker for this long makes the coordinator suspect its own link.
  static double isolation_window_s(const CoordinatorOptions& o);

  /// The workers as the REST API shows them.
  nlohmann::json to_json() const;  // on the strand only (use ask)

 private:
  struct Entry {
    db::WorkerRow row;
    std::shared_ptr<proto::Connection> conn;  // null while disconnected
    std::string instance;                     // the connected daemon process's hello.instance
    double last_seen = 0;
    // Its deadline counts from max(last_seen, this): after an isolation of the coordinator,
    // the isolation's end plus its length (TCP's retransmissions back off).
    double silent_since = 0;
    nlohmann::json load = nlohmann::json::object();  // last heartbeat's utilisation figures
    nlohmann::json running = nlohmann::json::array();
  };

  void accept();
  void on_message(const std::shared_ptr<proto::Connection>& conn, const nlohmann::json& m);
  void dispatch(const std::shared_ptr<proto::Connection>& conn, const nlohmann::json& m);
  void on_hello(const std::shared_ptr<proto::Connection>& conn, const nlohmann::json& m);
  /// Answers "error" (naming the refused report's seq, so the worker drops it) and closes.
  void reject(const std::shared_ptr<proto::Connection>& conn, const std::string& who,
              const Error& why, const nlohmann::json& m);
  void on_closed(const std::shared_ptr<proto::Connection>& conn, const std::string& why);
  void check_deadlines();
  void declare_lost(Entry& e, const std::string& why);

  Hub& hub_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer timer_;
  std::map<std::string, Entry> workers_;             // by name
  std::map<proto::Connection*, std::string> names_;  // connection → worker name
  struct Unauthenticated {
    std::shared_ptr<proto::Connection> conn;
    double deadline = 0;  // hub_.now() by which the hello must have arrived
  };
  std::map<proto::Connection*, Unauthenticated> unauthenticated_;
  std::string join_secret_sha256_;
  double isolated_since_ = 0;  // every online worker silent since then (0: not isolated)
  bool stopped_ = false;
};

}  // namespace mohge::coord
