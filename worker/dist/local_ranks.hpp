// Runs a function as R ranks in R forked processes on this host (benchmarks and tests). The
// data plane must be initialised after the fork, in each child, and the parent must not have
// started OpenMP threads before forking. Children report through exit codes (and stderr).
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace mohge {

/// A port that was free a moment ago (the kernel picks it).
inline int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct RankExit {
  int code = -1;         // exit code, or -signal
  double seconds = 0.0;  // from start to exit
};

/// Forks `world` children running fn(rank) (its return value is the exit code); waits up to
/// `timeout_s`, then kills stragglers (reported as -SIGKILL).
inline std::vector<RankExit> run_local_ranks(int world, const std::function<int(int)>& fn,
                                             double timeout_s = 120.0) {
  std::fflush(stdout);
  std::fflush(stderr);
  const auto start = std::chrono::steady_clock::now();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      int code = 1;
      try {
        code = fn(r);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: exception: %s\n", r, e.what());
      }
      std::fflush(stderr);
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<RankExit> exits(static_cast<size_t>(world));
  int remaining = world;
  while (remaining > 0) {
    for (int r = 0; r < world; ++r) {
      if (pids[static_cast<size_t>(r)] == 0) continue;
      int status = 0;
      if (::waitpid(pids[static_cast<size_t>(r)], &status, WNOHANG) ==
          pids[static_cast<size_t>(r)]) {
        RankExit& e = exits[static_cast<size_t>(r)];
        e.code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        pids[static_cast<size_t>(r)] = 0;
        --remaining;
      }
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
        timeout_s) {
      for (pid_t p : pids)
        if (p != 0) ::kill(p, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exits;
}

}  // namespace mohge
