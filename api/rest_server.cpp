#include "api/rest_server.hpp"

#include "api/rest_request.hpp"

#include <cpprest/http_listener.h>
#include <cpprest/interopstream.h>
#include <pplx/threadpool.h>

#include <fstream>
#include <map>

namespace mohge {

namespace http = web::http;
using nlohmann::json;

int http_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kUnauthenticated:
      return 401;
    case ErrorCode::kPermissionDenied:
      return 403;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kFailedPrecondition:
      return 409;
    case ErrorCode::kPayloadTooLarge:
      return 413;
    case ErrorCode::kDataLoss:
    case ErrorCode::kUnprocessable:
      return 422;
    case ErrorCode::kUnavailable:
      return 503;
    case ErrorCode::kInternal:
      return 500;
  }
  return 500;
}

void rest_init_thread_pool(size_t threads) {
  crossplat::threadpool::initialize_with_threads(threads);
}

namespace {

json error_body(const Error& e) {
  json err = {{"code", error_code_name(e.code)}, {"message", e.message}};
  if (!e.field.empty()) err["field"] = e.field;
  return json{{"error", err}};
}

void reply_json(const http::http_request& req, int status, const json& body) {
  http::http_response resp(static_cast<http::status_code>(status));
  resp.headers().add("Cache-Control", "no-store");
  resp.set_body(body.dump(), "application/json");
  req.reply(resp);
}

void reply_error(const http::http_request& req, const Error& e) {
  reply_json(req, http_status(e.code), error_body(e));
}

const char* content_type_of(const std::filesystem::path& p) {
  const std::string ext = p.extension().string();
  if (ext == ".html") return "text/html; charset=utf-8";
  if (ext == ".js" || ext == ".mjs") return "text/javascript; charset=utf-8";
  if (ext == ".css") return "text/css; charset=utf-8";
  if (ext == ".json") return "application/json";
  if (ext == ".svg") return "image/svg+xml";
  if (ext == ".png") return "image/png";
  return "application/octet-stream";
}

// Files are read with std::ifstream through cpprestsdk's interop stream: its file streams
// close by waiting on a task of the same small thread pool the handlers run on, which
// deadlocks once every pool thread is doing that at once (seen with 2 threads serving the
// dashboard's files in parallel). The ifstream lives until the reply has been sent.
void reply_file(const http::http_request& req, const std::filesystem::path& file,
                const std::string& content_type, const std::string& download_name,
                const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  auto in = std::make_shared<std::ifstream>(file, std::ios::binary);
  if (ec || !*in) return reply_error(req, Error{ErrorCode::kNotFound, "file not found", ""});
  http::http_response resp(http::status_codes::OK);
  resp.set_body(concurrency::streams::stdio_istream<uint8_t>(*in), size, content_type);
  if (!download_name.empty()) {
    resp.headers().add("Content-Disposition", "attachment; filename=\"" + download_name + "\"");
  }
  for (const auto& [name, value] : headers) resp.headers().add(name, value);
  req.reply(resp).then([in](pplx::task<void> t) {
    try {
      t.get();
    } catch (const std::exception&) {
      // the client went away mid-download; nothing to do
    }
  });
}

}  // namespace

struct RestServer::Impl {
  RestOptions options;
  ApiService& service;
  std::unique_ptr<http::experimental::listener::http_listener> listener;
  std::string url;

  Impl(const RestOptions& o, ApiService& s) : options(o), service(s) {}

  void handle(const http::http_request& req) {
    try {
      route(req);
    } catch (const std::exception& e) {
      reply_error(req, Error{ErrorCode::kInternal, std::string("internal error: ") + e.what(), ""});
    }
  }

  Result<Caller> authenticate(const http::http_request& req) {
    const auto it = req.headers().find("Authorization");
    if (it == req.headers().end()) {
      return Error{ErrorCode::kUnauthenticated, "missing \"Authorization: Bearer <token>\" header",
                   "Authorization"};
    }
    const std::string& h = it->second;
    const std::string prefix = "Bearer ";
    if (h.size() <= prefix.size() || h.compare(0, prefix.size(), prefix) != 0) {
      return Error{ErrorCode::kUnauthenticated,
                   "the Authorization header must be \"Bearer <token>\"", "Authorization"};
    }
    return service.authenticate(h.substr(prefix.size()));
  }

  /// The JSON body, or 400 (not JSON) / 413 (too large).
  Result<json> body_json(const http::http_request& req) {
    const auto& headers = req.headers();
    if (headers.content_length() > options.max_body_bytes) {
      return Error{ErrorCode::kPayloadTooLarge,
                   "request body is " + std::to_string(headers.content_length()) +
                       " bytes; the limit is " + std::to_string(options.max_body_bytes),
                   ""};
    }
    const std::string body = http::http_request(req).extract_utf8string(true).get();
    if (body.size() > options.max_body_bytes) {
      return Error{ErrorCode::kPayloadTooLarge,
                   "request body exceeds " + std::to_string(options.max_body_bytes) + " bytes", ""};
    }
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) {
      return invalid_argument("body", "is not valid JSON");
    }
    return j;
  }

  template <class T>
  void reply(const http::http_request& req, const Result<T>& r, int ok_status = 200) {
    if (!r.ok()) return reply_error(req, r.error());
    reply_json(req, ok_status, r.value());
  }

  void route(const http::http_request& req) {
    Result<std::vector<std::string>> segments = rest_path_segments(req.relative_uri().path());
    if (!segments.ok()) return reply_error(req, segments.error());
    const std::vector<std::string>& seg = segments.value();
    const std::string& method = req.method();
    if (seg.size() < 2 || seg[0] != "api" || seg[1] != "v1") return static_file(req, seg);
    const std::vector<std::string> p(seg.begin() + 2, seg.end());
    const size_t n = p.size();
    auto is = [&](std::initializer_list<const char*> parts) {
      if (parts.size() != n) return false;
      size_t i = 0;
      for (const char* part : parts) {
        if (std::string(part) != "*" && p[i] != part) return false;
        ++i;
      }
      return true;
    };
    if (is({"healthz"})) {
      if (method != http::methods::GET) return method_not_allowed(req);
      return reply_json(req, 200, service.health());
    }
    Result<Caller> caller = authenticate(req);
    if (!caller.ok()) return reply_error(req, caller.error());
    const Caller& c = caller.value();
    Result<RestQuery> query = rest_parse_query(req.request_uri().query());
    if (!query.ok()) return reply_error(req, query.error());
    const RestQuery& q = query.value();

    if (is({"jobs"})) {
      if (method == http::methods::POST) {
        Result<json> body = body_json(req);
        if (!body.ok()) return reply_error(req, body.error());
        std::string key;
        if (const auto it = req.headers().find("Idempotency-Key"); it != req.headers().end()) {
          key = it->second;
          if (key.size() > 200) {
            return reply_error(
                req, invalid_argument("Idempotency-Key", "must be at most 200 characters"));
          }
        }
        Result<SubmitResult> r = service.submit_job(c, body.value(), key);
        if (!r.ok()) return reply_error(req, r.error());
        return reply_json(req, r.value().created ? 201 : 200, r.value().job);
      }
      if (method != http::methods::GET) return method_not_allowed(req);
      JobListQuery lq;
      lq.state = q.text("state");
      lq.user = q.text("user");
      Result<int64_t> offset = q.integer("offset", 0, 0, int64_t{1} << 40);
      Result<int64_t> limit = q.integer("limit", 50, 1, 1000);
      if (!offset.ok()) return reply_error(req, offset.error());
      if (!limit.ok()) return reply_error(req, limit.error());
      lq.offset = offset.value();
      lq.limit = limit.value();
      return reply(req, service.list_jobs(c, lq));
    }
    if (n >= 2 && p[0] == "jobs") {
      Result<int64_t> id = rest_parse_id(p[1], "job");
      if (!id.ok()) return reply_error(req, id.error());
      const int64_t job = id.value();
      if (n == 2) {
        if (method != http::methods::GET) return method_not_allowed(req);
        Result<std::string> text = service.get_job(c, job);
        if (!text.ok()) return reply_error(req, text.error());
        http::http_response resp(http::status_codes::OK);
        resp.headers().add("Cache-Control", "no-store");
        resp.set_body(text.value(), "application/json");
        req.reply(resp);
        return;
      }
      if (n == 3 && p[2] == "cancel") {
        if (method != http::methods::POST) return method_not_allowed(req);
        return reply(req, service.cancel_job(c, job));
      }
      if (method != http::methods::GET) return method_not_allowed(req);
      if (n == 3 && (p[2] == "events" || p[2] == "logs")) {
        Result<int64_t> since = q.integer("since", 0, 0, INT64_MAX);
        Result<int64_t> limit = q.integer("limit", 1000, 1, 10000);
        if (!since.ok()) return reply_error(req, since.error());
        if (!limit.ok()) return reply_error(req, limit.error());
        return reply(req, p[2] == "events"
                              ? service.job_events(c, job, since.value(), limit.value())
                              : service.job_logs(c, job, since.value(), limit.value()));
      }
      if (n == 3 && p[2] == "metrics") {
        MetricsQuery mq;
        if (const auto names = q.text("names")) {
          std::string cur;
          for (const char ch : *names + ",") {
            if (ch == ',') {
              if (!cur.empty()) mq.names.push_back(cur);
              cur.clear();
            } else {
              cur.push_back(ch);
            }
          }
        }
        Result<int64_t> since = q.integer("since", 0, 0, INT64_MAX);
        Result<int64_t> max_points = q.integer("max_points", 1000, 1, 100000);
        if (!since.ok()) return reply_error(req, since.error());
        if (!max_points.ok()) return reply_error(req, max_points.error());
        mq.since = since.value();
        mq.max_points = max_points.value();
        return reply(req, service.job_metrics(c, job, mq));
      }
      if (n == 3 && p[2] == "routing") return reply(req, service.job_routing(c, job));
      if (n == 3 && p[2] == "checkpoints") return reply(req, service.job_checkpoints(c, job));
      return reply_error(req, Error{ErrorCode::kNotFound, "no such resource", ""});
    }
    if (n == 3 && p[0] == "checkpoints") {
      if (method != http::methods::GET) return method_not_allowed(req);
      Result<int64_t> id = rest_parse_id(p[1], "checkpoint");
      if (!id.ok()) return reply_error(req, id.error());
      if (p[2] == "files") return reply(req, service.checkpoint_files(c, id.value()));
      if (p[2] == "download") {
        // Answered from whichever thread has the file ready; this REST thread is free now.
        return service.checkpoint_download(
            c, id.value(), [req, id = id.value()](Result<std::filesystem::path> file) {
              if (!file.ok()) return reply_error(req, file.error());
              reply_file(req, file.value(), "application/octet-stream",
                         "checkpoint-" + std::to_string(id) + ".safetensors");
            });
      }
    }
    if (is({"workers"})) {
      if (method != http::methods::GET) return method_not_allowed(req);
      return reply(req, service.list_workers(c));
    }
    if (is({"cluster"})) {
      if (method != http::methods::GET) return method_not_allowed(req);
      return reply(req, service.cluster(c));
    }
    if (is({"cluster", "join-secret"})) {
      if (method != http::methods::POST) return method_not_allowed(req);
      return reply(req, service.rotate_join_secret(c));
    }
    if (is({"users"})) {
      if (method == http::methods::GET) return reply(req, service.list_users(c));
      if (method != http::methods::POST) return method_not_allowed(req);
      Result<json> body = body_json(req);
      if (!body.ok()) return reply_error(req, body.error());
      return reply(req, service.create_user(c, body.value()), 201);
    }
    if (n == 3 && p[0] == "users" && p[2] == "tokens") {
      if (method != http::methods::POST) return method_not_allowed(req);
      Result<int64_t> id = rest_parse_id(p[1], "user");
      if (!id.ok()) return reply_error(req, id.error());
      Result<json> body = body_json(req);
      if (!body.ok()) return reply_error(req, body.error());
      return reply(req, service.create_token(c, id.value(), body.value()), 201);
    }
    if (n == 2 && p[0] == "tokens") {
      if (method != http::methods::DEL) return method_not_allowed(req);
      Result<int64_t> id = rest_parse_id(p[1], "token");
      if (!id.ok()) return reply_error(req, id.error());
      return reply(req, service.revoke_token(c, id.value()));
    }
    return reply_error(req, Error{ErrorCode::kNotFound, "no such resource", ""});
  }

  void method_not_allowed(const http::http_request& req) {
    reply_json(
        req, 405,
        error_body(Error{ErrorCode::kInvalidArgument,
                         "method " + req.method() + " is not allowed on this resource", ""}));
  }

  // The dashboard's files. The path is inside web_root by construction (no "..", checked
  // above) and must name a regular file.
  void static_file(const http::http_request& req, const std::vector<std::string>& seg) {
    if (req.method() != http::methods::GET || options.web_root.empty()) {
      return reply_error(req, Error{ErrorCode::kNotFound, "no such resource", ""});
    }
    std::filesystem::path file = options.web_root;
    for (const std::string& s : seg) file /= s;
    if (seg.empty()) file /= "index.html";
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) {
      return reply_error(req, Error{ErrorCode::kNotFound, "no such resource", ""});
    }
    // Scripts only from the coordinator itself: a value that slipped past the dashboard's
    // escaping still cannot run. (ECharts sets inline styles, hence 'unsafe-inline' for
    // styles only.)
    reply_file(req, file, content_type_of(file), "",
               {{"Content-Security-Policy",
                 "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                 "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                 "frame-ancestors 'none'"},
                {"X-Content-Type-Options", "nosniff"}});
  }
};

RestServer::RestServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RestServer::~RestServer() {
  stop();
}

Result<std::unique_ptr<RestServer>> RestServer::start(const RestOptions& options,
                                                      ApiService& service) {
  auto impl = std::make_unique<Impl>(options, service);
  impl->url = "http://" + options.listen;
  try {
    impl->listener = std::make_unique<http::experimental::listener::http_listener>(impl->url);
    Impl* raw = impl.get();
    impl->listener->support([raw](const http::http_request& req) { raw->handle(req); });
    impl->listener->open().wait();
  } catch (const std::exception& e) {
    return Error{ErrorCode::kUnavailable,
                 "cannot listen for HTTP on " + options.listen + ": " + e.what(), "--http"};
  }
  return std::unique_ptr<RestServer>(new RestServer(std::move(impl)));
}

std::string RestServer::url() const {
  return impl_->url;
}

void RestServer::stop() {
  if (impl_ && impl_->listener) {
    try {
      impl_->listener->close().wait();
    } catch (const std::exception&) {
    }
    impl_->listener.reset();
  }
}

}  // namespace mohge
