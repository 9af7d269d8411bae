// Hosts on one machine: Linux network namespaces joined by a bridge, for the multi-host suite.
//
// Topology: a "switch" namespace holds a bridge; every host is its own namespace with one
// veth link (eth0, 10.213.0.N/24) whose other end is a port of that bridge. Nothing is added
// to the machine's own namespace, so several test processes can each build their own
// network with the same addresses. A process started on a host runs in the host's network
// namespace and in its own UTS namespace with the host's name (so UCX, which tells hosts apart
// by name and interfaces, sees different machines and never uses shared memory between them)
// and its own mount namespace with /sys remounted (so /sys/class/net shows the host's links).
//
// Failures:
//   - partition(host): the host's switch port goes down (a pulled cable): silent loss both ways;
//   - cut(a, b): a and b lose each other only (each resolves the other to an address nobody
//     owns, so frames are silently dropped at the switch), both still reach everyone else;
//   - limit(host, mbit): a token-bucket (tbf) limit on the host's outgoing traffic.
//
// Needs root and `ip`/`tc` (iproute2). available() says why not, for a skip.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mohge::testing {

class NetTopology {
 public:
  /// Empty when this process can build namespaces; else why not.
  static std::optional<std::string> unavailable() {
    if (::geteuid() != 0) return "network namespaces need root";
    if (std::system("command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1") != 0)
      return "iproute2 (ip, tc) is not installed";
    const std::string probe = "mohge-probe-" + std::to_string(::getpid());
    if (std::system(("ip netns add " + probe + " >/dev/null 2>&1").c_str()) != 0)
      return "cannot create a network namespace (ip netns add failed)";
    std::system(("ip netns del " + probe + " >/dev/null 2>&1").c_str());
    return std::nullopt;
  }

  /// Removes the namespaces of earlier test processes that died before cleaning up.
  static void remove_stale() {
    namespace fs = std::filesystem;
    std::error_code ec;
    for (fs::directory_iterator it("/run/netns", ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.rfind("mohge-t", 0) != 0) continue;
      const std::string pid = name.substr(7, name.find('-', 7) - 7);
      if (pid.empty() || fs::exists("/proc/" + pid)) continue;
      std::system(("ip netns del " + name + " >/dev/null 2>&1").c_str());
    }
  }

  /// Builds the switch and one host per name; hosts[i] gets 10.213.0.(i+1).
  bool build(const std::vector<std::string>& hosts, std::string* error) {
    remove_stale();
    prefix_ = "mohge-t" + std::to_string(::getpid()) + "-";
    if (!run("ip netns add " + ns("sw"), error) ||
        !run("ip -n " + ns("sw") + " link add br0 type bridge", error) ||
        !run("ip -n " + ns("sw") + " link set br0 up", error))
      return false;
    for (size_t i = 0; i < hosts.size(); ++i) {
      const std::string h = hosts[i], port = "p" + std::to_string(i + 1);
      const std::string addr = "10.213.0." + std::to_string(i + 1);
      if (!run("ip netns add " + ns(h), error) ||
          !run("ip link add " + port + " netns " + ns("sw") + " type veth peer name eth0 netns " +
                   ns(h),
               error) ||
          !run("ip -n " + ns("sw") + " link set " + port + " master br0 up", error) ||
          !run("ip -n " + ns(h) + " addr add " + addr + "/24 dev eth0", error) ||
          !run("ip -n " + ns(h) + " link set eth0 up", error) ||
          !run("ip -n " + ns(h) + " link set lo up", error))
        return false;
      hosts_[h] = {addr, port};
    }
    return true;
  }

  ~NetTopology() { destroy(); }

  void destroy() {
    for (const auto& [h, info] : hosts_) run_quiet("ip netns del " + ns(h));
    if (!prefix_.empty()) run_quiet("ip netns del " + ns("sw"));
    hosts_.clear();
    prefix_.clear();
  }

  const std::string& address(const std::string& host) const { return hosts_.at(host).address; }
  std::string ns(const std::string& host) const { return prefix_ + host; }

  void partition(const std::string& host) { switch_port(host, "down"); }
  void heal(const std::string& host) { switch_port(host, "up"); }

  /// a and b stop hearing each other (each sends the other's frames to a MAC nobody has).
  void cut(const std::string& a, const std::string& b) {
    run_quiet("ip -n " + ns(a) + " neigh replace " + address(b) +
              " lladdr 02:00:00:00:de:ad nud permanent dev eth0");
    run_quiet("ip -n " + ns(b) + " neigh replace " + address(a) +
              " lladdr 02:00:00:00:de:ad nud permanent dev eth0");
  }
  void uncut(const std::string& a, const std::string& b) {
    run_quiet("ip -n " + ns(a) + " neigh del " + address(b) + " dev eth0");
    run_quiet("ip -n " + ns(b) + " neigh del " + address(a) + " dev eth0");
  }

  /// At most `mbit` Mbit/s out of `host` (0: no limit).
  bool limit(const std::string& host, double mbit) {
    run_quiet("tc -n " + ns(host) + " qdisc del dev eth0 root");
    if (mbit <= 0) return true;
    return run_quiet("tc -n " + ns(host) + " qdisc add dev eth0 root tbf rate " +
                     std::to_string(static_cast<int>(mbit * 1000)) +
                     "kbit burst 32kb latency 400ms");
  }

  /// Every link up, every cut and limit removed.
  void heal_all() {
    for (const auto& [h, info] : hosts_) {
      heal(h);
      limit(h, 0);
      for (const auto& [other, o] : hosts_)
        if (other != h) run_quiet("ip -n " + ns(h) + " neigh del " + o.address + " dev eth0");
    }
  }

  /// In a child process before exec: moves it onto `host` (see the file comment). Only
  /// async-signal-safe calls besides the path building done before fork by the caller.
  static void enter(const std::string& netns_path, const std::string& hostname) {
    const int fd = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) ::_exit(126);
    ::close(fd);
    if (::unshare(CLONE_NEWNS | CLONE_NEWUTS) != 0) ::_exit(126);
    ::mount(nullptr, "/", nullptr, MS_SLAVE | MS_REC, nullptr);
    if (::umount2("/sys", MNT_DETACH) == 0) ::mount(hostname.c_str(), "/sys", "sysfs", 0, nullptr);
    ::sethostname(hostname.c_str(), hostname.size());
  }
  std::string netns_path(const std::string& host) const { return "/run/netns/" + ns(host); }

 private:
  struct Host {
    std::string address, port;  // eth0's address; the host's port on the switch
  };

  void switch_port(const std::string& host, const std::string& state) {
    run_quiet("ip -n " + ns("sw") + " link set " + hosts_.at(host).port + " " + state);
  }
  static bool run(const std::string& cmd, std::string* error) {
    if (std::system((cmd + " 2>/dev/null").c_str()) == 0) return true;
    if (error) *error = "failed: " + cmd;
    return false;
  }
  static bool run_quiet(const std::string& cmd) {
    return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
  }

  std::string prefix_;
  std::map<std::string, Host> hosts_;
};

}  // namespace mohge::testing
