#include "api/rest_server.hpp"

#include <utility>  // before Asio: its awaitable.hpp uses std::exchange

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "api/rest_request.hpp"

namespace mohge {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
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
    case ErrorCode::kUnreachable:
      return 503;
    case ErrorCode::kInternal:
      return 500;
  }
  return 500;
}

namespace {

// The connection's limits. A request's header must arrive within kHeaderTime of the previous
// answer (keep-alive idle time included) and its body within kBodyTime; a response may stall
// (the client not reading) for kWriteStall at a time. After a 413 the rest of the body is read
// and dropped for at most kDrainTime / kDrainBytes, so the client sees the answer instead of a
// reset, then the connection is closed.
constexpr auto kHeaderTime = std::chrono::seconds(30);
constexpr auto kBodyTime = std::chrono::seconds(60);
constexpr auto kWriteStall = std::chrono::seconds(60);
constexpr auto kDrainTime = std::chrono::seconds(2);
constexpr size_t kDrainBytes = size_t{8} << 20;
constexpr uint32_t kHeaderLimit = 16 * 1024;

using Request = http::request<http::string_body>;

json error_body(const Error& e) {
  json err = {{"code", error_code_name(e.code)}, {"message", e.message}};
  if (!e.field.empty()) err["field"] = e.field;
  return json{{"error", err}};
}

// JSON text of an answer. Messages may echo decoded request bytes that are not UTF-8 (a "%FF"
// in a path): those are replaced, never a reason to fail the answer.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
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

template <class Name>
std::string header(const Request& req, Name name) {
  const auto it = req.find(name);
  return it == req.end() ? std::string() : std::string(it->value());
}

class Session;

// How many connections are open, and a way to reach each one when the server stops.
struct Connections {
  std::mutex mu;
  std::condition_variable drained;
  std::map<uint64_t, std::weak_ptr<Session>> open;
  uint64_t next_id = 0;
  std::atomic<bool> stopping{false};
};

// One HTTP/1.1 connection on its own strand: read a request (header, then a body of at most
// the limit), hand it to the router, write the answer, and again while the client keeps the
// connection alive. Answers may come from any thread (a checkpoint download is answered from
// the thread that consolidated it); they are moved onto the strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  using Router = std::function<void(std::shared_ptr<Session>, Request&&)>;

  Session(uint64_t id, tcp::socket socket, size_t max_body, Connections& connections, Router router)
      : stream_(std::move(socket)),
        max_body_(max_body),
        connections_(connections),
        router_(std::move(router)),
        id_(id) {}

  ~Session() {
    std::lock_guard<std::mutex> lock(connections_.mu);
    connections_.open.erase(id_);
    if (connections_.open.empty()) connections_.drained.notify_all();
  }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  /// Closes the connection if it is waiting for a request or still reading one (the server is
  /// stopping, or needs the place); one being answered closes after its answer.
  void close_if_reading() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      if (self->reading_.load()) return self->close();
      self->evicted_ = false;  // busy answering after all: it may be chosen again later
    });
  }
  /// True once for a connection waiting for (or reading) a request: it is the one to close
  /// to make room.
  bool claim_for_eviction() { return reading_.load() && !evicted_.exchange(true); }

  bool stopping() const { return connections_.stopping.load(); }

  /// Sends the answer to the request being served; from any thread, once per request.
  template <class Body>
  void send(http::response<Body>&& res) {
    auto msg = std::make_shared<http::response<Body>>(std::move(res));
    net::dispatch(stream_.get_executor(), [self = shared_from_this(), msg] {
      msg->keep_alive(self->keep_alive_ && !self->connections_.stopping.load());
      msg->prepare_payload();
      auto sr = std::make_shared<http::response_serializer<Body>>(*msg);
      self->write_some(msg, sr);
    });
  }

  /// Answers the request (from the strand, after it was read) that it cannot be served.
  void send_error(unsigned version, int status, const Error& e) {
    http::response<http::string_body> res{static_cast<http::status>(status), version};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = dump(error_body(e));
    send(std::move(res));
  }

 private:
  void read_header() {
    if (connections_.stopping.load()) return close();
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(max_body_);
    reading_ = true;
    stream_.expires_after(kHeaderTime);
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    const Request& req = parser_->get();
    keep_alive_ = req.keep_alive();
    if (req.version() >= 11 && beast::iequals(header(req, http::field::expect), "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_,
                                                                     req.version());
      stream_.expires_after(kWriteStall);
      return http::async_write(stream_, *cont,
                               [self = shared_from_this(), cont](beast::error_code e, size_t) {
                                 if (e) return self->close();
                                 self->read_body();
                               });
    }
    read_body();
  }

  void read_body() {
    stream_.expires_after(kBodyTime);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->reading_ = false;
                       if (ec) return self->on_read_error(ec);
                       self->router_(self, self->parser_->release());
                     });
  }

  // A body over the limit is answered 413 (from the header's Content-Length, or once a chunked
  // body passes it) and the connection is closed; malformed HTTP is answered 400; anything
  // else (the peer left, a timeout) just closes.
  void on_read_error(beast::error_code ec) {
    reading_ = false;
    const unsigned version = parser_->get().version() == 10 ? 10 : 11;
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      draining_ = true;
      // (A Content-Length over the limit stops the parser inside the header, before it would
      // answer content_length(); the field is read from the header text instead.)
      uint64_t announced = 0;
      const std::string length = header(parser_->get(), http::field::content_length);
      std::from_chars(length.data(), length.data() + length.size(), announced);
      return send_error(
          version, 413,
          Error{ErrorCode::kPayloadTooLarge,
                (announced > 0 ? "request body is " + std::to_string(announced) + " bytes"
                               : std::string("request body exceeds the limit")) +
                    "; the limit is " + std::to_string(max_body_) + " bytes",
                ""});
    }
    if (ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      keep_alive_ = false;
      return send_error(
          version, ec == http::error::header_limit ? 431 : 400,
          Error{ErrorCode::kInvalidArgument, "malformed HTTP request: " + ec.message(), ""});
    }
    close();
  }

  template <class Body>
  void write_some(std::shared_ptr<http::response<Body>> msg,
                  std::shared_ptr<http::response_serializer<Body>> sr) {
    stream_.expires_after(kWriteStall);
    http::async_write_some(stream_, *sr,
                           [self = shared_from_this(), msg, sr](beast::error_code ec, size_t) {
                             if (ec) return self->close();
                             if (!sr->is_done()) return self->write_some(msg, sr);
                             if (self->draining_) return self->drain();
                             if (!msg->keep_alive()) return self->close();
                             self->read_header();
                           });
  }

  // After a 413: no more sending; read and drop what the client still sends, within bounds.
  void drain() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    drain_buffer_.resize(64 * 1024);
    stream_.expires_after(kDrainTime);
    drain_some();
  }
  void drain_some() {
    stream_.async_read_some(net::buffer(drain_buffer_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->drained_ += n;
                              if (ec || self->drained_ >= kDrainBytes) return self->close();
                              self->drain_some();
                            });
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  beast::tcp_stream stream_;
  // Bounded: the header limit covers the header only, and a chunk-size line or trailer without
  // its end would otherwise grow the buffer for as long as the peer sends (400 past it).
  beast::flat_buffer buffer_{kHeaderLimit + 64 * 1024};
  std::optional<http::request_parser<http::string_body>> parser_;
  size_t max_body_;
  Connections& connections_;
  Router router_;
  const uint64_t id_;
  std::atomic<bool> reading_{false};  // waiting for a request or reading one
  std::atomic<bool> evicted_{false};  // chosen to make room
  bool keep_alive_ = false;           // of the request being served
  bool draining_ = false;
  std::vector<char> drain_buffer_;
  size_t drained_ = 0;
};

// The answer to one request: sent at most once, and if the handler forgets (a callback that is
// never called), the connection is closed rather than left waiting.
class Exchange {
 public:
  Exchange(std::shared_ptr<Session> session, unsigned version)
      : state_(std::make_shared<State>(std::move(session), version)) {}

  void json_body(int status, const json& body) const {
    text(status, dump(body), "application/json");
  }
  void text(int status, std::string body, const char* content_type) const {
    http::response<http::string_body> res{static_cast<http::status>(status), state_->version};
    res.set(http::field::content_type, content_type);
    res.set(http::field::cache_control, "no-store");
    res.body() = std::move(body);
    send(std::move(res));
  }
  void error(const Error& e) const { json_body(http_status(e.code), error_body(e)); }

  void file(const std::filesystem::path& path, const std::string& content_type,
            const std::string& download_name,
            const std::vector<std::pair<std::string, std::string>>& headers = {}) const {
    http::response<http::file_body> res{http::status::ok, state_->version};
    beast::error_code ec;
    res.body().open(path.c_str(), beast::file_mode::scan, ec);
    if (ec) return error(Error{ErrorCode::kNotFound, "file not found", ""});
    res.set(http::field::content_type, content_type);
    if (!download_name.empty()) {
      res.set(http::field::content_disposition, "attachment; filename=\"" + download_name + "\"");
    }
    for (const auto& [name, value] : headers) res.set(name, value);
    send(std::move(res));
  }

 private:
  struct State {
    State(std::shared_ptr<Session> s, unsigned v) : session(std::move(s)), version(v) {}
    ~State() {
      // (While the server stops, an unanswered connection is simply closed with the rest.)
      if (!sent.exchange(true) && !session->stopping()) {
        session->send_error(version, 500,
                            Error{ErrorCode::kInternal, "the request was not answered", ""});
      }
    }
    std::shared_ptr<Session> session;
    unsigned version;
    std::atomic<bool> sent{false};
  };

  template <class Body>
  void send(http::response<Body>&& res) const {
    if (state_->sent.exchange(true)) return;
    state_->session->send(std::move(res));
  }

  std::shared_ptr<State> state_;
};

}  // namespace

struct RestServer::Impl {
  RestOptions options;
  ApiService& service;
  std::string url;
  Connections connections;
  std::vector<std::thread> threads;
  // Last, so it is destroyed first: handlers it still holds (sessions) go while the rest lives.
  net::io_context io;
  tcp::acceptor acceptor{net::make_strand(io)};
  net::steady_timer accept_pause{acceptor.get_executor()};

  Impl(const RestOptions& o, ApiService& s) : options(o), service(s) {}

  void accept() {
    acceptor.async_accept(net::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (ec) {
        // Out of descriptors, say: try again shortly instead of spinning.
        accept_pause.expires_after(std::chrono::milliseconds(100));
        return accept_pause.async_wait([this](beast::error_code e) {
          if (!e) accept();
        });
      }
      open_session(std::move(socket));
      accept();
    });
  }

  // At the limit, the oldest connection that is still waiting for (or reading) a request
  // makes room: a peer holding many silent connections cannot lock others out, it only loses
  // its own. When every connection is being answered, the new one is closed.
  void open_session(tcp::socket socket) {
    std::shared_ptr<Session> session;
    std::shared_ptr<Session> evicted;
    // Sessions locked while looking are released only after the lock: the last reference to
    // one may be ours, and its destructor takes the same lock.
    std::vector<std::shared_ptr<Session>> looked_at;
    {
      std::lock_guard<std::mutex> lock(connections.mu);
      if (connections.open.size() >= options.max_connections) {
        for (const auto& [id, weak] : connections.open) {
          looked_at.push_back(weak.lock());
          if (looked_at.back() && looked_at.back()->claim_for_eviction()) {
            evicted = looked_at.back();
            break;
          }
        }
      }
      if (connections.stopping.load() ||
          (connections.open.size() >= options.max_connections && !evicted)) {
        beast::error_code ec;
        socket.close(ec);
        return;
      }
      const uint64_t id = ++connections.next_id;
      session = std::make_shared<Session>(
          id, std::move(socket), options.max_body_bytes, connections,
          [this](std::shared_ptr<Session> s, Request&& req) { handle(std::move(s), req); });
      connections.open[id] = session;
    }
    if (evicted) evicted->close_if_reading();
    session->start();
  }

  void handle(std::shared_ptr<Session> session, const Request& req) {
    const Exchange ex(std::move(session), req.version());
    try {
      route(ex, req);
    } catch (const std::exception& e) {
      ex.error(Error{ErrorCode::kInternal, std::string("internal error: ") + e.what(), ""});
    } catch (...) {
      ex.error(Error{ErrorCode::kInternal, "internal error", ""});
    }
  }

  Result<Caller> authenticate(const Request& req) {
    if (req.find(http::field::authorization) == req.end()) {
      return Error{ErrorCode::kUnauthenticated, "missing \"Authorization: Bearer <token>\" header",
                   "Authorization"};
    }
    const std::string h = header(req, http::field::authorization);
    const std::string prefix = "Bearer ";
    if (h.size() <= prefix.size() || h.compare(0, prefix.size(), prefix) != 0) {
      return Error{ErrorCode::kUnauthenticated,
                   "the Authorization header must be \"Bearer <token>\"", "Authorization"};
    }
    return service.authenticate(h.substr(prefix.size()));
  }

  /// The JSON body, or 400 (not JSON). Its size was bounded while reading (413).
  static Result<json> body_json(const Request& req) {
    json j = json::parse(req.body(), nullptr, false);
    if (j.is_discarded()) return invalid_argument("body", "is not valid JSON");
    return j;
  }

  template <class T>
  static void reply(const Exchange& ex, const Result<T>& r, int ok_status = 200) {
    if (!r.ok()) return ex.error(r.error());
    ex.json_body(ok_status, r.value());
  }

  /// POST of a job or an experiment: the JSON body and the Idempotency-Key header handed to
  /// `call`; 201 when it created something, 200 when the key found an earlier submit.
  template <class Call>
  static void submit(const Exchange& ex, const Request& req, Call&& call) {
    Result<json> body = body_json(req);
    if (!body.ok()) return ex.error(body.error());
    const std::string key = header(req, "Idempotency-Key");
    if (key.size() > 200) {
      return ex.error(invalid_argument("Idempotency-Key", "must be at most 200 characters"));
    }
    Result<SubmitResult> r = call(body.value(), key);
    if (!r.ok()) return ex.error(r.error());
    ex.json_body(r.value().created ? 201 : 200, r.value().job);
  }

  /// The `offset` and `limit` of a listing (limit 1..1000, default 50).
  static Status read_page(const RestQuery& q, int64_t& offset, int64_t& limit) {
    Result<int64_t> o = q.integer("offset", 0, 0, int64_t{1} << 40);
    if (!o.ok()) return o.error();
    Result<int64_t> l = q.integer("limit", 50, 1, 1000);
    if (!l.ok()) return l.error();
    offset = o.value();
    limit = l.value();
    return {};
  }

  static void method_not_allowed(const Exchange& ex, const std::string& method) {
    ex.json_body(405,
                 error_body(Error{ErrorCode::kInvalidArgument,
                                  "method " + method + " is not allowed on this resource", ""}));
  }

  void route(const Exchange& ex, const Request& req) {
    const std::string target(req.target());
    if (target.empty() || target[0] != '/') {
      return ex.error(invalid_argument("target", "the request target must be a path"));
    }
    const size_t qmark = target.find('?');
    Result<std::vector<std::string>> segments = rest_path_segments(target.substr(0, qmark));
    if (!segments.ok()) return ex.error(segments.error());
    const std::vector<std::string>& seg = segments.value();
    const std::string method(req.method_string());
    if (seg.size() < 2 || seg[0] != "api" || seg[1] != "v1") return static_file(ex, method, seg);
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
    auto not_allowed = [&] { method_not_allowed(ex, method); };
    if (is({"healthz"})) {
      if (method != "GET") return not_allowed();
      return ex.json_body(200, service.health());
    }
    Result<Caller> caller = authenticate(req);
    if (!caller.ok()) return ex.error(caller.error());
    const Caller& c = caller.value();
    Result<RestQuery> query =
        rest_parse_query(qmark == std::string::npos ? "" : target.substr(qmark + 1));
    if (!query.ok()) return ex.error(query.error());
    const RestQuery& q = query.value();

    if (is({"jobs"})) {
      if (method == "POST") {
        return submit(ex, req, [&](const json& body, const std::string& key) {
          return service.submit_job(c, body, key);
        });
      }
      if (method != "GET") return not_allowed();
      JobListQuery lq;
      lq.state = q.text("state");
      lq.user = q.text("user");
      if (Status page = read_page(q, lq.offset, lq.limit); !page.ok())
        return ex.error(page.error());
      return reply(ex, service.list_jobs(c, lq));
    }
    if (n >= 2 && p[0] == "jobs") {
      Result<int64_t> id = rest_parse_id(p[1], "job");
      if (!id.ok()) return ex.error(id.error());
      const int64_t job = id.value();
      if (n == 2) {
        if (method != "GET") return not_allowed();
        Result<std::string> text = service.get_job(c, job);
        if (!text.ok()) return ex.error(text.error());
        return ex.text(200, std::move(text).value(), "application/json");
      }
      if (n == 3 && p[2] == "cancel") {
        if (method != "POST") return not_allowed();
        return reply(ex, service.cancel_job(c, job));
      }
      if (method != "GET") return not_allowed();
      if (n == 3 && (p[2] == "events" || p[2] == "logs")) {
        Result<int64_t> since = q.integer("since", 0, 0, INT64_MAX);
        Result<int64_t> limit = q.integer("limit", 1000, 1, 10000);
        if (!since.ok()) return ex.error(since.error());
        if (!limit.ok()) return ex.error(limit.error());
        return reply(ex, p[2] == "events" ? service.job_events(c, job, since.value(), limit.value())
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
        if (!since.ok()) return ex.error(since.error());
        if (!max_points.ok()) return ex.error(max_points.error());
        mq.since = since.value();
        mq.max_points = max_points.value();
        return reply(ex, service.job_metrics(c, job, mq));
      }
      if (n == 3 && p[2] == "routing") return reply(ex, service.job_routing(c, job));
      if (n == 3 && p[2] == "checkpoints") return reply(ex, service.job_checkpoints(c, job));
      return ex.error(Error{ErrorCode::kNotFound, "no such resource", ""});
    }
    if (is({"experiments"})) {
      if (method == "POST") {
        return submit(ex, req, [&](const json& body, const std::string& key) {
          return service.submit_experiment(c, body, key);
        });
      }
      if (method != "GET") return not_allowed();
      ExperimentListQuery lq;
      lq.user = q.text("user");
      if (Status page = read_page(q, lq.offset, lq.limit); !page.ok())
        return ex.error(page.error());
      return reply(ex, service.list_experiments(c, lq));
    }
    if ((n == 2 || n == 3) && p[0] == "experiments") {
      Result<int64_t> id = rest_parse_id(p[1], "experiment");
      if (!id.ok()) return ex.error(id.error());
      if (n == 2) {
        if (method != "GET") return not_allowed();
        return reply(ex, service.get_experiment(c, id.value()));
      }
      if (p[2] != "cancel") return ex.error(Error{ErrorCode::kNotFound, "no such resource", ""});
      if (method != "POST") return not_allowed();
      return reply(ex, service.cancel_experiment(c, id.value()));
    }
    if (n == 3 && p[0] == "checkpoints") {
      if (method != "GET") return not_allowed();
      Result<int64_t> id = rest_parse_id(p[1], "checkpoint");
      if (!id.ok()) return ex.error(id.error());
      if (p[2] == "files") return reply(ex, service.checkpoint_files(c, id.value()));
      if (p[2] == "download") {
        // Answered from whichever thread has the file ready; this REST thread is free now.
        return service.checkpoint_download(
            c, id.value(), [ex, id = id.value()](Result<std::filesystem::path> file) {
              if (!file.ok()) return ex.error(file.error());
              ex.file(file.value(), "application/octet-stream",
                      "checkpoint-" + std::to_string(id) + ".safetensors");
            });
      }
    }
    if (is({"workers"})) {
      if (method != "GET") return not_allowed();
      return reply(ex, service.list_workers(c));
    }
    if (is({"cluster"})) {
      if (method != "GET") return not_allowed();
      return reply(ex, service.cluster(c));
    }
    if (is({"cluster", "join-secret"})) {
      if (method != "POST") return not_allowed();
      return reply(ex, service.rotate_join_secret(c));
    }
    if (is({"users"})) {
      if (method == "GET") return reply(ex, service.list_users(c));
      if (method != "POST") return not_allowed();
      Result<json> body = body_json(req);
      if (!body.ok()) return ex.error(body.error());
      return reply(ex, service.create_user(c, body.value()), 201);
    }
    if (n == 3 && p[0] == "users" && p[2] == "tokens") {
      if (method != "POST") return not_allowed();
      Result<int64_t> id = rest_parse_id(p[1], "user");
      if (!id.ok()) return ex.error(id.error());
      Result<json> body = body_json(req);
      if (!body.ok()) return ex.error(body.error());
      return reply(ex, service.create_token(c, id.value(), body.value()), 201);
    }
    if (n == 2 && p[0] == "tokens") {
      if (method != "DELETE") return not_allowed();
      Result<int64_t> id = rest_parse_id(p[1], "token");
      if (!id.ok()) return ex.error(id.error());
      return reply(ex, service.revoke_token(c, id.value()));
    }
    return ex.error(Error{ErrorCode::kNotFound, "no such resource", ""});
  }

  // The dashboard's files. The path is inside web_root by construction (no "..", checked
  // above) and must name a regular file.
  void static_file(const Exchange& ex, const std::string& method,
                   const std::vector<std::string>& seg) {
    if (method != "GET" || options.web_root.empty()) {
      return ex.error(Error{ErrorCode::kNotFound, "no such resource", ""});
    }
    std::filesystem::path file = options.web_root;
    for (const std::string& s : seg) file /= s;
    if (seg.empty()) file /= "index.html";
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) {
      return ex.error(Error{ErrorCode::kNotFound, "no such resource", ""});
    }
    // Scripts only from the coordinator itself: a value that slipped past the dashboard's
    // escaping still cannot run. (ECharts sets inline styles, hence 'unsafe-inline' for
    // styles only.)
    ex.file(file, content_type_of(file), "",
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
  const size_t colon = options.listen.rfind(':');
  const auto cannot = [&](const std::string& why) {
    return Error{ErrorCode::kUnavailable,
                 "cannot listen for HTTP on " + options.listen + ": " + why, "--http"};
  };
  if (colon == std::string::npos) return cannot("expected HOST:PORT");
  beast::error_code ec;
  const std::string host = options.listen.substr(0, colon);
  const std::string port = options.listen.substr(colon + 1);
  tcp::resolver resolver(impl->io);
  const auto endpoints = resolver.resolve(host, port, tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) return cannot(ec ? ec.message() : "no such address");
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  tcp::acceptor& a = impl->acceptor;
  if (a.open(endpoint.protocol(), ec); ec) return cannot(ec.message());
  if (a.set_option(net::socket_base::reuse_address(true), ec); ec) return cannot(ec.message());
  if (a.bind(endpoint, ec); ec) return cannot(ec.message());
  if (a.listen(net::socket_base::max_listen_connections, ec); ec) return cannot(ec.message());
  impl->url = "http://" + options.listen;
  impl->accept();
  for (size_t i = 0; i < std::max<size_t>(options.threads, 1); ++i) {
    impl->threads.emplace_back([m = impl.get()] { m->io.run(); });
  }
  return std::unique_ptr<RestServer>(new RestServer(std::move(impl)));
}

std::string RestServer::url() const {
  return impl_->url;
}

void RestServer::stop() {
  if (!impl_ || impl_->threads.empty()) return;
  Impl& m = *impl_;
  m.connections.stopping = true;
  net::dispatch(m.acceptor.get_executor(), [&m] {
    beast::error_code ec;
    m.acceptor.close(ec);
    m.accept_pause.cancel();
  });
  // Connections waiting for a request close now; the busy ones after their answer (for up to
  // five seconds).
  std::vector<std::shared_ptr<Session>> open;
  {
    std::lock_guard<std::mutex> lock(m.connections.mu);
    for (const auto& [id, weak] : m.connections.open)
      if (auto s = weak.lock()) open.push_back(std::move(s));
  }
  for (const auto& s : open) s->close_if_reading();
  open.clear();
  {
    std::unique_lock<std::mutex> lock(m.connections.mu);
    m.connections.drained.wait_for(lock, std::chrono::seconds(5),
                                   [&m] { return m.connections.open.empty(); });
  }
  m.io.stop();
  for (std::thread& t : m.threads) t.join();
  m.threads.clear();
  // The close posted above may not have run before the threads stopped; none runs now.
  beast::error_code ec;
  m.acceptor.close(ec);
  m.accept_pause.cancel();
}

}  // namespace mohge
