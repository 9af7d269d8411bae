// The REST edge (DESIGN.md §8; every route is in api/openapi.yaml): cpprestsdk's listener on a
// bounded thread pool. Handlers parse and validate the request, authenticate, call ApiService,
// and map its Error to an HTTP status in one table (http_status()); they hold no state.
// Static dashboard files are served from `web_root` at "/".
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "api/result.hpp"
#include "api/service.hpp"

namespace mohge {

/// The HTTP status of an error code: the one table.
int http_status(ErrorCode code);

struct RestOptions {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT
  size_t max_body_bytes = 1 << 20;        // larger request bodies get 413
  std::filesystem::path web_root;         // static files ("/" → index.html); empty: none
};

class RestServer {
 public:
  /// Starts listening; errors name the address. The service must outlive the server.
  static Result<std::unique_ptr<RestServer>> start(const RestOptions& options, ApiService& service);
  ~RestServer();
  /// The URL it listens on ("http://127.0.0.1:8080").
  std::string url() const;
  /// Stops accepting; in-flight requests finish.
  void stop();

 private:
  struct Impl;
  explicit RestServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Sets the size of cpprestsdk's shared thread pool; call once, before any server or client
/// exists (the library's default is 40 threads, far too many for a 2-core host).
void rest_init_thread_pool(size_t threads);

}  // namespace mohge
