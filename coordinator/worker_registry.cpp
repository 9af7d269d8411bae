#include "coordinator/worker_registry.hpp"

#ifndef MOHGE_VERSION
#define MOHGE_VERSION "0.0.0"
#endif

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include "api/job_spec.hpp"
#include "coordinator/checkpoint_registry.hpp"
#include "coordinator/metrics_sink.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"
#include "storage/sha256.hpp"

namespace mohge::coord {

namespace asio = boost::asio;
using asio::ip::tcp;
using nlohmann::json;

namespace {

// What the REST API shows of a worker's running ranks: only the checked numbers.
json running_json(const std::vector<proto::RunningRank>& running) {
  json out = json::array();
  for (const proto::RunningRank& r : running)
    out.push_back({{"job", r.job},
                   {"attempt", r.attempt},
                   {"rank", r.rank},
                   {"world", r.world},
                   {"step", r.step}});
  return out;
}

}  // namespace

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
  const CoordinatorOptions& o = hub_.options;
  if (o.heartbeat_timeout_s <= isolation_window_s(o) + o.heartbeat_s) {
    spdlog::warn(
        "--heartbeat-timeout {} s is too short to tell this coordinator's own network failing "
        "from its workers failing (it needs more than {:.1f} s): --isolation-grace is off",
        o.heartbeat_timeout_s, isolation_window_s(o) + o.heartbeat_s);
  }
  post([this] {
    accept();
    check_deadlines();
  });
  return {};
}

double WorkerRegistry::isolation_window_s(const CoordinatorOptions& o) {
  return 2 * o.heartbeat_s + 0.5;
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

void WorkerRegistry::set_join_secret_sha256(std::string sha256_hex) {
  post([this, sha = std::move(sha256_hex)] { join_secret_sha256_ = sha; });
}

void WorkerRegistry::accept() {
  acceptor_.async_accept(
      asio::bind_executor(strand_, [this](boost::system::error_code ec, tcp::socket socket) {
        if (stopped_) return;
        if (!ec) {
          auto conn = std::make_shared<proto::Connection>(std::move(socket));
          if (unauthenticated_.size() >= kMaxUnauthenticated) {
            spdlog::warn(
                "control connection from {} closed: {} connections are waiting for "
                "their hello",
                conn->peer(), unauthenticated_.size());
            conn->close("too many unauthenticated connections");
          } else {
            conn->set_max_frame(proto::kMaxHelloFrameBytes);
            unauthenticated_[conn.get()] = {conn, hub_.now() + hub_.options.hello_timeout_s};
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
        }
        accept();
      }));
}

void WorkerRegistry::on_message(const std::shared_ptr<proto::Connection>& conn, const json& m) {
  // The last line of defence: the decoders check every field, but whatever a bug lets
  // through ends this connection, not the coordinator.
  try {
    dispatch(conn, m);
  } catch (const std::exception& e) {
    const auto it = names_.find(conn.get());
    reject(conn, it == names_.end() ? conn->peer() : it->second,
           Error{ErrorCode::kInternal, std::string("the message could not be handled: ") + e.what(),
                 ""},
           m);
  }
}

void WorkerRegistry::reject(const std::shared_ptr<proto::Connection>& conn, const std::string& who,
                            const Error& why, const json& m) {
  spdlog::warn("control connection {} ({}): {}; closing", conn->peer(), who, why.to_string());
  json frame = {{"type", proto::kError}, {"reason", why.to_string()}};
  if (const auto seq = m.find("seq"); seq != m.end() && seq->is_number_integer())
    frame["seq"] = *seq;
  conn->send(frame);
  conn->close(why.to_string());
}

void WorkerRegistry::dispatch(const std::shared_ptr<proto::Connection>& conn, const json& m) {
  const std::string type = m.value("type", "");  // Connection checked it is a string
  const auto it = names_.find(conn.get());
  if (it == names_.end()) {
    if (type == proto::kHello) return on_hello(conn, m);
    unauthenticated_.erase(conn.get());
    conn->send({{"type", proto::kRefused}, {"reason", "the first message must be hello"}});
    return conn->close("no hello");
  }
  const std::string& worker = it->second;
  Entry& e = workers_[worker];
  e.last_seen = hub_.now();
  if (type == proto::kHeartbeat) {
    Result<proto::Heartbeat> hb = proto::decode_heartbeat(m);
    if (!hb.ok()) return reject(conn, worker, hb.error(), m);
    e.load = hb.value().load.to_json();
    e.running = running_json(hb.value().running);
    return;
  }
  if (proto::is_report_type(type)) {
    Result<proto::Report> report = proto::decode_report(m);
    if (!report.ok()) return reject(conn, worker, report.error(), m);
    if (std::holds_alternative<proto::RankExited>(report.value().body)) {
      // The worker's running list (shown by the REST API) drops the rank now, not at the next
      // heartbeat: the job may be placed again before that.
      json still = json::array();
      for (const json& r : e.running)
        if (r.value("job", int64_t{0}) != report.value().job ||
            r.value("attempt", 0) != report.value().attempt ||
            r.value("rank", 0) != report.value().rank)
          still.push_back(r);
      e.running = std::move(still);
    }
    return hub_.scheduler->on_report(worker, std::move(report).value());
  }
  spdlog::warn("worker {}: unknown message type \"{}\" ignored", worker,
               proto::utf8_prefix(type, 64));
}

void WorkerRegistry::on_hello(const std::shared_ptr<proto::Connection>& conn, const json& m) {
  unauthenticated_.erase(conn.get());
  auto refuse = [&](const std::string& reason, bool retry = false) {
    spdlog::warn("refused worker from {}: {}", conn->peer(), reason);
    conn->send({{"type", proto::kRefused}, {"reason", reason}, {"retry", retry}});
    conn->close(reason);
  };
  Result<proto::Hello> decoded = proto::decode_hello(m);
  if (!decoded.ok()) return refuse(decoded.error().to_string());
  const proto::Hello& hello = decoded.value();
  if (hello.protocol != proto::kProtocolVersion) {
    return refuse("protocol version " + std::to_string(hello.protocol) +
                  " is not supported; this coordinator speaks version " +
                  std::to_string(proto::kProtocolVersion) + " (upgrade the worker)");
  }
  // Compared as digests in constant time: the secret never sits in the coordinator's memory.
  const std::string presented = sha256_hex(hello.secret);
  if (hello.secret.empty() || join_secret_sha256_.size() != presented.size() ||
      CRYPTO_memcmp(presented.data(), join_secret_sha256_.data(), presented.size()) != 0) {
    return refuse(
        "hello.secret: the cluster join secret is missing or wrong (give the worker "
        "the coordinator's join.secret by --join-secret-file or MOHGE_JOIN_SECRET)");
  }
  const std::string& name = hello.name;
  Entry& e = workers_[name];
  if (e.conn && e.conn->open()) {
    if (hello.instance.empty() || hello.instance != e.instance) {
      // Another daemon with this name: refused, but told to retry, so that a real daemon whose
      // old connection is not yet noticed as dead comes back instead of exiting.
      return refuse("a worker named \"" + name + "\" is already connected (from " + e.conn->peer() +
                        "); give each worker a unique --name",
                    /*retry=*/true);
    }
    // The same daemon process reconnecting: its old connection is stale.
    names_.erase(e.conn.get());
    e.conn->close("replaced by a new connection of the same worker");
  }
  const double now = hub_.now();
  e.conn = conn;
  e.instance = hello.instance;
  e.last_seen = now;
  e.running = running_json(hello.running);
  e.row.name = name;
  e.row.host = hello.host;
  e.row.backend = hello.backend;
  e.row.version = hello.version;
  e.row.devices = hello.devices;
  e.row.threads = hello.threads;
  e.row.state = "online";
  if (e.row.registered_at == 0) e.row.registered_at = now;
  e.row.last_seen = now;
  names_[conn.get()] = name;
  conn->set_max_frame(proto::kMaxFrameBytes);
  hub_.store->write("register worker", [row = e.row](db::Repository& r) -> Status {
    Result<db::WorkerRow> s = r.upsert_worker(row);
    return s.ok() ? Status() : Status(s.error());
  });
  conn->send({{"type", proto::kWelcome},
              {"protocol", proto::kProtocolVersion},
              {"heartbeat_s", hub_.options.heartbeat_s},
              {"coordinator_version", MOHGE_VERSION}});
  spdlog::info("worker {} online ({} {}, {} threads, from {})", name, e.row.host, e.row.backend,
               e.row.threads, conn->peer());
  hub_.scheduler->worker_online(name, e.row.backend, e.row.host, hello.running);
}

void WorkerRegistry::on_closed(const std::shared_ptr<proto::Connection>& conn,
                               const std::string& why) {
  unauthenticated_.erase(conn.get());
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
  for (auto it = unauthenticated_.begin(); it != unauthenticated_.end();) {
    if (now <= it->second.deadline) {
      ++it;
      continue;
    }
    spdlog::warn("control connection {} closed: no hello within {} s", it->second.conn->peer(),
                 hub_.options.hello_timeout_s);
    it->second.conn->close("no hello in time");
    it = unauthenticated_.erase(it);
  }
  // This host's own network: when none of the online workers (two or more) has been heard
  // for two heartbeats, the likelier cause is the coordinator's link, not all of them failing
  // together. The ranks keep training meanwhile (their data plane does not go through here),
  // so declaring them lost would throw work away: nobody is declared lost until
  // isolation_grace_s after the silence was noticed. When any worker is heard again, the
  // others' deadlines count from that moment. The rule needs the heartbeat timeout to exceed
  // the two heartbeats plus one (heartbeats are staggered): else it is off (listen() says so).
  const double timeout = hub_.options.heartbeat_timeout_s;
  const double recent_s = isolation_window_s(hub_.options);
  int watched = 0;
  bool anyone_recent = false;
  for (auto& [name, e] : workers_) {
    if (e.row.state != "online" && e.row.state != "disconnected") continue;
    ++watched;
    anyone_recent = anyone_recent || (e.conn && now - e.last_seen <= recent_s);
  }
  const bool rule_on = timeout > recent_s + hub_.options.heartbeat_s;
  if (rule_on && watched >= 2 && !anyone_recent) {
    if (isolated_since_ == 0) {
      isolated_since_ = now;
      spdlog::warn(
          "none of the {} online workers has been heard for {:.1f} s: this coordinator's own "
          "network is suspect; no worker is declared lost for {} s",
          watched, recent_s, hub_.options.isolation_grace_s);
    }
  } else if (isolated_since_ != 0) {
    // The others' deadlines count from now, plus as long again as the silence lasted: TCP's
    // retransmissions back off exponentially, so a connection that survived T seconds of
    // silence can take about T more to resume.
    const double silence = now - isolated_since_ + recent_s;
    if (watched > 0) spdlog::warn("workers are heard again after {:.1f} s of isolation", silence);
    isolated_since_ = 0;
    for (auto& [name, e] : workers_) e.silent_since = std::max(e.silent_since, now + silence);
  }
  const bool holding =
      isolated_since_ != 0 && now - isolated_since_ < hub_.options.isolation_grace_s;
  for (auto& [name, e] : workers_) {
    if (holding) break;
    if (e.row.state != "online" && e.row.state != "disconnected") continue;
    const double silent = now - std::max(e.last_seen, e.silent_since);
    if (silent > timeout) {
      declare_lost(
          e, e.conn
                 ? "no heartbeat for " + std::to_string(static_cast<int>(now - e.last_seen)) + " s"
                 : "disconnected and did not come back within " + std::to_string(timeout) + " s");
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
                   {"address", e.conn ? e.conn->peer() : ""},
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
