#include "coordinator/worker_registry.hpp"

#ifndef MOHGE_VERSION
#define MOHGE_VERSION "0.0.0"
#endif

#include <spdlog/spdlog.h>

#include "api/job_spec.hpp"
#include "coordinator/checkpoint_registry.hpp"
#include "coordinator/metrics_sink.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"

namespace mohge::coord {

namespace asio = boost::asio;
using asio::ip::tcp;
using nlohmann::json;

WorkerRegistry::WorkerRegistry(asio::io_context& io, Hub& hub)
    : Actor(io.get_executor()), hub_(hub), acceptor_(io), timer_(strand_) {}

void WorkerRegistry::load(const std::vector<db::WorkerRow>& rows) {
  for (const db::WorkerRow& r : rows) {
    Entry e;
    e.row = r;
    if (e.row.state == "online") e.row.state = "offline";  // until it reconnects
    workers_[r.name] = std::move(e);
  }
}

Status WorkerRegistry::listen() {
  Result<std::pair<std::string, int>> hp = [&]() -> Result<std::pair<std::string, int>> {
    const std::string& s = hub_.options.control;
    const auto colon = s.rfind(':');
    if (colon == std::string::npos) return invalid_argument("--control", "must be HOST:PORT");
    try {
      return std::make_pair(s.substr(0, colon), std::stoi(s.substr(colon + 1)));
    } catch (const std::exception&) {
      return invalid_argument("--control", "must be HOST:PORT, got \"" + s + "\"");
    }
  }();
  if (!hp.ok()) return hp.error();
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(hp.value().first, ec);
  if (ec) return invalid_argument("--control", "not an IP address: " + hp.value().first);
  const tcp::endpoint ep(addr, static_cast<unsigned short>(hp.value().second));
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Error{ErrorCode::kUnavailable,
                 "cannot listen on " + hub_.options.control + ": " + ec.message(), "--control"};
  }
  post([this] {
    accept();
    check_deadlines();
  });
  return {};
}

void WorkerRegistry::stop() {
  post([this] {
    stopped_ = true;
    boost::system::error_code ec;
    acceptor_.close(ec);
    timer_.cancel();
    for (auto& [name, e] : workers_)
      if (e.conn) e.conn->close("coordinator stopping");
  });
}

void WorkerRegistry::accept() {
  acceptor_.async_accept(
      asio::bind_executor(strand_, [this](boost::system::error_code ec, tcp::socket socket) {
        if (stopped_) return;
        if (!ec) {
          auto conn = std::make_shared<proto::Connection>(std::move(socket));
          std::weak_ptr<proto::Connection> weak = conn;
          conn->start(
              [this, weak](const json& m) {
                post([this, weak, m] {
                  if (auto c = weak.lock()) on_message(c, m);
                });
              },
              [this, weak](const std::string& why) {
                post([this, weak, why] {
                  if (auto c = weak.lock()) on_closed(c, why);
                });
              });
        }
        accept();
      }));
}

void WorkerRegistry::on_message(const std::shared_ptr<proto::Connection>& conn, const json& m) {
  const std::string type = m.value("type", "");
  const auto it = names_.find(conn.get());
  if (it == names_.end()) {
    if (type == proto::kHello) return on_hello(conn, m);
    conn->send({{"type", proto::kRefused}, {"reason", "the first message must be hello"}});
    return conn->close("no hello");
  }
  Entry& e = workers_[it->second];
  e.last_seen = hub_.now();
  if (type == proto::kHeartbeat) {
    e.load = m.value("load", json::object());
    e.running = m.value("running", json::array());
    return;
  }
  // Reports with a "seq" are acknowledged once their effect is stored (metrics and logs: by
  // the MetricsSink after the commit; the others here, once handed to their owner); until
  // then the worker keeps them and sends them again after a reconnect.
  auto ack_now = [&] {
    if (m.contains("seq")) conn->send({{"type", proto::kAck}, {"seqs", json::array({m["seq"]})}});
  };
  if (type == proto::kRvPublish || type == proto::kRankExited) {
    hub_.scheduler->on_job_message(it->second, m);
    return ack_now();
  }
  if (type == proto::kMetrics || type == proto::kLog)
    return hub_.metrics->on_message(it->second, m);
  if (type == proto::kCheckpointWritten) {
    hub_.checkpoints->on_report(m);
    return ack_now();
  }
  spdlog::warn("worker {}: unknown message type \"{}\" ignored", it->second, type);
}

void WorkerRegistry::on_hello(const std::shared_ptr<proto::Connection>& conn, const json& m) {
  auto refuse = [&](const std::string& reason) {
    spdlog::warn("refused worker from {}: {}", conn->peer(), reason);
    conn->send({{"type", proto::kRefused}, {"reason", reason}});
    conn->close(reason);
  };
  const int version = m.value("protocol", 0);
  if (version != proto::kProtocolVersion) {
    return refuse("protocol version " + std::to_string(version) +
                  " is not supported; this coordinator speaks version " +
                  std::to_string(proto::kProtocolVersion) + " (upgrade the worker)");
  }
  const std::string name = m.value("name", "");
  if (name.empty() || name.size() > 128) return refuse("hello.name must be 1–128 characters");
  const std::string backend = m.value("backend", "cpu");
  if (backend != "cpu" && backend != "cuda") return refuse("hello.backend must be cpu or cuda");
  Entry& e = workers_[name];
  if (e.conn && e.conn->open()) {
    return refuse("a worker named \"" + name + "\" is already connected (from " + e.conn->peer() +
                  "); give each worker a unique --name");
  }
  const double now = hub_.now();
  e.conn = conn;
  e.last_seen = now;
  e.running = m.value("running", json::array());
  e.row.name = name;
  e.row.host = m.value("host", "");
  e.row.backend = backend;
  e.row.version = m.value("version", "");
  e.row.devices = m.value("devices", json::array());
  e.row.threads = m.value("threads", 0);
  e.row.state = "online";
  if (e.row.registered_at == 0) e.row.registered_at = now;
  e.row.last_seen = now;
  names_[conn.get()] = name;
  hub_.store->write("register worker", [row = e.row](db::Repository& r) -> Status {
    Result<db::WorkerRow> s = r.upsert_worker(row);
    return s.ok() ? Status() : Status(s.error());
  });
  conn->send({{"type", proto::kWelcome},
              {"protocol", proto::kProtocolVersion},
              {"heartbeat_s", hub_.options.heartbeat_s},
              {"coordinator_version", MOHGE_VERSION}});
  spdlog::info("worker {} online ({} {}, {} threads, from {})", name, e.row.host, backend,
               e.row.threads, conn->peer());
  hub_.scheduler->worker_online(name, backend, e.running);
}

void WorkerRegistry::on_closed(const std::shared_ptr<proto::Connection>& conn,
                               const std::string& why) {
  const auto it = names_.find(conn.get());
  if (it == names_.end()) return;
  const std::string name = it->second;
  names_.erase(it);
  Entry& e = workers_[name];
  if (e.conn != conn) return;  // an older connection of a worker that reconnected
  e.conn.reset();
  e.row.state = "disconnected";
  spdlog::warn("worker {} disconnected ({}); lost unless it reconnects within {} s", name, why,
               hub_.options.heartbeat_timeout_s);
}

void WorkerRegistry::check_deadlines() {
  if (stopped_) return;
  const double now = hub_.now();
  for (auto& [name, e] : workers_) {
    if (e.row.state != "online" && e.row.state != "disconnected") continue;
    if (now - e.last_seen > hub_.options.heartbeat_timeout_s) {
      declare_lost(e, e.conn ? "no heartbeat for " +
                                   std::to_string(static_cast<int>(now - e.last_seen)) + " s"
                             : "disconnected and did not come back within " +
                                   std::to_string(hub_.options.heartbeat_timeout_s) + " s");
    }
  }
  timer_.expires_after(std::chrono::milliseconds(250));
  timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) check_deadlines();
  });
}

void WorkerRegistry::declare_lost(Entry& e, const std::string& why) {
  spdlog::warn("worker {} lost: {}", e.row.name, why);
  if (e.conn) {
    names_.erase(e.conn.get());
    e.conn->close("lost: " + why);
    e.conn.reset();
  }
  e.row.state = "lost";
  hub_.store->write("worker lost", [name = e.row.name, at = e.last_seen](db::Repository& r) {
    return r.set_worker_state(name, "lost", at);
  });
  hub_.scheduler->worker_lost(e.row.name, "worker " + e.row.name + " lost: " + why);
}

void WorkerRegistry::send(const std::string& worker, json message) {
  post([this, worker, message = std::move(message)] {
    const auto it = workers_.find(worker);
    if (it != workers_.end() && it->second.conn) it->second.conn->send(message);
  });
}

json WorkerRegistry::to_json() const {
  json out = json::array();
  for (const auto& [name, e] : workers_) {
    out.push_back({{"name", name},
                   {"host", e.row.host},
                   {"backend", e.row.backend},
                   {"version", e.row.version},
                   {"devices", e.row.devices},
                   {"threads", e.row.threads},
                   {"state", e.row.state},
                   {"last_seen", e.last_seen},
                   {"load", e.load},
                   {"running", e.running}});
  }
  return out;
}

}  // namespace mohge::coord
