// Assertions for broken invariants inside kernels and the model: print file, line and the
// condition, then throw (never exit(): a daemon that calls into kernels must be able to report).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mohge {

/// Thrown when an internal invariant is broken. Carries "file:line: condition (message)".
class CheckError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

[[noreturn]] void check_fail(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace mohge

#define MOHGE_CHECK(cond, ...)                                               \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::ostringstream mohge_check_os_;                                    \
      mohge_check_os_ << "" __VA_OPT__(<< __VA_ARGS__);                      \
      ::mohge::check_fail(__FILE__, __LINE__, #cond, mohge_check_os_.str()); \
    }                                                                        \
  } while (0)
