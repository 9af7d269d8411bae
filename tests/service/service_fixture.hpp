// A local cluster for service tests: a real mohge-coordinator and real mohge-worker daemons
// as child processes on localhost, a storage root with a tiny token dataset, and a small
// synchronous REST client (cpprestsdk).
#pragma once

#include <cpprest/http_client.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/token_file.hpp"
#include "worker/dist/local_ranks.hpp"
#include "worker/model/rng.hpp"

namespace mohge::testing {

namespace fs = std::filesystem;
using nlohmann::json;

struct HttpResult {
  int status = 0;
  json body;
  std::string text;
};

/// A tiny MoHGE job for `workers` ranks, `steps` steps.
inline json service_job(int workers, int steps, int checkpoint_every = 4, int keep = 2) {
  return {{"name", "svc-test"},
          {"model",
           {{"vocab_size", 32},
            {"seq_len", 8},
            {"layers", 2},
            {"d_model", 16},
            {"heads", 2},
            {"init_std", 0.2},
            {"ffn",
             {{"kind", "mohge"},
              {"groups", 4},
              {"experts_per_group", 2},
              {"widths", {6, 10, 14, 18}},
              {"top_groups", 2},
              {"top_experts", 3},
              {"shared_experts", 1},
              {"shared_width", 8}}}}},
          {"data", {{"train", "data/train.bin"}, {"val", "data/val.bin"}}},
          {"train",
           {{"steps", steps},
            {"batch_size", 4},
            {"lr", 1e-2},
            {"warmup_steps", 1},
            {"eval_every", 10},
            {"eval_batches", 1},
            {"seed", 5}}},
          {"resources", {{"workers", workers}, {"device", "cpu"}}},
          {"checkpoint", {{"every", checkpoint_every}, {"keep", keep}}}};
}

class LocalCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("mohge-svc-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "data");
    Rng rng(11);
    for (const char* f : {"train.bin", "val.bin"}) {
      std::vector<uint16_t> t(4000);
      for (size_t i = 0; i < t.size(); ++i)
        t[i] = static_cast<uint16_t>(rng.uniform() < 0.7 ? (i * 5) % 32 : rng.below(32));
      ASSERT_TRUE(token_file_write(root_ / "data" / f, t).ok());
    }
    http_port_ = free_local_port();
    control_port_ = free_local_port();
  }

  void TearDown() override {
    for (auto& [name, pid] : workers_) stop_process(pid);
    if (coordinator_ > 0) stop_process(coordinator_);
    if (!HasFailure())
      fs::remove_all(root_);
    else
      std::fprintf(stderr, "logs kept in %s\n", root_.c_str());
  }

  static std::string bin(const std::string& name) {
    return std::string(MOHGE_BIN_DIR) + "/" + name;
  }

  /// Starts `args` with stdout and stderr appended to `log`. `in_child` runs in the child
  /// before exec (async-signal-safe calls only: the test process has threads).
  pid_t spawn(const std::vector<std::string>& args, const fs::path& log,
              const std::function<void()>& in_child = {}) {
    // Everything the child needs is built before fork: the test process has threads, and a
    // child that allocates may block forever on a lock another thread held at the fork (a
    // worker under ThreadSanitizer once never started, its log empty).
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const std::string log_path = log.string();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Dies with the test process, even when that one is killed or aborts (a sanitizer
      // report) before TearDown could stop it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (in_child) in_child();
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    return pid;
  }

  static void stop_process(pid_t& pid) {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 100; ++i) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) {
        pid = 0;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = 0;
  }

  static void kill9(pid_t& pid) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = 0;
  }

  /// The coordinator's REST address (a multi-host suite points it at the coordinator's host).
  virtual std::string url() const { return "http://127.0.0.1:" + std::to_string(http_port_); }

  void start_coordinator(double heartbeat_timeout_s = 3.0) {
    coordinator_ =
        spawn({bin("mohge-coordinator"), "--http", "127.0.0.1:" + std::to_string(http_port_),
               "--control", "127.0.0.1:" + std::to_string(control_port_), "--storage",
               root_.string(), "--heartbeat-timeout", std::to_string(heartbeat_timeout_s),
               "--reattach-timeout", "8", "--comm-timeout", "20"},
              root_ / "coordinator.log");
    await_coordinator();
  }

  /// Waits for a started coordinator to answer, then signs in as its admin.
  void await_coordinator() {
    ASSERT_TRUE(wait_for([&] { return get("/api/v1/healthz").status == 200; }, 20.0))
        << "coordinator did not come up; see " << (root_ / "coordinator.log");
    std::ifstream in(root_ / "admin.token");
    std::getline(in, admin_token_);
    ASSERT_FALSE(admin_token_.empty());
    token_ = admin_token_;
  }

  void start_worker(const std::string& name) {
    workers_[name] =
        spawn({bin("mohge-worker"), "--coordinator", "127.0.0.1:" + std::to_string(control_port_),
               "--storage", root_.string(), "--name", name, "--threads", "1"},
              root_ / (name + ".log"));
  }

  /// Waits until `n` workers are online.
  void wait_workers_online(int n) {
    ASSERT_TRUE(wait_for(
        [&] {
          const HttpResult r = get("/api/v1/cluster");
          return r.status == 200 && r.body["workers"].value("online", 0) >= n;
        },
        20.0))
        << "workers did not register";
  }

  static bool wait_for(const std::function<bool()>& cond, double timeout_s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      try {
        if (cond()) return true;
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  HttpResult request(const std::string& method, const std::string& path,
                     const std::string& body = "",
                     const std::map<std::string, std::string>& headers = {},
                     const std::string& token = "__default__") {
    HttpResult out;
    try {
      web::http::client::http_client_config cfg;
      cfg.set_timeout(std::chrono::seconds(30));
      web::http::client::http_client client(url(), cfg);
      web::http::http_request req(method);
      req.set_request_uri(path);
      const std::string t = token == "__default__" ? token_ : token;
      if (!t.empty()) req.headers().add("Authorization", "Bearer " + t);
      for (const auto& [k, v] : headers) req.headers().add(k, v);
      if (!body.empty()) req.set_body(body, "application/json");
      web::http::http_response resp = client.request(req).get();
      out.status = resp.status_code();
      out.text = resp.extract_utf8string(true).get();
      out.body = json::parse(out.text, nullptr, false);
    } catch (const std::exception& e) {
      out.status = -1;
      out.text = e.what();
    }
    return out;
  }
  HttpResult get(const std::string& path) { return request("GET", path); }
  HttpResult post(const std::string& path, const json& body,
                  const std::map<std::string, std::string>& headers = {}) {
    return request("POST", path, body.dump(), headers);
  }

  json job(int64_t id) { return get("/api/v1/jobs/" + std::to_string(id)).body; }

  /// Waits for the job to reach `state`; fails the test (with the job) if it ends otherwise.
  bool wait_state(int64_t id, const std::string& state, double timeout_s) {
    json last;
    const bool ok = wait_for(
        [&] {
          last = job(id);
          const std::string s = last.value("state", "");
          if (s == state) return true;
          if ((s == "SUCCEEDED" || s == "FAILED" || s == "CANCELED") && s != state)
            throw std::runtime_error("ended " + s);
          return false;
        },
        timeout_s);
    if (!ok) ADD_FAILURE() << "job " << id << " did not reach " << state << ": " << last.dump();
    return ok;
  }

  std::vector<std::string> event_states(int64_t id) {
    std::vector<std::string> out;
    const HttpResult r = get("/api/v1/jobs/" + std::to_string(id) + "/events");
    for (const json& e : r.body["events"]) out.push_back(e.value("to", ""));
    return out;
  }

  fs::path root_;
  int http_port_ = 0, control_port_ = 0;
  pid_t coordinator_ = 0;
  std::map<std::string, pid_t> workers_;
  std::string admin_token_, token_;
};

}  // namespace mohge::testing
