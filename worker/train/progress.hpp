// The live progress line of `mohge train`: rewritten in place on a terminal, one line every
// ~5% of the steps otherwise.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>

#include "worker/train/trainer.hpp"

namespace mohge {

inline std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

// The live progress line: rewritten in place on a terminal, a line every ~5% otherwise.
class Progress {
 public:
  Progress(bool enabled, int64_t total)
      : enabled_(enabled), total_(total), tty_(::isatty(2) != 0) {}
  void update(const StepReport& r, std::optional<double> last_val, double eta_s) {
    if (!enabled_) return;
    const int64_t every = std::max<int64_t>(1, total_ / 20);
    if (!tty_ && r.step % every != 0 && r.step != total_ && r.step != 1 && !r.val_loss) return;
    char line[256];
    const int n =
        std::snprintf(line, sizeof(line),
                      "step %lld/%lld  loss %.4f  aux %.2e  lr %.2e  %.0f tok/s  %.0f ms/step",
                      static_cast<long long>(r.step), static_cast<long long>(total_), r.loss,
                      r.aux_group + r.aux_expert, r.lr, r.tokens_per_s, r.step_ms);
    std::string s(line, static_cast<size_t>(std::max(0, n)));
    if (last_val) {
      std::snprintf(line, sizeof(line), "  val %.4f", *last_val);
      s += line;
    }
    s += "  ETA " + format_duration(eta_s);
    if (tty_) {
      std::fprintf(stderr, "\r%-120s", s.c_str());
      if (r.step == total_) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "%s\n", s.c_str());
    }
    std::fflush(stderr);
  }
  void newline() {
    if (enabled_ && tty_) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  int64_t total_;
  bool tty_;
};

}  // namespace mohge
