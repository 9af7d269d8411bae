// `mohge bench api`: the coordinator's REST throughput and latency for GET /jobs/{id} with
// many jobs in the database, and metrics ingestion rows/s into SQLite. Prints figures.
//
// The load generator is a minimal HTTP/1.1 keep-alive client on blocking sockets: cpprestsdk's
// client costs more CPU per request than its server, so on a 2-core host it would measure the
// client, not the coordinator.
#include "worker/bench/bench_api.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "api/rest_server.hpp"
#include "coordinator/coordinator.hpp"
#include "storage/repository.hpp"
#include "worker/dist/local_ranks.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

class HttpConn {
 public:
  explicit HttpConn(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
    int one = 1;
    if (fd_ >= 0) ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~HttpConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }

  /// Sends one request and reads the whole response; returns the status (or -1).
  int round_trip(const std::string& request, std::string* body = nullptr) {
    size_t sent = 0;
    while (sent < request.size()) {
      const ssize_t n = ::send(fd_, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return -1;
      sent += static_cast<size_t>(n);
    }
    // Headers, then Content-Length bytes (the server answers with a length).
    size_t header_end;
    while ((header_end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill()) return -1;
    const int status = std::atoi(buf_.c_str() + 9);
    size_t length = 0;
    for (size_t p = 0; p < header_end;) {
      const size_t eol = buf_.find("\r\n", p);
      std::string line = buf_.substr(p, eol - p);
      std::transform(line.begin(), line.end(), line.begin(), ::tolower);
      if (line.rfind("content-length:", 0) == 0) length = std::stoul(line.substr(15));
      p = eol + 2;
    }
    while (buf_.size() < header_end + 4 + length)
      if (!fill()) return -1;
    if (body != nullptr) *body = buf_.substr(header_end + 4, length);
    buf_.erase(0, header_end + 4 + length);
    return status;
  }

 private:
  bool fill() {
    char tmp[16384];
    const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }
  int fd_ = -1;
  std::string buf_;
};

std::string get_request(const std::string& path, const std::string& token) {
  return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + token +
         "\r\n\r\n";
}

std::string post_request(const std::string& path, const std::string& token,
                         const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + token +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

json bench_job_spec(int i) {
  return {{"name", "bench-" + std::to_string(i)},
          {"model",
           {{"vocab_size", 4096},
            {"seq_len", 256},
            {"layers", 4},
            {"d_model", 256},
            {"heads", 8},
            {"ffn",
             {{"kind", "mohge"},
              {"groups", 8},
              {"experts_per_group", 4},
              {"widths", {128, 160, 192, 256, 320, 384, 416, 448}},
              {"top_groups", 3},
              {"top_experts", 6},
              {"shared_experts", 2},
              {"shared_width", 288}}}}},
          {"data", {{"train", "datasets/brown/train.bin"}, {"val", "datasets/brown/val.bin"}}},
          {"train", {{"steps", 100}, {"batch_size", 16}, {"lr", 1e-3}}},
          {"resources", {{"workers", 2}, {"device", "cpu"}}}};
}

}  // namespace

Result<ApiBenchResult> bench_api(const ApiBenchOptions& o) {
  const fs::path root =
      fs::temp_directory_path() / ("mohge-bench-api-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  ApiBenchResult out;

  // Metrics ingestion straight into SQLite, batches as the MetricsSink writes them.
  Result<double> rows = db::bench_metrics_ingest(root / "ingest.db", o.metric_rows, 10000);
  if (!rows.ok()) return rows.error();
  out.metric_rows_per_s = rows.value();

  coord::CoordinatorOptions co;
  const int http_port = free_local_port();
  co.http = "127.0.0.1:" + std::to_string(http_port);
  co.control = "127.0.0.1:" + std::to_string(free_local_port());
  co.storage = root;
  co.http_threads = static_cast<size_t>(o.server_threads);
  std::fflush(stdout);
  Result<std::unique_ptr<coord::Coordinator>> c = coord::Coordinator::start(co);
  if (!c.ok()) return c.error();
  std::string token;
  std::ifstream(root / "admin.token") >> token;

  // The jobs (no workers: they stay queued, each with a pending reason).
  {
    HttpConn conn(http_port);
    if (!conn.ok()) return Error{ErrorCode::kUnavailable, "cannot connect to the coordinator", ""};
    for (int i = 0; i < o.jobs; ++i) {
      std::string body;
      const int status =
          conn.round_trip(post_request("/api/v1/jobs", token, bench_job_spec(i).dump()), &body);
      if (status != 201) {
        return Error{ErrorCode::kInternal,
                     "submitting job " + std::to_string(i) + " answered " + std::to_string(status) +
                         ": " + body,
                     ""};
      }
    }
  }
  out.jobs = o.jobs;

  // GET from `connections` keep-alive connections for `seconds`: /healthz first (the REST
  // server alone, no auth, no coordinator state), then /jobs/{id} over all jobs.
  auto measure = [&](bool jobs_route, double* rps, double* p50, double* p99, int64_t* count,
                     int64_t* errs) {
    std::atomic<bool> stop{false};
    std::atomic<int64_t> errors{0};
    std::vector<std::vector<float>> latencies(static_cast<size_t>(o.connections));
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (int k = 0; k < o.connections; ++k) {
      threads.emplace_back([&, k] {
        HttpConn conn(http_port);
        if (!conn.ok()) {
          ++errors;
          return;
        }
        uint64_t i = static_cast<uint64_t>(k) * 7919;
        auto& lat = latencies[static_cast<size_t>(k)];
        lat.reserve(1 << 20);
        const std::string health = get_request("/api/v1/healthz", token);
        while (!stop.load(std::memory_order_relaxed)) {
          const int64_t id = 1 + static_cast<int64_t>(i++ % static_cast<uint64_t>(o.jobs));
          const auto a = Clock::now();
          const int status = conn.round_trip(
              jobs_route ? get_request("/api/v1/jobs/" + std::to_string(id), token) : health);
          lat.push_back(std::chrono::duration<float, std::milli>(Clock::now() - a).count());
          if (status != 200) {
            ++errors;
            if (status < 0) return;
          }
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
    stop = true;
    for (std::thread& t : threads) t.join();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    std::vector<float> all;
    for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
    std::sort(all.begin(), all.end());
    *count = static_cast<int64_t>(all.size());
    *errs = errors.load();
    *rps = static_cast<double>(all.size()) / elapsed;
    if (!all.empty()) {
      *p50 = all[all.size() / 2];
      *p99 = all[std::min(all.size() - 1, all.size() * 99 / 100)];
    }
  };
  double hp50 = 0, hp99 = 0;
  int64_t hcount = 0, herr = 0;
  measure(false, &out.healthz_requests_per_s, &hp50, &hp99, &hcount, &herr);
  measure(true, &out.requests_per_s, &out.p50_ms, &out.p99_ms, &out.requests, &out.errors);
  out.errors += herr;
  c.value()->stop();
  fs::remove_all(root);
  return out;
}

}  // namespace mohge
