// Result<T>: the error value that crosses module and network boundaries unchanged
// (worker → coordinator → REST), mapped to an HTTP status in one table by the API layer.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace mohge {

/// Error codes shared by every module. The REST layer maps each to one HTTP status.
enum class ErrorCode {
  kInvalidArgument,     // bad input: a spec field, a CLI flag, a malformed file (HTTP 400)
  kNotFound,            // (404)
  kAlreadyExists,       // (409)
  kFailedPrecondition,  // valid input, wrong state (409)
  kDataLoss,            // a file is truncated or corrupt (422)
  kUnavailable,         // a peer or service is unreachable (503)
  kUnreachable,         // the network: a job's rank could not reach a named peer (a data-plane
                        // deadline or a transport failure); the job recovers elsewhere (503)
  kInternal,            // a bug (500)
  kUnauthenticated,     // no or unknown credentials (401)
  kPermissionDenied,    // known caller, not allowed (403)
  kPayloadTooLarge,     // a request body over the limit (413)
  kUnprocessable,       // well-formed and valid fields, but cannot be done as asked (422)
};

const char* error_code_name(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;  // complete sentence for a human: what is wrong and the rule
  std::string field;    // the offending field ("model.ffn.top_experts"), empty if none

  /// "field: message" or just "message".
  std::string to_string() const { return field.empty() ? message : field + ": " + message; }
};

inline Error invalid_argument(std::string field, std::string message) {
  return Error{ErrorCode::kInvalidArgument, std::move(message), std::move(field)};
}

/// Either a T or an Error. Accessing the wrong alternative is a bug and throws.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

/// Result<void>.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}  // NOLINT: implicit by design
  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *error_; }

 private:
  std::optional<Error> error_;
};

}  // namespace mohge
