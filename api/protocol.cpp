#include "api/protocol.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace mohge::proto {

namespace asio = boost::asio;
using nlohmann::json;

std::string frame_encode(const json& message) {
  const std::string body = message.dump();
  const auto n = static_cast<uint32_t>(body.size());
  std::string out;
  out.reserve(4 + body.size());
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += body;
  return out;
}

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(const std::string& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out.push_back(kB64[(v >> (6 * k)) & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out.push_back(kB64[(v >> 18) & 63]);
    out.push_back(kB64[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kB64[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_decode(const std::string& text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (const char c : text) {
    const char* p = c == 0 ? nullptr : std::strchr(kB64, c);
    if (p == nullptr) continue;  // '=' padding and anything else
    acc = (acc << 6) | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

Connection::Connection(asio::ip::tcp::socket socket)
    : socket_(std::move(socket)), strand_(asio::make_strand(socket_.get_executor())) {
  boost::system::error_code ec;
  const auto ep = socket_.remote_endpoint(ec);
  peer_ = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
}

Connection::~Connection() = default;

void Connection::start(MessageHandler on_message, CloseHandler on_close) {
  on_message_ = std::move(on_message);
  on_close_ = std::move(on_close);
  asio::dispatch(strand_, [self = shared_from_this()] { self->read_header(); });
}

void Connection::read_header() {
  asio::async_read(socket_, asio::buffer(header_, 4),
                   asio::bind_executor(strand_, [self = shared_from_this()](
                                                    boost::system::error_code ec, size_t) {
                     if (ec)
                       return self->shutdown(ec == asio::error::eof ? "peer closed the connection"
                                                                    : ec.message());
                     const uint32_t n = (uint32_t{self->header_[0]} << 24) |
                                        (uint32_t{self->header_[1]} << 16) |
                                        (uint32_t{self->header_[2]} << 8) | self->header_[3];
                     if (n == 0 || n > self->max_frame_.load()) {
                       return self->shutdown("bad frame length " + std::to_string(n));
                     }
                     self->read_body(n);
                   }));
}

void Connection::read_body(uint32_t n) {
  body_.clear();
  read_more(n);
}

// Reads the body in chunks of at most 64 KiB, growing the buffer only by what arrived.
void Connection::read_more(uint32_t n) {
  constexpr size_t kChunk = 64 << 10;
  const size_t have = body_.size();
  const size_t chunk = std::min<size_t>(kChunk, n - have);
  body_.resize(have + chunk);
  asio::async_read(
      socket_, asio::buffer(body_.data() + have, chunk),
      asio::bind_executor(
          strand_, [self = shared_from_this(), n](boost::system::error_code ec, size_t) {
            if (ec) return self->shutdown(ec.message());
            if (self->body_.size() < n) return self->read_more(n);
            json message = json::parse(self->body_.begin(), self->body_.end(), nullptr, false);
            std::vector<char>().swap(self->body_);  // a large frame's buffer is not kept
            if (message.is_discarded() || !message.is_object() || !message.contains("type") ||
                !message["type"].is_string()) {
              return self->shutdown("malformed message (not a JSON object with a \"type\")");
            }
            if (!self->open_.load()) return;
            try {
              self->on_message_(message);
            } catch (const std::exception& e) {
              spdlog::error("control connection {}: message handler failed ({}); closing",
                            self->peer_, e.what());
              return self->shutdown(std::string("handler failed: ") + e.what());
            }
            if (self->open_.load()) self->read_header();
          }));
}

void Connection::send(const json& message) {
  if (!open_.load()) return;
  asio::dispatch(strand_, [self = shared_from_this(), frame = frame_encode(message)]() mutable {
    if (!self->open_.load()) return;
    self->out_.push_back(std::move(frame));
    if (self->out_.size() == 1) self->write_next();
  });
}

void Connection::write_next() {
  asio::async_write(socket_, asio::buffer(out_.front()),
                    asio::bind_executor(
                        strand_, [self = shared_from_this()](boost::system::error_code ec, size_t) {
                          if (ec) return self->shutdown(ec.message());
                          // Closed meanwhile (the read side saw EOF, or close()): the queue
                          // is abandoned and nothing more is written.
                          if (!self->open_.load()) return;
                          self->out_.pop_front();
                          if (!self->out_.empty()) {
                            self->write_next();
                          } else if (self->closing_) {
                            self->shutdown("closed");
                          }
                        }));
}

void Connection::close(const std::string& why) {
  asio::dispatch(strand_, [self = shared_from_this(), why] {
    if (self->out_.empty()) {
      self->shutdown(why);
    } else {
      self->closing_ = true;
    }
  });
}

void Connection::shutdown(const std::string& why) {
  if (!open_.exchange(false)) return;
  boost::system::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
  // out_ is left alone: a write of its front may still be in flight (its handler sees the
  // connection closed and stops); the queue goes with the connection.
  if (on_close_) {
    auto handler = std::move(on_close_);
    handler(why);
  }
  on_message_ = nullptr;
}

}  // namespace mohge::proto
