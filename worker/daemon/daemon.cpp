#include "worker/daemon/daemon.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "api/job_spec.hpp"
#include "api/messages.hpp"
#include "api/protocol.hpp"
#include "api/random_id.hpp"
#include "kernels/backend.hpp"
#include "storage/sha256.hpp"
#include "storage/sharded.hpp"
#include "worker/comm/rendezvous.hpp"
#include "worker/daemon/gpu_monitor.hpp"
#include "worker/dist/rank_runner.hpp"

#ifndef MOHGE_VERSION
#define MOHGE_VERSION "0.0.0"
#endif

namespace mohge {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using asio::ip::tcp;
using nlohmann::json;

namespace {

using Send = std::function<void(json)>;

// The job's data-plane rendezvous through the coordinator: publish → rv_publish; the
// coordinator's rv_all delivers every rank's blob. Aborts come from the coordinator.
class ControlRendezvous : public Rendezvous {
 public:
  ControlRendezvous(int64_t job, int attempt, int rank, int world, Send send)
      : job_(job), attempt_(attempt), rank_(rank), world_(world), send_(std::move(send)) {}
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  Result<std::vector<std::string>> exchange(const std::string& blob, double timeout_s) override {
    int round;
    {
      std::lock_guard<std::mutex> lock(mu_);
      round = next_round_++;
    }
    send_({{"type", proto::kRvPublish},
           {"job", job_},
           {"attempt", attempt_},
           {"rank", rank_},
           {"round", round},
           {"blob", proto::base64_encode(blob)}});
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                 [&] { return results_.count(round) > 0 || abort_.raised(); });
    if (results_.count(round)) return results_[round];
    if (abort_.raised()) return Error{ErrorCode::kFailedPrecondition, abort_.reason(), ""};
    return Error{ErrorCode::kUnavailable,
                 "rendezvous round " + std::to_string(round) + " of job " + std::to_string(job_) +
                     ": not every rank joined within " +
                     std::to_string(static_cast<int>(timeout_s)) + " s",
                 ""};
  }
  void deliver(int round, const std::vector<std::string>& blobs) {
    std::vector<std::string> out;
    for (const std::string& b : blobs) out.push_back(proto::base64_decode(b));
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(out.size()) == world_) results_[round] = std::move(out);
    cv_.notify_all();
  }
  void abort(const std::string& reason) {
    abort_.raise(reason);
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  AbortSignal& abort_signal() override { return abort_; }
  void leave() override {}
  void fail(const std::string&) override {}  // the rank_exited report carries the reason

 private:
  int64_t job_;
  int attempt_, rank_, world_;
  Send send_;
  std::mutex mu_;  // guards next_round_ and results_ (rank thread ↔ io thread)
  std::condition_variable cv_;
  int next_round_ = 0;
  std::map<int, std::vector<std::string>> results_;
  AbortSignal abort_;
};

struct RankTask {
  int64_t job = 0;
  int attempt = 0, rank = 0, world = 0;
  std::shared_ptr<ControlRendezvous> rv;
  std::atomic<bool> stop_request{false};
  std::atomic<int64_t> step{0};
  std::atomic<bool> done{false};
  std::vector<int> unreachable;  // rank thread only: set by rank_run on a network failure
  std::thread thread;
};

// Log lines written on a rank's thread are forwarded to the coordinator as the job's logs.
struct LogContext {
  int64_t job = 0;
  int attempt = 0, rank = 0;
  Send send;
};
thread_local LogContext* tl_log = nullptr;

class ForwardSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (tl_log == nullptr) return;
    const std::string line(msg.payload.data(), msg.payload.size());
    tl_log->send({{"type", proto::kLog},
                  {"job", tl_log->job},
                  {"attempt", tl_log->attempt},
                  {"rank", tl_log->rank},
                  {"lines", json::array({line})}});
  }
  void flush_() override {}
};

json host_load() {
  json load = json::object();
  std::ifstream la("/proc/loadavg");
  double l1 = 0;
  if (la >> l1) load["load1"] = l1;
  std::ifstream statm("/proc/self/statm");
  long pages = 0, rss = 0;
  if (statm >> pages >> rss) load["rss_bytes"] = rss * sysconf(_SC_PAGESIZE);
  load["cores"] = std::thread::hardware_concurrency();
  return load;
}

}  // namespace

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

void daemon_log_forwarding_install() {
  static std::once_flag sink_installed;
  std::call_once(sink_installed, [] {
    spdlog::default_logger()->sinks().push_back(std::make_shared<ForwardSink>());
  });
}

Result<std::vector<std::string>> split_devices(const std::string& devices) {
  if (devices == "cpu") return std::vector<std::string>{"cpu"};
  if (devices == "cuda") return std::vector<std::string>{"cuda:0"};
  auto bad = [&](const std::string& why) {
    return invalid_argument("--devices",
                            why + " (got \"" + devices + "\"; cpu, cuda:N, cuda:N,M or cuda:all)");
  };
  if (devices.rfind("cuda:", 0) != 0) return bad("must be cpu or start with cuda:");
  const std::string list = devices.substr(5);
  std::vector<std::string> out;
  if (list == "all") {
    const size_t visible = cuda_devices().size();
    if (visible == 0) return bad("no CUDA GPU is visible");
    for (size_t i = 0; i < visible; ++i) out.push_back("cuda:" + std::to_string(i));
    return out;
  }
  std::set<int> seen;
  size_t begin = 0;
  while (begin <= list.size()) {
    const size_t end = std::min(list.find(',', begin), list.size());
    const std::string n = list.substr(begin, end - begin);
    if (n.empty() || n.size() > 4 || n.find_first_not_of("0123456789") != std::string::npos)
      return bad("each GPU is a number");
    if (!seen.insert(std::stoi(n)).second) return bad("GPU " + n + " is listed twice");
    out.push_back("cuda:" + std::to_string(std::stoi(n)));
    begin = end + 1;
  }
  return out;
}

Result<std::string> join_secret_load(const fs::path& file) {
  if (const char* env = std::getenv("MOHGE_JOIN_SECRET"); env != nullptr && *env != 0)
    return std::string(env);
  std::ifstream in(file);
  std::string secret;
  if (!in || !std::getline(in, secret) || secret.empty()) {
    return invalid_argument("--join-secret-file",
                            "cannot read the cluster join secret from " + file.string() +
                                " (the coordinator writes join.secret in its storage root; or "
                                "set MOHGE_JOIN_SECRET)");
  }
  while (!secret.empty() && (secret.back() == '\r' || secret.back() == ' ')) secret.pop_back();
  return secret;
}

struct WorkerDaemon::Impl {
  DaemonOptions options;
  // A random id of this daemon process: the coordinator lets a reconnect of the same process
  // replace its stale connection, and refuses a second daemon using the same name.
  std::string instance = random_hex();
  asio::io_context io;
  asio::steady_timer heartbeat{io};
  asio::steady_timer reconnect{io};
  std::shared_ptr<proto::Connection> conn;  // io thread only
  bool welcomed = false;                    // io thread only
  double backoff_s = 0.2;
  int64_t reconnects = 0;  // io thread only: dial attempts since the last welcome
  std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> jitter{0.0, 1.0};
  std::map<int64_t, json> unacked;  // io thread only: reports by seq until acknowledged
  int64_t last_seq = 0;
  std::map<std::pair<int64_t, int>, std::shared_ptr<RankTask>> tasks;  // io thread only
  std::optional<Error> refused;
  bool stopping = false;
  double heartbeat_s = 1.0;
  int gpu = -1;                         // --devices cuda:N: N; cpu: -1
  std::unique_ptr<GpuMonitor> monitor;  // the GPU's utilisation and memory (NVML), if any

  // From any thread: queue a report for the coordinator.
  // From any thread: a report for the coordinator. It is numbered and kept until the
  // coordinator acknowledges it (after storing its effect), and sent again after a reconnect,
  // so a coordinator killed mid-job loses no report (duplicates are ignored there).
  void report(json m) {
    asio::post(io, [this, m = std::move(m)]() mutable {
      const int64_t seq = ++last_seq;
      m["seq"] = seq;
      if (unacked.size() >= 500000) unacked.erase(unacked.begin());  // bound memory
      if (conn && welcomed) conn->send(m);
      unacked.emplace(seq, std::move(m));
    });
  }

  void connect() {
    if (stopping) return;
    const auto colon = options.coordinator.rfind(':');
    auto resolver = std::make_shared<tcp::resolver>(io);
    resolver->async_resolve(
        options.coordinator.substr(0, colon), options.coordinator.substr(colon + 1),
        [this, resolver](boost::system::error_code ec, tcp::resolver::results_type results) {
          if (ec) return retry("cannot resolve " + options.coordinator + ": " + ec.message());
          auto socket = std::make_shared<tcp::socket>(io);
          asio::async_connect(*socket, results,
                              [this, socket](boost::system::error_code ec2, const tcp::endpoint&) {
                                if (ec2) return retry(ec2.message());
                                on_connected(std::move(*socket));
                              });
        });
  }

  // Exponential back-off with jitter: the delay is drawn from [backoff/2, backoff], so daemons
  // that lost the coordinator at the same moment (its restart, a flapping link) do not all
  // dial it again in the same instant.
  void retry(const std::string& why) {
    if (stopping) return;
    ++reconnects;
    const double delay_s = backoff_s * (0.5 + 0.5 * jitter(rng));
    spdlog::warn("coordinator {} unreachable ({}); retrying in {:.2f} s (attempt {})",
                 options.coordinator, why, delay_s, reconnects);
    reconnect.expires_after(std::chrono::milliseconds(static_cast<int64_t>(delay_s * 1000)));
    reconnect.async_wait([this](boost::system::error_code ec) {
      if (!ec) connect();
    });
    backoff_s = std::min(backoff_s * 2, options.reconnect_max_s);
  }

  json running() const {
    json out = json::array();
    for (const auto& [key, t] : tasks) {
      if (t->done) continue;
      out.push_back({{"job", t->job},
                     {"attempt", t->attempt},
                     {"rank", t->rank},
                     {"world", t->world},
                     {"step", t->step.load()}});
    }
    return out;
  }

  void on_connected(tcp::socket socket) {
    conn = std::make_shared<proto::Connection>(std::move(socket));
    welcomed = false;
    std::weak_ptr<proto::Connection> weak = conn;
    conn->start(
        [this, weak](const json& m) {
          asio::post(io, [this, weak, m] {
            if (weak.lock() == conn) on_message(m);
          });
        },
        [this, weak](const std::string& why) {
          asio::post(io, [this, weak, why] {
            if (weak.lock() != conn) return;
            conn.reset();
            welcomed = false;
            heartbeat.cancel();
            if (!refused) retry("connection closed: " + why);
          });
        });
    const bool cuda = gpu >= 0;
    json devices = json::array();
    if (cuda) {
      json dev = {{"index", gpu}, {"kind", "cuda"}};
      // The GPU's model and memory, as the CUDA runtime of this process sees it.
      for (const CudaDeviceInfo& d : cuda_devices()) {
        if (d.index != gpu) continue;
        dev["name"] = d.name.substr(0, proto::kMaxDeviceNameBytes);
        dev["memory_mb"] = d.memory_bytes >> 20;
      }
      devices.push_back(dev);
    } else {
      devices.push_back(
          {{"index", 0}, {"kind", "cpu"}, {"cores", std::thread::hardware_concurrency()}});
    }
    conn->send({{"type", proto::kHello},
                {"protocol", proto::kProtocolVersion},
                {"name", options.name},
                {"host", host_name()},
                {"backend", cuda ? "cuda" : "cpu"},
                {"devices", devices},
                {"threads", options.threads},
                {"version", MOHGE_VERSION},
                {"instance", instance},
                {"secret", options.join_secret},
                {"running", running()}});
  }

  void send_heartbeat() {
    if (!conn || !welcomed) return;
    json load = host_load();
    if (monitor) {
      if (const std::optional<GpuSample> g = monitor->sample()) {
        load["gpus"] = json::array({{{"index", g->index},
                                     {"utilization_pct", g->utilization_pct},
                                     {"memory_used_mb", g->memory_used_mb},
                                     {"memory_total_mb", g->memory_total_mb}}});
      }
    }
    conn->send({{"type", proto::kHeartbeat}, {"running", running()}, {"load", load}});
    heartbeat.expires_after(std::chrono::milliseconds(static_cast<int64_t>(heartbeat_s * 1000)));
    heartbeat.async_wait([this](boost::system::error_code ec) {
      if (!ec) send_heartbeat();
    });
  }

  std::shared_ptr<RankTask> find_task(int64_t job, int attempt) {
    const auto it = tasks.find({job, attempt});
    return it == tasks.end() ? nullptr : it->second;
  }

  void on_message(const json& m) {
    // Every order is decoded (types and ranges checked) before it is acted on; one that fails
    // is logged and ignored. Nothing the connection delivers may end the daemon.
    try {
      dispatch(m);
    } catch (const std::exception& e) {
      spdlog::error("coordinator message could not be handled ({}); ignored", e.what());
    }
  }

  template <class T>
  static bool decoded(const Result<T>& r) {
    if (!r.ok()) spdlog::warn("coordinator message ignored: {}", r.error().to_string());
    return r.ok();
  }

  void dispatch(const json& m) {
    const std::string type = m.value("type", "");  // Connection checked it is a string
    if (type == proto::kWelcome) {
      const Result<proto::Welcome> w = proto::decode_welcome(m);
      if (!decoded(w)) return;
      welcomed = true;
      backoff_s = 0.2;
      reconnects = 0;
      heartbeat_s = w.value().heartbeat_s;
      spdlog::info("registered with coordinator {} as {}", options.coordinator, options.name);
      for (const auto& [seq, report] : unacked) conn->send(report);
      send_heartbeat();
    } else if (type == proto::kRefused) {
      const Result<proto::Refused> r = proto::decode_refused(m);
      const std::string reason = r.ok() ? r.value().reason : "no reason given";
      if (r.ok() && r.value().retry) {
        // A passing condition (our name's old connection is still open there): try again.
        spdlog::warn("the coordinator asks this worker to retry: {}", reason);
        return;
      }
      refused = Error{ErrorCode::kFailedPrecondition,
                      "the coordinator refused this worker: " + reason, ""};
      spdlog::error("{}", refused->message);
      stopping = true;
      io.stop();
    } else if (type == proto::kError) {
      const Result<proto::ErrorFrame> e = proto::decode_error(m);
      if (!decoded(e)) return;
      spdlog::error("the coordinator could not accept a message: {}", e.value().reason);
      if (e.value().seq) unacked.erase(*e.value().seq);  // sending it again would not help
    } else if (type == proto::kAck) {
      const Result<proto::Ack> a = proto::decode_ack(m);
      if (!decoded(a)) return;
      for (const int64_t seq : a.value().seqs) unacked.erase(seq);
    } else if (type == proto::kLaunch) {
      const Result<proto::Launch> l = proto::decode_launch(m);
      if (decoded(l)) launch(l.value());
    } else if (type == proto::kRvAll) {
      const Result<proto::RvAll> rv = proto::decode_rv_all(m);
      if (!decoded(rv)) return;
      if (auto t = find_task(rv.value().job, rv.value().attempt))
        t->rv->deliver(rv.value().round, rv.value().blobs);
    } else if (type == proto::kCancel || type == proto::kAbort) {
      const Result<proto::Stop> stop = proto::decode_stop(m);
      if (!decoded(stop)) return;
      if (auto t = find_task(stop.value().job, stop.value().attempt)) {
        const std::string reason = stop.value().reason.empty() ? type : stop.value().reason;
        t->stop_request = true;
        t->rv->abort(type == proto::kCancel ? "canceled: " + reason : reason);
      }
    } else if (type == proto::kCheckpoint) {
      const Result<proto::CheckpointOrder> c = proto::decode_checkpoint_order(m);
      if (!decoded(c)) return;
      if (auto t = find_task(c.value().job, c.value().attempt))
        t->stop_request = c.value().stop || t->stop_request.load();
    }
  }

  void launch(const proto::Launch& m) {
    if (find_task(m.job, m.attempt)) {
      spdlog::warn("job {} attempt {}: launch repeated; already running", m.job, m.attempt);
      return;
    }
    auto task = std::make_shared<RankTask>();
    task->job = m.job;
    task->attempt = m.attempt;
    task->rank = m.rank;
    task->world = m.world;
    Result<JobSpec> spec = parse_job_spec(m.spec);
    const Send send = [this](json j) { report(std::move(j)); };
    if (!spec.ok()) {
      report({{"type", proto::kRankExited},
              {"job", task->job},
              {"attempt", task->attempt},
              {"rank", task->rank},
              {"ok", false},
              {"error",
               {{"code", error_code_name(spec.error().code)},
                {"message", spec.error().to_string()}}}});
      return;
    }
    task->rv = std::make_shared<ControlRendezvous>(task->job, task->attempt, task->rank,
                                                   task->world, send);
    RankConfig c;
    c.spec = spec.value();
    c.rank = task->rank;
    c.world = task->world;
    c.threads = options.threads;
    c.gpu = std::max(gpu, 0);
    c.comm_timeout_s = m.comm_timeout_s;
    for (const proto::Launch::Peer& p : m.peers) {
      c.peer_names.push_back("worker " + p.worker + " on host " + p.host);
      c.peer_hosts.push_back(p.host);
    }
    c.job_id = "job-" + std::to_string(task->job) + "-" + std::to_string(task->attempt);
    c.train.storage_root = options.storage;
    c.train.run_dir = options.storage / m.run_dir;  // relative, no "..": checked by decode_launch
    c.train.resume_if_present = m.resume;
    // A rank whose attempt was superseded (its worker was declared lost while it was stopped,
    // and the job placed again) finds a newer number in the fence and writes nothing more.
    c.train.fence.attempt = m.attempt;
    c.train.fence.check = [file = c.train.run_dir / proto::kAttemptFenceFile, job = m.job,
                           attempt = m.attempt]() -> Status {
      std::ifstream in(file);
      int64_t current = 0;
      if (!(in >> current) || current == attempt) return {};  // no fence file: nothing to defer to
      return Error{ErrorCode::kFailedPrecondition,
                   "attempt " + std::to_string(attempt) + " of job " + std::to_string(job) +
                       " was superseded by attempt " + std::to_string(current) +
                       "; this rank stops without writing into the run",
                   ""};
    };
    c.train.progress = false;
    c.unreachable = &task->unreachable;
    c.train.stop_request = &task->stop_request;
    RankTask* t = task.get();
    if (t->rank == 0) {
      c.train.on_record = [send, t](const json& rec) {
        send({{"type", proto::kMetrics},
              {"job", t->job},
              {"attempt", t->attempt},
              {"rank", t->rank},
              {"records", json::array({rec})}});
      };
    }
    const fs::path storage = options.storage;
    const int keep = spec.value().checkpoint.keep;
    c.train.on_checkpoint = [send, t, storage, keep](int64_t step, const fs::path& folder) {
      json files = json::array();
      std::set<std::string> others;
      for (int r = 0; r < t->world; ++r) {
        if (r == t->rank) continue;
        others.insert(shard_file_name("model", r, t->world));
        others.insert(shard_file_name("optimizer", r, t->world));
      }
      // Files may vanish while they are listed (a newer attempt's retention, if this rank's
      // attempt was superseded meanwhile): every filesystem call here takes an error code, and
      // a file that is gone is left out (the coordinator then refuses the checkpoint).
      std::error_code ec;
      for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        std::error_code file_ec;
        if (!it->is_regular_file(file_ec)) continue;
        const bool mine = t->world == 1 || name.find("-of-") == std::string::npos
                              ? t->rank == 0
                              : others.count(name) == 0;
        if (!mine) continue;
        const auto bytes = it->file_size(file_ec);
        Result<std::string> sha = file_sha256(it->path());
        if (file_ec || !sha.ok()) continue;
        files.push_back(
            {{"name", name}, {"bytes", static_cast<int64_t>(bytes)}, {"sha256", sha.value()}});
      }
      send({{"type", proto::kCheckpointWritten},
            {"job", t->job},
            {"attempt", t->attempt},
            {"rank", t->rank},
            {"world", t->world},
            {"step", step},
            {"keep", keep},
            {"path", fs::relative(folder, storage).string()},
            {"files", files}});
    };
    tasks[{task->job, task->attempt}] = task;
    task->thread = std::thread([this, task, c, send] {
      LogContext ctx{task->job, task->attempt, task->rank, send};
      tl_log = &ctx;
      spdlog::info("job {} attempt {}: rank {} of {} starting on {}", task->job, task->attempt,
                   task->rank, task->world, options.name);
      bool stopped = false;
      const Status s = rank_run(c, *task->rv, [&](const StepReport& r) {
        task->step = r.step;
        stopped = r.stopped;
      });
      json exit = {{"type", proto::kRankExited}, {"job", task->job}, {"attempt", task->attempt},
                   {"rank", task->rank},         {"ok", s.ok()},     {"stopped", stopped},
                   {"step", task->step.load()}};
      if (!s.ok()) {
        exit["error"] = {{"code", error_code_name(s.error().code)},
                         {"message", s.error().to_string()}};
        if (!task->unreachable.empty()) exit["unreachable"] = task->unreachable;
        spdlog::error("job {} attempt {}: rank {} failed: {}", task->job, task->attempt, task->rank,
                      s.error().to_string());
      } else {
        spdlog::info("job {} attempt {}: rank {} finished at step {}{}", task->job, task->attempt,
                     task->rank, task->step.load(), stopped ? " (stopped as asked)" : "");
      }
      tl_log = nullptr;
      // Done before the exit goes out: a heartbeat composed after the exit report is queued
      // no longer lists the rank (the coordinator may place the job again at once).
      task->done = true;
      send(exit);
      asio::post(io, [this, task] {
        if (task->thread.joinable()) task->thread.detach();
        tasks.erase({task->job, task->attempt});
      });
    });
  }
};

WorkerDaemon::WorkerDaemon(DaemonOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (impl_->options.name.empty()) impl_->options.name = host_name();
}

WorkerDaemon::~WorkerDaemon() {
  stop();
}

Status WorkerDaemon::run() {
  Impl& m = *impl_;
  if (m.options.coordinator.rfind(':') == std::string::npos) {
    return invalid_argument("--coordinator", "must be HOST:PORT");
  }
  // One device per daemon (worker_main starts one daemon per GPU of a list).
  const Result<std::vector<std::string>> device = split_devices(m.options.devices);
  if (!device.ok()) return device.error();
  if (device.value().size() != 1)
    return invalid_argument("--devices", "one daemon serves one device, got " + m.options.devices);
  if (device.value()[0] != "cpu") {
    m.gpu = std::stoi(device.value()[0].substr(5));  // "cuda:N", checked by split_devices
    const int visible = static_cast<int>(cuda_devices().size());
    if (m.gpu >= visible) {
      return invalid_argument("--devices", "GPU " + std::to_string(m.gpu) +
                                               " is not visible here (" + std::to_string(visible) +
                                               " visible)");
    }
    std::string why;
    m.monitor = GpuMonitor::open(m.gpu, &why);
    if (!m.monitor) spdlog::warn("no utilisation or memory figures for GPU {}: {}", m.gpu, why);
  }
  daemon_log_forwarding_install();
  auto work = asio::make_work_guard(m.io);
  asio::post(m.io, [&m] { m.connect(); });
  m.io.run();
  // Stopping: abort what runs and wait a little for the ranks to report.
  std::vector<std::shared_ptr<RankTask>> left;
  for (auto& [k, t] : m.tasks) left.push_back(t);
  for (auto& t : left) {
    t->stop_request = true;
    t->rv->abort("worker " + m.options.name + " is shutting down");
  }
  for (auto& t : left)
    if (t->thread.joinable()) t->thread.join();
  if (m.refused) return *m.refused;
  return {};
}

void WorkerDaemon::stop() {
  Impl* m = impl_.get();
  asio::post(m->io, [m] {
    m->stopping = true;
    m->heartbeat.cancel();
    m->reconnect.cancel();
    if (m->conn) m->conn->close("worker stopping");
    m->io.stop();
  });
}

}  // namespace mohge
