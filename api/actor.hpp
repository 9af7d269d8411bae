// The actor runtime (DESIGN.md §2, STYLE.md "State has one owner"): an actor is an object
// whose state is touched only by handlers running on its own Boost.Asio strand. Other actors
// talk to it with post() (fire and forget, in order); threads outside the io pool (the REST
// handlers) use ask(), which runs a function on the strand and waits for its result with a
// timeout. Never call ask() from an actor's own handler: it would wait on itself.
#pragma once

#include <utility>  // before Asio: its awaitable.hpp uses std::exchange

#include <boost/asio.hpp>

#include <chrono>
#include <future>
#include <memory>

#include "api/result.hpp"

namespace mohge {

class Actor {
 public:
  explicit Actor(boost::asio::any_io_executor executor)
      : strand_(boost::asio::make_strand(std::move(executor))) {}
  virtual ~Actor() = default;

  /// Runs `f` on the actor's strand, after what was posted before.
  template <class F>
  void post(F&& f) {
    boost::asio::post(strand_, std::forward<F>(f));
  }

  /// Runs `f` (returning Result<T>) on the strand and waits at most `timeout` for it.
  /// kUnavailable when the actor does not answer in time (the work may still run later).
  template <class T, class F>
  Result<T> ask(F&& f, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto promise = std::make_shared<std::promise<Result<T>>>();
    std::future<Result<T>> future = promise->get_future();
    boost::asio::post(strand_, [promise, f = std::forward<F>(f)]() mutable {
      try {
        promise->set_value(f());
      } catch (const std::exception& e) {
        promise->set_value(Error{ErrorCode::kInternal, e.what(), ""});
      }
    });
    if (future.wait_for(timeout) != std::future_status::ready) {
      return Error{
          ErrorCode::kUnavailable,
          "the coordinator is busy (no answer within " + std::to_string(timeout.count()) + " ms)",
          ""};
    }
    return future.get();
  }

  boost::asio::strand<boost::asio::any_io_executor>& strand() { return strand_; }

 protected:
  boost::asio::strand<boost::asio::any_io_executor> strand_;
};

}  // namespace mohge
