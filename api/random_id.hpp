// Random identifiers and secrets from the kernel's CSPRNG (std::random_device is getrandom
// on Linux): daemon instance ids, per-run rendezvous secrets.
#pragma once

#include <cstdio>
#include <random>
#include <string>

namespace mohge {

/// `words` × 32 random bits as lowercase hex (8 digits a word).
inline std::string random_hex(int words = 4) {
  std::random_device rd;
  std::string out;
  for (int i = 0; i < words; ++i) {
    char buf[9];
    std::snprintf(buf, sizeof(buf), "%08x", static_cast<unsigned>(rd()));
    out += buf;
  }
  return out;
}

}  // namespace mohge
