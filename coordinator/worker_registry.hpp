// WorkerRegistry actor: the worker daemons' control connections (api/PROTOCOL.md). It accepts
// connections, checks the hello (protocol version, unique name), tracks heartbeats, declares a
// worker lost when it is silent or disconnected past the deadline, sends orders, and routes
// what workers report to the actor that owns it (job messages → Scheduler, metrics and logs →
// MetricsSink, checkpoint reports → CheckpointRegistry).
#pragma once

#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "api/actor.hpp"
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

  /// The workers as the REST API shows them.
  nlohmann::json to_json() const;  // on the strand only (use ask)

 private:
  struct Entry {
    db::WorkerRow row;
    std::shared_ptr<proto::Connection> conn;  // null while disconnected
    double last_seen = 0;
    nlohmann::json load = nlohmann::json::object();  // last heartbeat's utilisation figures
    nlohmann::json running = nlohmann::json::array();
  };

  void accept();
  void on_message(const std::shared_ptr<proto::Connection>& conn, const nlohmann::json& m);
  void on_hello(const std::shared_ptr<proto::Connection>& conn, const nlohmann::json& m);
  void on_closed(const std::shared_ptr<proto::Connection>& conn, const std::string& why);
  void check_deadlines();
  void declare_lost(Entry& e, const std::string& why);

  Hub& hub_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer timer_;
  std::map<std::string, Entry> workers_;             // by name
  std::map<proto::Connection*, std::string> names_;  // connection → worker name
  bool stopped_ = false;
};

}  // namespace mohge::coord
