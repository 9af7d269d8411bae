// The control plane as a peer sees it: a byte stream of frames ([u32 big-endian length][JSON]),
// each decoded the way WorkerRegistry and the worker daemon decode them (api/messages.hpp),
// reports' metric records turned into rows as the MetricsSink does. Nothing may crash, hang
// or throw past the decoders.
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "api/messages.hpp"
#include "api/protocol.hpp"
#include "coordinator/metric_rows.hpp"

using nlohmann::json;
namespace proto = mohge::proto;

namespace {

void decode(const json& m) {
  const std::string type = m["type"].get<std::string>();
  if (type == proto::kHello) {
    (void)proto::decode_hello(m);
  } else if (type == proto::kHeartbeat) {
    if (auto hb = proto::decode_heartbeat(m); hb.ok()) (void)hb.value().load.to_json().dump();
  } else if (proto::is_report_type(type)) {
    auto r = proto::decode_report(m);
    if (!r.ok()) return;
    if (auto* metrics = std::get_if<proto::MetricsReport>(&r.value().body)) {
      for (const json& rec : metrics->records)
        (void)mohge::coord::metric_rows_from_record(r.value().job, rec);
    }
    if (auto* log = std::get_if<proto::LogReport>(&r.value().body)) {
      for (const std::string& line : log->lines) (void)json(line).dump();  // valid UTF-8
    }
  } else if (type == proto::kWelcome) {
    (void)proto::decode_welcome(m);
  } else if (type == proto::kRefused) {
    (void)proto::decode_refused(m);
  } else if (type == proto::kError) {
    (void)proto::decode_error(m);
  } else if (type == proto::kAck) {
    (void)proto::decode_ack(m);
  } else if (type == proto::kLaunch) {
    (void)proto::decode_launch(m);
  } else if (type == proto::kRvAll) {
    (void)proto::decode_rv_all(m);
  } else if (type == proto::kCancel || type == proto::kAbort) {
    (void)proto::decode_stop(m);
  } else if (type == proto::kCheckpoint) {
    (void)proto::decode_checkpoint_order(m);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t at = 0;
  while (at + 4 <= size) {
    const uint32_t n = (uint32_t{data[at]} << 24) | (uint32_t{data[at + 1]} << 16) |
                       (uint32_t{data[at + 2]} << 8) | data[at + 3];
    at += 4;
    // What Connection does: a length of 0 or over the limit, or past the input, ends it.
    if (n == 0 || n > proto::kMaxFrameBytes || n > size - at) break;
    const json m = json::parse(data + at, data + at + n, nullptr, false);
    at += n;
    if (m.is_discarded() || !m.is_object() || !m.contains("type") || !m["type"].is_string()) break;
    decode(m);
  }
  return 0;
}
