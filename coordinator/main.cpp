// mohge-coordinator: the service's coordinator daemon.
//   mohge-coordinator --http HOST:PORT --control HOST:PORT --storage DIR [--db FILE]
//                     [--web DIR] [--heartbeat-timeout S] [--isolation-grace S]
//                     [--reattach-timeout S] [--comm-timeout S] [--http-threads N]
// Stops cleanly on SIGINT/SIGTERM (buffered metrics are written first).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <csignal>
#include <filesystem>

#include "coordinator/coordinator.hpp"

int main(int argc, char** argv) {
  CLI::App app{"mohge-coordinator: schedules MoHGE training jobs onto worker daemons"};
  mohge::coord::CoordinatorOptions o;
  std::string storage = ".", db, web;
  app.add_option("--http", o.http, "REST API and dashboard address")->capture_default_str();
  app.add_option("--control", o.control, "Address worker daemons dial")->capture_default_str();
  app.add_option("--storage", storage, "Shared storage root")->capture_default_str();
  app.add_option("--db", db, "SQLite database file (default STORAGE/mohge.db)");
  app.add_option("--web", web, "Dashboard files to serve at / (default: the build's web/)");
  app.add_option("--heartbeat-timeout", o.heartbeat_timeout_s,
                 "Seconds without a heartbeat before a worker is lost")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--isolation-grace", o.isolation_grace_s,
                 "When no worker has been heard for two heartbeats (this host's own network is "
                 "the likelier cause), seconds from then before any is declared lost")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--reattach-timeout", o.reattach_timeout_s,
                 "After a restart, seconds for running ranks to report back")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--comm-timeout", o.comm_timeout_s, "Data-plane deadline given to the ranks")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--http-threads", o.http_threads, "REST thread pool size (default: one per core)")
      ->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);
  o.storage = storage;
  o.db = db;
  // The dashboard: --web, else the dashboard/ folder next to the binary's bin/ (the build
  // tree, where web/CMakeLists.txt puts the files and ECharts).
  if (web.empty()) {
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    const auto guess = exe.parent_path().parent_path() / "dashboard";
    if (!ec && std::filesystem::exists(guess / "index.html")) web = guess.string();
  }
  o.web_root = web;

  // The logger is made here, before any thread: spdlog builds its registry on first use, behind
  // a static guard in its (uninstrumented) library that ThreadSanitizer cannot see.
  spdlog::set_level(spdlog::level::info);

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  auto c = mohge::coord::Coordinator::start(o);
  if (!c.ok()) {
    spdlog::error("{}", c.error().to_string());
    return 2;
  }
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("coordinator: stopping ({})", sig == SIGINT ? "SIGINT" : "SIGTERM");
  c.value()->stop();
  return 0;
}
