// The control plane under attack (DESIGN.md §14, the network issue): a real coordinator and
// real worker daemons on localhost, and hostile peers speaking raw frames to the control port.
// Every scenario ends with the coordinator alive and serving /healthz quickly, no other user's
// data touched, and nothing lost from a running job.
#include <utility>  // before Asio: its awaitable.hpp uses std::exchange

#include <boost/asio.hpp>

#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <optional>
#include <set>
#include <sstream>

#include "api/messages.hpp"
#include "api/protocol.hpp"
#include "storage/safetensors.hpp"
#include "tests/service/service_fixture.hpp"

namespace mohge::testing {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

// A peer speaking raw frames to the coordinator's control port.
class RawPeer {
 public:
  explicit RawPeer(int port) : socket_(io_) {
    socket_.connect({asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
  }
  void send_raw(const std::string& bytes) {
    boost::system::error_code ec;
    asio::write(socket_, asio::buffer(bytes), ec);
  }
  void send(const json& m) { send_raw(proto::frame_encode(m)); }
  /// Heartbeats while reading, as a live worker must (after its welcome).
  void keep_alive() { keep_alive_ = true; }
  /// The next frame, or nullopt when the connection closed (or nothing came in `timeout_s`).
  std::optional<json> read(double timeout_s = 10.0) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (true) {
      if (buffer_.size() >= 4) {
        const auto* h = reinterpret_cast<const unsigned char*>(buffer_.data());
        const size_t n = (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | h[3];
        if (buffer_.size() >= 4 + n) {
          json m = json::parse(buffer_.substr(4, n), nullptr, false);
          buffer_.erase(0, 4 + n);
          return m;
        }
      }
      if (closed_ || std::chrono::steady_clock::now() > end) return std::nullopt;
      if (keep_alive_ &&
          std::chrono::steady_clock::now() - last_beat_ > std::chrono::milliseconds(300)) {
        last_beat_ = std::chrono::steady_clock::now();
        send({{"type", "heartbeat"}, {"running", json::array()}});
      }
      socket_.non_blocking(true);
      char chunk[65536];
      boost::system::error_code ec;
      const size_t got = socket_.read_some(asio::buffer(chunk), ec);
      if (ec == asio::error::would_block) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      } else if (ec) {
        closed_ = true;
      } else {
        buffer_.append(chunk, got);
      }
    }
  }
  /// Reads frames until one of `type` arrives (nullopt: closed or timed out first).
  std::optional<json> read_type(const std::string& type, double timeout_s = 10.0) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      std::optional<json> m = read(0.2);
      if (m && m->value("type", "") == type) return m;
      if (!m && closed_) return std::nullopt;
    }
    return std::nullopt;
  }
  /// True once the coordinator has closed the connection (frames before that are skipped).
  bool closed_within(double timeout_s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (!closed_ && std::chrono::steady_clock::now() < end) read(0.1);
    return closed_;
  }

 private:
  asio::io_context io_;
  tcp::socket socket_;
  std::string buffer_;
  bool closed_ = false;
  bool keep_alive_ = false;
  std::chrono::steady_clock::time_point last_beat_;
};

class ControlPlaneAttack : public LocalCluster {
 protected:
  std::string join_secret() {
    std::ifstream in(root_ / "join.secret");
    std::string s;
    std::getline(in, s);
    return s;
  }
  json hello(const std::string& name, const std::string& secret) {
    return {{"type", "hello"},  {"protocol", proto::kProtocolVersion},
            {"name", name},     {"backend", "cpu"},
            {"secret", secret}, {"instance", "attacker-" + name},
            {"threads", 1},     {"running", json::array()}};
  }
  /// A peer that has authenticated with the real join secret as worker `name`.
  std::unique_ptr<RawPeer> authenticated(const std::string& name) {
    auto p = std::make_unique<RawPeer>(control_port_);
    p->send(hello(name, join_secret()));
    const std::optional<json> w = p->read_type("welcome");
    EXPECT_TRUE(w.has_value()) << "no welcome for " << name;
    p->keep_alive();
    return p;
  }
  /// /healthz answers 200 within 50 ms (measured from here, loopback; the best of three, so
  /// one descheduling of this 2-core machine's test process does not count).
  void expect_healthy() {
    double best_ms = 1e9;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const HttpResult h = request("GET", "/api/v1/healthz", "", {}, "");
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_EQ(h.status, 200) << h.text;
      best_ms = std::min(best_ms, ms);
    }
    EXPECT_LT(best_ms, 50.0);
    EXPECT_GT(coordinator_, 0);
    EXPECT_EQ(::waitpid(coordinator_, nullptr, WNOHANG), 0) << "the coordinator exited";
  }
  /// A field of the coordinator's /proc status in KiB ("VmRSS:", "VmHWM:" — the peak).
  int64_t coordinator_status_kib(const std::string& field) {
    std::ifstream in("/proc/" + std::to_string(coordinator_) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(field, 0) == 0) return std::stoll(line.substr(field.size()));
    return -1;
  }
  int64_t coordinator_rss_kib() { return coordinator_status_kib("VmRSS:"); }
};

TEST_F(ControlPlaneAttack, AWrongTypedHelloIsRefusedAndTheCoordinatorLives) {
  start_coordinator();
  // The 40-byte frame that used to end the coordinator: "protocol" as a string.
  RawPeer p(control_port_);
  p.send({{"type", "hello"}, {"protocol", "1"}});
  const std::optional<json> r = p.read_type("refused");
  ASSERT_TRUE(r.has_value());
  EXPECT_NE(r->value("reason", "").find("hello.protocol"), std::string::npos) << r->dump();
  EXPECT_TRUE(p.closed_within(5.0));
  expect_healthy();

  // Every other hello field with a wrong type or out of range, each on its own connection.
  const std::vector<std::pair<std::string, json>> bad = {{"name", 5},
                                                         {"name", "../../etc"},
                                                         {"name", std::string(65, 'a')},
                                                         {"backend", "tpu"},
                                                         {"backend", json::array()},
                                                         {"threads", "many"},
                                                         {"threads", -1},
                                                         {"devices", "all"},
                                                         {"devices", json::array({1, 2})},
                                                         {"running", "x"},
                                                         {"running", json::array({{{"job", "1"}}})},
                                                         {"secret", 123},
                                                         {"host", json::object()},
                                                         {"version", std::string(300, 'v')}};
  for (const auto& [field, value] : bad) {
    RawPeer q(control_port_);
    json h = hello("w-bad", join_secret());
    h[field] = value;
    q.send(h);
    const std::optional<json> refused = q.read_type("refused");
    ASSERT_TRUE(refused.has_value()) << field << " = " << value.dump();
    EXPECT_NE(refused->value("reason", "").find("hello." + field), std::string::npos)
        << refused->dump();
  }
  // Not JSON, not an object, no type, a type that is not a string, an empty frame.
  for (const std::string& raw :
       {std::string("\x00\x00\x00\x05hello", 9), proto::frame_encode(json::array({1, 2})),
        proto::frame_encode({{"protocol", 2}}), proto::frame_encode({{"type", 7}}),
        std::string("\x00\x00\x00\x00", 4)}) {
    RawPeer q(control_port_);
    q.send_raw(raw);
    EXPECT_TRUE(q.closed_within(5.0));
  }
  expect_healthy();
  EXPECT_EQ(get("/api/v1/cluster").body["workers"]["total"], 0);
}

TEST_F(ControlPlaneAttack, WorkersWithoutTheJoinSecretAreRefused) {
  start_coordinator();
  // The secret file exists, beside admin.token, readable only by its owner.
  struct stat st {};
  ASSERT_EQ(::stat((root_ / "join.secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  EXPECT_GE(join_secret().size(), 32u);

  for (const std::string& secret : {std::string(), std::string("guess"), join_secret() + "x"}) {
    RawPeer p(control_port_);
    json h = hello("w1", secret);
    if (secret.empty()) h.erase("secret");
    p.send(h);
    const std::optional<json> r = p.read_type("refused");
    ASSERT_TRUE(r.has_value());
    EXPECT_NE(r->value("reason", "").find("join secret"), std::string::npos) << r->dump();
    EXPECT_TRUE(p.closed_within(5.0));
  }
  // A real daemon given a wrong secret exits, naming the reason.
  ::setenv("MOHGE_JOIN_SECRET", "wrong", 1);
  start_worker("w1");
  ::unsetenv("MOHGE_JOIN_SECRET");
  int status = 0;
  ASSERT_TRUE(wait_for([&] { return ::waitpid(workers_["w1"], &status, WNOHANG) > 0; }, 20.0));
  workers_["w1"] = 0;
  EXPECT_NE(WEXITSTATUS(status), 0);
  std::ifstream log(root_ / "w1.log");
  const std::string text((std::istreambuf_iterator<char>(log)), {});
  EXPECT_NE(text.find("join secret"), std::string::npos) << text;
  EXPECT_EQ(get("/api/v1/cluster").body["workers"]["total"], 0);

  // Rotation (admin only): the old secret stops working for new connections.
  token_ = "";
  EXPECT_EQ(request("POST", "/api/v1/cluster/join-secret").status, 401);
  token_ = admin_token_;
  const std::string old_secret = join_secret();
  const HttpResult rot = request("POST", "/api/v1/cluster/join-secret");
  ASSERT_EQ(rot.status, 200) << rot.text;
  EXPECT_EQ(rot.body["secret"].get<std::string>(), join_secret());
  EXPECT_NE(join_secret(), old_secret);
  RawPeer old(control_port_);
  old.send(hello("w2", old_secret));
  EXPECT_TRUE(old.read_type("refused").has_value());
  start_worker("w2");  // reads the rotated join.secret from the storage root
  wait_workers_online(1);
}

TEST_F(ControlPlaneAttack, AnImpostorCannotTakeALiveWorkersName) {
  start_coordinator();
  start_worker("w1");
  wait_workers_online(1);
  // Without the secret: refused. With it but another instance: refused with "retry", and the
  // real daemon stays connected.
  RawPeer nosecret(control_port_);
  nosecret.send(hello("w1", ""));
  EXPECT_TRUE(nosecret.read_type("refused").has_value());
  RawPeer twin(control_port_);
  twin.send(hello("w1", join_secret()));
  const std::optional<json> r = twin.read_type("refused");
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->value("retry", false));
  EXPECT_NE(r->value("reason", "").find("already connected"), std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(::waitpid(workers_["w1"], nullptr, WNOHANG), 0) << "the real daemon exited";
  const json w = get("/api/v1/workers").body["workers"];
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0]["state"], "online");
  // It still runs jobs.
  const int64_t id = post("/api/v1/jobs", service_job(1, 6, 0, 1)).body["id"];
  ASSERT_TRUE(wait_state(id, "SUCCEEDED", 60.0));
}

TEST_F(ControlPlaneAttack, WrongTypedReportsCloseOnlyTheirConnection) {
  start_coordinator();
  const std::vector<json> bad = {
      {{"type", "heartbeat"}, {"load", {{"cores", "<img src=x onerror=alert(1)>"}}}},
      {{"type", "heartbeat"}, {"running", json::array({{{"job", 1}, {"attempt", "1"}}})}},
      {{"type", "heartbeat"}, {"load", "high"}},
      {{"type", "metrics"}, {"seq", 1}, {"job", "1"}, {"attempt", 1}, {"rank", 0}},
      {{"type", "metrics"},
       {"seq", 2},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"records", json::array({{{"step", 1}, {"loss", "<script>"}}})}},
      {{"type", "metrics"},
       {"seq", 3},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"records", json::array({{{"loss", 1.0}}})}},
      {{"type", "log"}, {"seq", 4}, {"job", 1}, {"attempt", 1}, {"rank", 0}, {"lines", "x"}},
      {{"type", "log"},
       {"seq", 5},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"lines", json::array({1})}},
      {{"type", "rv_publish"}, {"seq", 6}, {"job", 1}, {"attempt", 1}, {"rank", -1}},
      {{"type", "rv_publish"},
       {"seq", 7},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"round", 1 << 30},
       {"blob", "x"}},
      {{"type", "checkpoint_written"},
       {"seq", 8},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"world", 1},
       {"step", 1},
       {"path", "/etc"},
       {"files", json::array()}},
      {{"type", "checkpoint_written"},
       {"seq", 9},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"world", 1},
       {"step", 1},
       {"path", "runs/job-1/../../.."},
       {"files", json::array()}},
      {{"type", "checkpoint_written"},
       {"seq", 10},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"world", 1},
       {"step", 1},
       {"path", "runs/job-1/checkpoints/step-1"},
       {"files", json::array({{{"name", "../x"}, {"bytes", 1}, {"sha256", "00"}}})}},
      {{"type", "rank_exited"},
       {"seq", 11},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"ok", "yes"}},
      {{"type", "rank_exited"},
       {"seq", 12},
       {"job", 1},
       {"attempt", 1},
       {"rank", 0},
       {"error", "boom"}},
  };
  for (const json& m : bad) {
    std::unique_ptr<RawPeer> p = authenticated("mallory");
    p->send(m);
    const std::optional<json> e = p->read_type("error");
    ASSERT_TRUE(e.has_value()) << m.dump();
    if (m.contains("seq")) {
      EXPECT_EQ((*e)["seq"], m["seq"]) << e->dump();
    }
    EXPECT_TRUE(p->closed_within(5.0)) << m.dump();
  }
  expect_healthy();
  // Nothing hostile reached the API's view of the worker.
  const HttpResult w = get("/api/v1/workers");
  EXPECT_EQ(w.text.find("onerror"), std::string::npos) << w.text;
}

// A worker that authenticated, and even holds a job's rank, can write only what that rank may:
// reports for other jobs are dropped and counted, a checkpoint folder outside its job's run
// folder is never registered (nor deleted), and over-long log lines are cut.
TEST_F(ControlPlaneAttack, ReportsAreAcceptedOnlyFromTheRankHolder) {
  start_coordinator();
  start_worker("w1");
  wait_workers_online(1);
  // Job A: a real job on the real worker, long enough to be running while we attack.
  const int64_t a = post("/api/v1/jobs", service_job(1, 400, 100, 2)).body["id"];
  ASSERT_TRUE(wait_state(a, "RUNNING", 60.0));
  ASSERT_TRUE(wait_for([&] { return job(a)["progress"]["step"].get<int64_t>() >= 5; }, 60.0));

  // Mallory authenticates (she has the secret) and receives job B's only rank.
  std::unique_ptr<RawPeer> m = authenticated("mallory");
  const int64_t b = post("/api/v1/jobs", service_job(1, 6, 0, 1)).body["id"];
  const std::optional<json> launch = m->read_type("launch", 20.0);
  ASSERT_TRUE(launch.has_value());
  ASSERT_EQ((*launch)["job"], b);
  const int attempt = (*launch)["attempt"];

  // Reports about job A, which she does not run: dropped (acknowledged, so not resent).
  const json forged_loss = {
      {"type", "metrics"}, {"seq", 100},
      {"job", a},          {"attempt", 1},
      {"rank", 0},         {"records", json::array({{{"step", 3}, {"loss", 12345.0}}})}};
  m->send(forged_loss);
  m->send({{"type", "log"},
           {"seq", 101},
           {"job", a},
           {"attempt", 1},
           {"rank", 0},
           {"lines", json::array({"forged line"})}});
  m->send({{"type", "rank_exited"},
           {"seq", 102},
           {"job", a},
           {"attempt", 1},
           {"rank", 0},
           {"ok", false},
           {"error", {{"message", "forged failure"}}}});
  // A checkpoint of her own job B whose folder is job A's: never registered.
  const std::string a_dir = job(a)["run_dir"];
  m->send({{"type", "checkpoint_written"},
           {"seq", 103},
           {"job", b},
           {"attempt", attempt},
           {"rank", 0},
           {"world", 1},
           {"step", 1},
           {"keep", 1},
           {"path", a_dir + "/checkpoints/step-00000100"},
           {"files", json::array({{{"name", "model.safetensors"},
                                   {"bytes", 0},
                                   {"sha256", std::string(64, 'a')}}})}});
  // Her own job's log, with a 1 MiB line.
  m->send({{"type", "log"},
           {"seq", 104},
           {"job", b},
           {"attempt", attempt},
           {"rank", 0},
           {"lines", json::array({std::string(1 << 20, 'L')})}});
  std::set<int64_t> acked;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (acked.size() < 5 && std::chrono::steady_clock::now() < end) {
    if (std::optional<json> f = m->read(0.2); f && f->value("type", "") == "ack")
      for (const json& s : (*f)["seqs"]) acked.insert(s.get<int64_t>());
  }
  EXPECT_EQ(acked, (std::set<int64_t>{100, 101, 102, 103, 104}));
  m->send({{"type", "rank_exited"},
           {"seq", 105},
           {"job", b},
           {"attempt", attempt},
           {"rank", 0},
           {"ok", true},
           {"stopped", false},
           {"step", 6}});
  ASSERT_TRUE(wait_state(b, "SUCCEEDED", 30.0));
  EXPECT_TRUE(
      get("/api/v1/jobs/" + std::to_string(b) + "/checkpoints").body["checkpoints"].empty());
  const json logs_b = get("/api/v1/jobs/" + std::to_string(b) + "/logs").body["logs"];
  ASSERT_EQ(logs_b.size(), 1u);
  EXPECT_EQ(logs_b[0]["line"].get<std::string>().size(), proto::kMaxLogLineBytes);

  // Job A finishes untouched: every step's loss once, none forged, no forged log or failure.
  ASSERT_TRUE(wait_state(a, "SUCCEEDED", 240.0));
  const json loss =
      get("/api/v1/jobs/" + std::to_string(a) + "/metrics?names=loss&max_points=100000")
          .body["metrics"]["loss"];
  ASSERT_EQ(loss["steps"].size(), 400u);
  for (const json& v : loss["values"]) EXPECT_LT(v.get<double>(), 100.0);
  const std::string logs_a = get("/api/v1/jobs/" + std::to_string(a) + "/logs?limit=10000").text;
  EXPECT_EQ(logs_a.find("forged"), std::string::npos);
  EXPECT_GE(get("/api/v1/cluster").body["rejected_reports"].get<int64_t>(), 4);
  // Its checkpoints are its own and its folder is intact.
  const json cks = get("/api/v1/jobs/" + std::to_string(a) + "/checkpoints").body["checkpoints"];
  ASSERT_EQ(cks.size(), 2u);
  EXPECT_EQ(cks.back()["step"], 400);
  EXPECT_TRUE(fs::exists(root_ / a_dir / "checkpoints/step-00000400"));
  expect_healthy();
}

TEST_F(ControlPlaneAttack, ConnectionsThatDoNotAuthenticateCostNothingAndAreClosed) {
  start_coordinator();
  start_worker("w1");
  wait_workers_online(1);
  const int64_t rss_before = coordinator_rss_kib();
  // 200 connections, each announcing a 64 MiB frame and sending nothing more.
  std::vector<std::unique_ptr<RawPeer>> peers;
  const std::string claim("\x04\x00\x00\x00", 4);
  for (int i = 0; i < 200; ++i) {
    peers.push_back(std::make_unique<RawPeer>(control_port_));
    peers.back()->send_raw(claim);
  }
  expect_healthy();
  // Before authentication a frame may be 64 KiB at most: every one is closed.
  for (auto& p : peers) EXPECT_TRUE(p->closed_within(5.0));
  const int64_t rss_after = coordinator_rss_kib();
  EXPECT_LT(rss_after - rss_before, 64 * 1024) << rss_before << " KiB → " << rss_after << " KiB";

  // Silent connections are closed at the hello deadline (5 s), and past 64 waiting ones the
  // rest are closed at once.
  peers.clear();
  for (int i = 0; i < 80; ++i) peers.push_back(std::make_unique<RawPeer>(control_port_));
  int closed_early = 0;
  for (auto& p : peers) closed_early += p->closed_within(0.05) ? 1 : 0;
  EXPECT_GE(closed_early, 16);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& p : peers) EXPECT_TRUE(p->closed_within(10.0));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 8.0);
  expect_healthy();
  // The real worker was never disturbed.
  EXPECT_EQ(get("/api/v1/cluster").body["workers"]["online"], 1);
}

// A client speaking raw HTTP/1.1 to the coordinator's REST port.
class RawHttp {
 public:
  explicit RawHttp(int port) : socket_(io_) {
    socket_.connect({asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
    timeval tv{0, 100 * 1000};
    ::setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  bool send(const std::string& bytes) {
    boost::system::error_code ec;
    asio::write(socket_, asio::buffer(bytes), ec);
    return !ec;
  }
  /// What arrived until `marker` (inclusive) was seen, the peer closed, or `timeout_s` passed.
  std::string read_until(const std::string& marker, double timeout_s = 10.0) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (buffer_.find(marker) == std::string::npos && !closed_ &&
           std::chrono::steady_clock::now() < end)
      fill();
    const size_t at = buffer_.find(marker);
    const size_t take = at == std::string::npos ? buffer_.size() : at + marker.size();
    std::string out = buffer_.substr(0, take);
    buffer_.erase(0, take);
    return out;
  }
  /// One whole response's head (its body, of Content-Length bytes, is read and dropped).
  std::string read_response(double timeout_s = 10.0) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    const std::string head = read_until("\r\n\r\n", timeout_s);
    std::string lower = head;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const size_t at = lower.find("content-length:");
    size_t left = at == std::string::npos ? 0 : std::stoul(head.substr(at + 15));
    while (buffer_.size() < left && !closed_ && std::chrono::steady_clock::now() < end) fill();
    buffer_.erase(0, std::min(left, buffer_.size()));
    return head;
  }
  /// True once the coordinator has closed the connection within `timeout_s`.
  bool closed_within(double timeout_s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (!closed_ && std::chrono::steady_clock::now() < end) fill();
    return closed_;
  }

 private:
  // Reads what arrives within 100 ms.
  void fill() {
    char chunk[4096];
    const ssize_t n = ::recv(socket_.native_handle(), chunk, sizeof chunk, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) closed_ = true;
    if (n > 0) buffer_.append(chunk, static_cast<size_t>(n));
  }

  asio::io_context io_;
  tcp::socket socket_;
  std::string buffer_;
  bool closed_ = false;
};

// The HTTP edge answers what it cannot serve and bounds what a peer can make it hold: malformed
// requests (an endless chunk-size line included) get 400 and oversized headers 431, a path
// that decodes to bytes that are not UTF-8 gets its 404, `Expect: 100-continue` is honoured,
// pipelined requests are answered in order, and a peer holding 600 silent connections (past the
// limit of 512) locks nobody out and cannot exhaust the coordinator's descriptors: its oldest
// connections are closed to make room.
TEST_F(ControlPlaneAttack, TheHttpEdgeBoundsWhatAPeerCanHold) {
  start_coordinator();
  {
    RawHttp c(http_port_);
    c.send("NOT HTTP AT ALL\r\n\r\n");
    const std::string a = c.read_until("\r\n\r\n");
    EXPECT_EQ(a.rfind("HTTP/1.1 400", 0), 0u) << a;
    EXPECT_TRUE(c.closed_within(5.0));
  }
  {
    RawHttp c(http_port_);
    c.send("GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(32 * 1024, 'a') +
           "\r\n\r\n");
    const std::string a = c.read_until("\r\n\r\n");
    EXPECT_EQ(a.rfind("HTTP/1.1 431", 0), 0u) << a.substr(0, 200);
  }
  {
    RawHttp c(http_port_);
    const std::string body = R"({"name": "alice"})";
    c.send("POST /api/v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token_ +
           "\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n");
    const std::string cont = c.read_until("\r\n\r\n");
    EXPECT_EQ(cont.rfind("HTTP/1.1 100", 0), 0u) << cont;
    c.send(body);
    const std::string a = c.read_until("\r\n\r\n");
    EXPECT_EQ(a.rfind("HTTP/1.1 201", 0), 0u) << a;
  }
  {
    RawHttp c(http_port_);
    const std::string get = "GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    const std::string missing =
        "GET /api/v1/jobs/77 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token_ + "\r\n\r\n";
    c.send(get + missing + get);
    EXPECT_EQ(c.read_response().rfind("HTTP/1.1 200", 0), 0u);
    EXPECT_EQ(c.read_response().rfind("HTTP/1.1 404", 0), 0u);
    EXPECT_EQ(c.read_response().rfind("HTTP/1.1 200", 0), 0u);
  }
  {
    // A chunk-size line that never ends: the read buffer is bounded, so 400, not growth.
    RawHttp c(http_port_);
    c.send("POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;" +
           std::string(200 * 1024, 'a'));
    const std::string a = c.read_until("\r\n\r\n");
    EXPECT_EQ(a.rfind("HTTP/1.1 400", 0), 0u) << a.substr(0, 200);
    EXPECT_TRUE(c.closed_within(5.0));
  }
  {
    // Bytes that are not UTF-8 in a path are echoed safely: 404, not 500.
    RawHttp c(http_port_);
    c.send("GET /api/v1/jobs/%FF%FE HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token_ +
           "\r\n\r\n");
    const std::string a = c.read_response();
    EXPECT_EQ(a.rfind("HTTP/1.1 404", 0), 0u) << a;
  }
  // 600 connections that start a request and go silent.
  std::vector<std::unique_ptr<RawHttp>> silent;
  for (int i = 0; i < 600; ++i) {
    silent.push_back(std::make_unique<RawHttp>(http_port_));
    silent.back()->send("GET /api/v1/healthz HTTP/1.1\r\n");
  }
  expect_healthy();
  int closed = 0;
  for (int i = 0; i < 100; ++i) closed += silent[i]->closed_within(0.2) ? 1 : 0;
  EXPECT_GE(closed, 88) << "the oldest silent connections were not closed";
  size_t fds = 0;
  for ([[maybe_unused]] const auto& e :
       fs::directory_iterator("/proc/" + std::to_string(coordinator_) + "/fd"))
    ++fds;
  EXPECT_LT(fds, 600u) << "the coordinator holds " << fds << " descriptors";
  EXPECT_EQ(get("/api/v1/jobs").status, 200);
}

// A 100 MiB body sent in chunks, without Content-Length: the coordinator answers 413 once the
// limit (1 MiB) is passed and never holds more than that (before, the whole body was buffered:
// the coordinator's peak memory grew by the body's size). /healthz stays quick meanwhile, and
// the next request on a fresh connection is served.
TEST_F(ControlPlaneAttack, AChunkedHundredMiBBodyIsCutOffAtTheLimit) {
  start_coordinator();
  const int64_t peak_before = coordinator_status_kib("VmHWM:");
  asio::io_context io;
  tcp::socket s(io);
  s.connect({asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(http_port_)});
  const int fd = s.native_handle();
  const std::string head =
      "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + token_ +
      "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  const size_t mib = size_t{1} << 20;
  std::ostringstream size_hex;
  size_hex << std::hex << mib;
  const std::string chunk = size_hex.str() + "\r\n" + std::string(mib, ' ') + "\r\n";
  std::atomic<int> sent_mib{0};
  std::atomic<bool> send_failed{false};
  std::thread sender([&] {
    auto send_all = [&](const std::string& bytes) {
      size_t off = 0;
      while (off < bytes.size()) {
        const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += static_cast<size_t>(n);
      }
      return true;
    };
    if (!send_all(head)) return send_failed.store(true);
    for (int i = 0; i < 100; ++i) {
      if (!send_all(chunk)) return send_failed.store(true);
      ++sent_mib;
    }
    send_all("0\r\n\r\n");
  });
  // The answer, read while the body is still going out.
  std::string answer;
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (answer.find("\r\n\r\n") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  expect_healthy();
  sender.join();
  EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer.substr(0, 200);
  // The connection was closed well before the body's end (the server stopped reading).
  EXPECT_TRUE(send_failed.load()) << "all " << sent_mib.load() << " MiB were accepted";
  const int64_t peak_after = coordinator_status_kib("VmHWM:");
  EXPECT_LT(peak_after - peak_before, 32 * 1024)
      << peak_before << " KiB → " << peak_after << " KiB";
  // A body over the limit with a Content-Length: refused from the header alone.
  const HttpResult big = request("POST", "/api/v1/jobs", std::string(2 * mib, ' '),
                                 {{"Content-Type", "application/json"}});
  EXPECT_EQ(big.status, 413) << big.text;
  EXPECT_EQ(big.body["error"]["code"], "payload_too_large") << big.text;
  expect_healthy();
}

// Two first downloads of a checkpoint at once: the consolidation runs once, off the REST
// threads, and both get the same complete file (before, both wrote one temporary file); the
// API answers /healthz quickly meanwhile.
TEST_F(ControlPlaneAttack, ParallelFirstDownloadsGetTheSameCompleteFile) {
  start_coordinator();
  start_worker("w1");
  start_worker("w2");
  wait_workers_online(2);
  json spec = service_job(2, 8, 8, 1);
  spec["model"]["d_model"] = 128;  // a checkpoint of a few MiB, so consolidation takes a while
  spec["model"]["heads"] = 4;
  spec["model"]["ffn"]["widths"] = {256, 320, 384, 448};
  const int64_t id = post("/api/v1/jobs", spec).body["id"];
  ASSERT_TRUE(wait_state(id, "SUCCEEDED", 120.0));
  json cks;
  ASSERT_TRUE(wait_for(
      [&] {
        cks = get("/api/v1/jobs/" + std::to_string(id) + "/checkpoints").body["checkpoints"];
        return cks.size() == 1u;
      },
      10.0));
  const int64_t ck = cks[0]["id"];
  std::vector<std::vector<unsigned char>> bodies(4);
  std::vector<int> statuses(4, 0);
  std::vector<std::thread> downloads;
  for (size_t i = 0; i < bodies.size(); ++i) {
    downloads.emplace_back([&, i] {
      web::http::client::http_client client(url());
      web::http::http_request req(web::http::methods::GET);
      req.set_request_uri("/api/v1/checkpoints/" + std::to_string(ck) + "/download");
      req.headers().add("Authorization", "Bearer " + token_);
      web::http::http_response resp = client.request(req).get();
      statuses[i] = resp.status_code();
      bodies[i] = resp.extract_vector().get();
    });
  }
  expect_healthy();
  for (std::thread& t : downloads) t.join();
  for (size_t i = 0; i < bodies.size(); ++i) {
    EXPECT_EQ(statuses[i], 200);
    EXPECT_EQ(bodies[i], bodies[0]) << "download " << i << " differs";
  }
  const fs::path file = root_ / "downloaded.safetensors";
  std::ofstream(file, std::ios::binary)
      .write(reinterpret_cast<const char*>(bodies[0].data()),
             static_cast<std::streamsize>(bodies[0].size()));
  Result<SafetensorsFile> st = SafetensorsFile::open(file);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  std::ifstream index(root_ / cks[0]["path"].get<std::string>() / "model.safetensors.index.json");
  const json weight_map = json::parse(index)["weight_map"];
  EXPECT_EQ(st.value().entries().size(), weight_map.size());
  for (const auto& [name, shard] : weight_map.items())
    EXPECT_NE(st.value().find(name), nullptr) << name;
  // No temporary file is left in the downloads folder.
  for (const auto& entry : fs::directory_iterator(root_ / "downloads"))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

}  // namespace
}  // namespace mohge::testing
