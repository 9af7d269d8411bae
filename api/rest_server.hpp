// The REST edge (DESIGN.md §8; every route is in api/openapi.yaml): an HTTP/1.1 server on
// Boost.Beast with its own thread pool. (Not cpprestsdk's listener, as DESIGN.md §12 first had
// it: that buffers every request body whole before a handler sees it, so a chunked body of any
// size reached memory; Beast's parser stops at the limit. See api/README.md.) Handlers parse and
// validate the request, authenticate, call ApiService, and map its Error to an HTTP status in one
// table (http_status()); they hold no state. Static dashboard files are served from `web_root` at
// "/".
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
  size_t threads = 2;                     // threads serving requests
  size_t max_connections = 512;           // connections past this are closed at once
  std::filesystem::path web_root;         // static files ("/" → index.html); empty: none
};

class RestServer {
 public:
  /// Starts listening; errors name the address. The service must outlive the server, and
  /// answer callbacks it holds (checkpoint downloads) must have run or been destroyed before
  /// the server is: they hold the connection, whose I/O belongs to the server.
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

}  // namespace mohge
