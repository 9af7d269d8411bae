
#include "worker/cli/launcher.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include "api/random_id.hpp"

namespace mohge::cli {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};

void on_signal(int sig) {
  g_stop_signal.store(sig);
}

std::string tail(const fs::path& path, size_t lines) {
  std::ifstream in(path);
  std::deque<std::string> last;
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (const auto& l : last) out += "    " + l + "\n";
  return out;
}

}  // namespace

std::string sibling_binary(const std::string& name) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? name : (self.parent_path() / name).string();
}

int pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

int launch_local_workers(const LaunchOptions& o) {
  const std::string worker = sibling_binary("mohge-worker");
  if (::access(worker.c_str(), X_OK) != 0) {
    spdlog::error("cannot run {}: build the mohge-worker target next to mohge", worker);
    return 1;
  }
  std::error_code ec;
  const fs::path logs = fs::path(o.run_dir) / "logs";
  fs::create_directories(logs, ec);
  const std::string rendezvous = "127.0.0.1:" + std::to_string(pick_free_port());
  spdlog::info("starting {} workers ({} threads each), rendezvous {}, logs of ranks 1..{} in {}",
               o.workers, o.threads_per_worker, rendezvous, o.workers - 1, logs.string());

  // The job's rendezvous secret: random per run, handed to the ranks in their environment.
  ::setenv("MOHGE_RENDEZVOUS_SECRET", random_hex(8).c_str(), 1);
  std::vector<pid_t> pids;
  for (int r = 0; r < o.workers; ++r) {
    std::vector<std::string> args = {worker,
                                     "--job",
                                     o.config,
                                     "--rank",
                                     std::to_string(r),
                                     "--world",
                                     std::to_string(o.workers),
                                     "--rendezvous",
                                     rendezvous,
                                     "--storage",
                                     o.storage,
                                     "--out",
                                     o.run_dir,
                                     "--threads",
                                     std::to_string(o.threads_per_worker),
                                     "--comm-timeout",
                                     std::to_string(o.comm_timeout_s)};
    if (!o.device.empty()) args.insert(args.end(), {"--device", o.device});
    if (o.device == "cuda") args.insert(args.end(), {"--gpu", std::to_string(r)});
    if (o.resume) args.push_back("--resume");
    if (o.stop_after > 0) args.insert(args.end(), {"--stop-after", std::to_string(o.stop_after)});
    if (o.quiet || r > 0) args.push_back("--quiet");
    // Built before fork: a child of a process with threads must not allocate before exec.
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = (logs / ("rank-" + std::to_string(r) + ".log")).string();
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (r > 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
          ::dup2(fd, 2);
          ::close(fd);
        }
      }
      ::execv(worker.c_str(), argv.data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::vector<int> codes(static_cast<size_t>(o.workers), 0);
  int running = o.workers;
  bool forwarded = false, failed = false;
  std::chrono::steady_clock::time_point terminate_at{}, kill_at{};
  while (running > 0) {
    const auto now = std::chrono::steady_clock::now();
    // Ctrl-C, or a rank failed and the others did not stop on their own within 15 s
    // (they are told at once through the rendezvous): SIGTERM, then SIGKILL 10 s later.
    const bool stop_now = g_stop_signal.load() != 0 || (failed && now >= terminate_at);
    if (stop_now && !forwarded) {
      spdlog::warn("stopping the workers");
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGTERM);
      forwarded = true;
      kill_at = now + std::chrono::seconds(10);
    }
    if (forwarded && now >= kill_at) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    for (int r = 0; r < o.workers; ++r) {
      if (pids[static_cast<size_t>(r)] != done) continue;
      codes[static_cast<size_t>(r)] =
          WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      pids[static_cast<size_t>(r)] = -1;
      --running;
      if (codes[static_cast<size_t>(r)] != 0 && !failed) {
        failed = true;
        terminate_at = std::chrono::steady_clock::now() + std::chrono::seconds(15);
      }
    }
  }
  int result = 0;
  for (int r = 0; r < o.workers; ++r) {
    if (codes[static_cast<size_t>(r)] == 0) continue;
    result = result == 0 ? codes[static_cast<size_t>(r)] : result;
    if (r > 0) {
      spdlog::error("rank {} exited with code {}; the end of its log:\n{}", r,
                    codes[static_cast<size_t>(r)],
                    tail(logs / ("rank-" + std::to_string(r) + ".log"), 15));
    } else {
      spdlog::error("rank 0 exited with code {}", codes[0]);
    }
  }
  return result;
}

}  // namespace mohge::cli
