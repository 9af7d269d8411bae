#include "api/messages.hpp"

#include <filesystem>

#include "api/field_reader.hpp"
#include "api/paths.hpp"
#include "api/protocol.hpp"

namespace mohge::proto {

using nlohmann::json;

namespace {

constexpr int64_t kMaxStep = int64_t{1} << 40;
constexpr int64_t kMaxId = int64_t{1} << 53;  // ids and seqs stay exact in JSON doubles

template <class T>
Result<T> first_error_or(std::vector<Error>& errors, T value) {
  if (!errors.empty()) return errors.front();
  return value;
}

bool valid_worker_name(const std::string& s) {
  if (s.empty() || s.size() > kMaxWorkerNameBytes) return false;
  for (const char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::vector<RunningRank> read_running(const FieldReader& r, std::vector<Error>& errors) {
  std::vector<RunningRank> out;
  const json* list = r.array("running", false, kMaxRunning);
  if (list == nullptr) return out;
  for (size_t i = 0; i < list->size(); ++i) {
    FieldReader e((*list)[i], r.field("running") + "[" + std::to_string(i) + "]", errors);
    RunningRank rr;
    e.integer("job", rr.job, true, 1, kMaxId);
    e.integer("attempt", rr.attempt, true, 1, 1 << 30);
    e.integer("rank", rr.rank, true, 0, kMaxWorld - 1);
    e.integer("world", rr.world, true, 1, kMaxWorld);
    e.integer("step", rr.step, false, 0, kMaxStep);
    out.push_back(rr);
  }
  return out;
}

// An optional "seq" (a report's number for the acknowledgement).
std::optional<int64_t> read_seq(const FieldReader& r) {
  if (!r.has("seq")) return std::nullopt;
  int64_t seq = 0;
  r.integer("seq", seq, true, 0, kMaxId);
  return seq;
}

// An optional human-readable "reason", cut to kMaxReasonBytes.
std::string read_reason(const FieldReader& r) {
  std::string reason;
  r.string("reason", reason, false);
  return utf8_prefix(reason, kMaxReasonBytes);
}

// The job rank a report or an order is about.
void read_job(const FieldReader& r, int64_t& job, int& attempt) {
  r.integer("job", job, true, 1, kMaxId);
  r.integer("attempt", attempt, true, 1, 1 << 30);
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (const char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// Numbers, booleans, arrays and objects of those; see check_metric_record.
Status check_number_tree(const json& v, const std::string& field, int depth) {
  if (v.is_number() || v.is_boolean()) return {};
  if (depth >= 6) return invalid_argument(field, "nests deeper than 6 levels");
  if (v.is_array()) {
    if (v.size() > 4096) return invalid_argument(field, "must have at most 4096 elements");
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i].is_number()) continue;  // the common case, without building the field name
      Status s = check_number_tree(v[i], field + "[" + std::to_string(i) + "]", depth + 1);
      if (!s.ok()) return s;
    }
    return {};
  }
  if (v.is_object()) {
    if (v.size() > 256) return invalid_argument(field, "must have at most 256 keys");
    for (const auto& [key, value] : v.items()) {
      bool ok = !key.empty() && key.size() <= 64;
      for (const char c : key)
        ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.');
      if (!ok) return invalid_argument(field, "has a key that is not 1–64 of [A-Za-z0-9_.]");
      Status s = check_number_tree(value, field + "." + key, depth + 1);
      if (!s.ok()) return s;
    }
    return {};
  }
  return invalid_argument(field, "must hold only numbers, booleans, arrays and objects");
}

}  // namespace

bool is_report_type(const std::string& type) {
  return type == kRvPublish || type == kMetrics || type == kLog || type == kCheckpointWritten ||
         type == kRankExited;
}

json Load::to_json() const {
  json j = {{"load1", load1}, {"rss_bytes", rss_bytes}, {"cores", cores}};
  if (!gpus.empty()) {
    json list = json::array();
    for (const GpuLoad& g : gpus) {
      list.push_back({{"index", g.index},
                      {"utilization_pct", g.utilization_pct},
                      {"memory_used_mb", g.memory_used_mb},
                      {"memory_total_mb", g.memory_total_mb}});
    }
    j["gpus"] = list;
  }
  return j;
}

std::string utf8_prefix(const std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t n = max_bytes;
  // Back up over continuation bytes (10xxxxxx) to the start of the cut sequence.
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(0, n);
}

Result<Hello> decode_hello(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "hello", errors);
  Hello h;
  r.integer("protocol", h.protocol, true, 0, 1 << 20);
  if (!errors.empty()) return errors.front();  // the version decides how to read the rest
  r.string("name", h.name, true, kMaxWorkerNameBytes);
  if (errors.empty() && !valid_worker_name(h.name))
    r.fail("name", "must be 1–64 characters of A-Z, a-z, 0-9, '.', '_', '-'");
  r.string("instance", h.instance, false, kMaxTextBytes);
  r.string("secret", h.secret, false, kMaxTextBytes);
  r.string("host", h.host, false, kMaxTextBytes);
  r.choice("backend", h.backend, {"cpu", "cuda"}, false);
  r.string("version", h.version, false, kMaxTextBytes);
  r.integer("threads", h.threads, false, 0, 1 << 16);
  if (const json* devices = r.array("devices", false, kMaxDevices)) {
    for (size_t i = 0; i < devices->size(); ++i) {
      FieldReader d((*devices)[i], "hello.devices[" + std::to_string(i) + "]", errors);
      int index = 0, cores = 0;
      int64_t memory_mb = 0;
      std::string kind = "cpu", name;
      d.integer("index", index, true, 0, 1 << 16);
      d.choice("kind", kind, {"cpu", "cuda"}, true);
      d.integer("cores", cores, false, 0, 1 << 20);
      d.string("name", name, false, kMaxDeviceNameBytes);  // the GPU's model
      d.integer("memory_mb", memory_mb, false, 0, int64_t{1} << 30);
      json dev = {{"index", index}, {"kind", kind}};
      if (d.has("cores")) dev["cores"] = cores;
      if (d.has("name")) dev["name"] = name;
      if (d.has("memory_mb")) dev["memory_mb"] = memory_mb;
      h.devices.push_back(dev);
    }
  }
  h.running = read_running(r, errors);
  return first_error_or(errors, std::move(h));
}

Result<Heartbeat> decode_heartbeat(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "heartbeat", errors);
  Heartbeat h;
  h.running = read_running(r, errors);
  if (const json* load = r.object("load", false)) {
    FieldReader l(*load, "heartbeat.load", errors);
    l.real("load1", h.load.load1, false, 0.0, 1e6);
    l.integer("rss_bytes", h.load.rss_bytes, false, 0, int64_t{1} << 50);
    l.integer("cores", h.load.cores, false, 0, 1 << 20);
    if (const json* gpus = l.array("gpus", false, kMaxHeartbeatGpus)) {
      for (size_t i = 0; i < gpus->size(); ++i) {
        FieldReader g((*gpus)[i], "heartbeat.load.gpus[" + std::to_string(i) + "]", errors);
        GpuLoad gl;
        g.integer("index", gl.index, true, 0, 1023);
        g.real("utilization_pct", gl.utilization_pct, true, 0.0, 100.0);
        g.integer("memory_used_mb", gl.memory_used_mb, true, 0, int64_t{1} << 40);
        g.integer("memory_total_mb", gl.memory_total_mb, true, 0, int64_t{1} << 40);
        h.load.gpus.push_back(gl);
      }
    }
  }
  return first_error_or(errors, std::move(h));
}

Status check_metric_record(const json& record, const std::string& field) {
  if (!record.is_object()) return invalid_argument(field, "must be a JSON object");
  const auto step = record.find("step");
  if (step == record.end() || !step->is_number_integer() || step->get<int64_t>() < 0 ||
      step->get<int64_t>() > kMaxStep)
    return invalid_argument(field + ".step", "is required: an integer in [0, 2^40]");
  return check_number_tree(record, field, 0);
}

Result<Report> decode_report(const json& m) {
  std::vector<Error> errors;
  Report rep;
  {
    FieldReader head(m, "report", errors);
    head.string("type", rep.type, true);
  }
  if (!errors.empty()) return errors.front();
  if (!is_report_type(rep.type)) return invalid_argument("type", "is not a report type");
  FieldReader r(m, rep.type, errors);
  rep.seq = read_seq(r);
  read_job(r, rep.job, rep.attempt);
  r.integer("rank", rep.rank, true, 0, kMaxWorld - 1);
  if (rep.type == kRvPublish) {
    RvPublish b;
    r.integer("round", b.round, true, 0, kMaxRounds);
    r.string("blob", b.blob, true, kMaxBlobBytes);
    rep.body = std::move(b);
  } else if (rep.type == kMetrics) {
    MetricsReport b;
    if (const json* records = r.array("records", true, kMaxRecords)) {
      for (size_t i = 0; i < records->size() && errors.empty(); ++i) {
        Status s = check_metric_record((*records)[i], "metrics.records[" + std::to_string(i) + "]");
        if (!s.ok()) errors.push_back(s.error());
      }
      b.records = *records;
    }
    rep.body = std::move(b);
  } else if (rep.type == kLog) {
    LogReport b;
    if (r.has("at")) {
      double at = 0;
      r.real("at", at, true, 0.0, 1e11);
      b.at = at;
    }
    if (const json* lines = r.array("lines", true, kMaxLogLines)) {
      for (const json& line : *lines) {
        if (!line.is_string()) {
          r.fail("lines", "must be an array of strings");
          break;
        }
        b.lines.push_back(utf8_prefix(line.get<std::string>(), kMaxLogLineBytes));
      }
    }
    rep.body = std::move(b);
  } else if (rep.type == kCheckpointWritten) {
    CheckpointWritten b;
    r.integer("world", b.world, true, 1, kMaxWorld);
    r.integer("step", b.step, true, 0, kMaxStep);
    r.integer("keep", b.keep, false, 1, 1 << 20);
    r.string("path", b.path, true, 1024);
    if (errors.empty() && !path_is_confined(b.path))
      r.fail("path", "must be a relative path without \"..\"");
    if (const json* files = r.array("files", true, kMaxCheckpointFiles)) {
      for (size_t i = 0; i < files->size(); ++i) {
        FieldReader f((*files)[i], "checkpoint_written.files[" + std::to_string(i) + "]", errors);
        FileEntry e;
        f.string("name", e.name, true, 255);
        f.integer("bytes", e.bytes, true, 0, int64_t{1} << 50);
        f.string("sha256", e.sha256, true, 64);
        if (e.name.empty() || e.name == "." || e.name == ".." ||
            e.name.find('/') != std::string::npos || e.name.find('\0') != std::string::npos)
          f.fail("name", "must be a plain file name");
        if (!is_hex64(e.sha256)) f.fail("sha256", "must be 64 lowercase hex digits");
        b.files.push_back(std::move(e));
      }
    }
    rep.body = std::move(b);
  } else {  // rank_exited
    RankExited b;
    r.boolean("ok", b.ok);
    r.boolean("stopped", b.stopped);
    r.integer("step", b.step, false, 0, kMaxStep);
    if (const json* error = r.object("error", false)) {
      FieldReader e(*error, "rank_exited.error", errors);
      e.string("code", b.error_code, false, 64);
      std::string message;
      e.string("message", message, false);
      b.error_message = utf8_prefix(message, kMaxReasonBytes);
    }
    if (const json* peers = r.array("unreachable", false, kMaxWorld)) {
      for (const json& p : *peers) {
        if (!p.is_number_integer() || p.get<int64_t>() < 0 || p.get<int64_t>() >= kMaxWorld) {
          r.fail("unreachable", "must be an array of ranks");
          break;
        }
        b.unreachable.push_back(p.get<int>());
      }
    }
    rep.body = std::move(b);
  }
  if (rep.type == kCheckpointWritten && errors.empty() &&
      rep.rank >= std::get<CheckpointWritten>(rep.body).world)
    errors.push_back(invalid_argument("checkpoint_written.rank", "must be below world"));
  return first_error_or(errors, std::move(rep));
}

Result<Welcome> decode_welcome(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "welcome", errors);
  Welcome w;
  r.integer("protocol", w.protocol, true, 0, 1 << 20);
  r.real("heartbeat_s", w.heartbeat_s, false, 0.01, 3600.0);
  r.string("coordinator_version", w.coordinator_version, false, kMaxTextBytes);
  return first_error_or(errors, std::move(w));
}

Result<Refused> decode_refused(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "refused", errors);
  Refused out;
  out.reason = read_reason(r);
  r.boolean("retry", out.retry);
  return first_error_or(errors, std::move(out));
}

Result<ErrorFrame> decode_error(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "error", errors);
  ErrorFrame out;
  out.reason = read_reason(r);
  out.seq = read_seq(r);
  return first_error_or(errors, std::move(out));
}

Result<Ack> decode_ack(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "ack", errors);
  Ack out;
  if (const json* seqs = r.array("seqs", true, 1 << 20)) {
    for (const json& s : *seqs) {
      if (!s.is_number_integer()) {
        r.fail("seqs", "must be an array of integers");
        break;
      }
      out.seqs.push_back(s.get<int64_t>());
    }
  }
  return first_error_or(errors, std::move(out));
}

Result<Launch> decode_launch(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "launch", errors);
  Launch l;
  read_job(r, l.job, l.attempt);
  r.integer("world", l.world, true, 1, kMaxWorld);
  r.integer("rank", l.rank, true, 0, kMaxWorld - 1);
  if (errors.empty() && l.rank >= l.world) r.fail("rank", "must be below world");
  if (const json* spec = r.object("spec", true)) l.spec = *spec;
  r.string("run_dir", l.run_dir, true, 1024);
  if (errors.empty() && !path_is_confined(l.run_dir))
    r.fail("run_dir", "must be a relative path without \"..\"");
  r.boolean("resume", l.resume);
  r.real("comm_timeout_s", l.comm_timeout_s, false, 0.1, 86400.0);
  if (const json* peers = r.array("peers", false, kMaxWorld)) {
    auto name_ok = [](const json& v) {
      bool ok = v.is_string() && v.get_ref<const std::string&>().size() <= kMaxPeerNameBytes;
      if (ok)
        for (const char c : v.get_ref<const std::string&>()) ok = ok && c >= 0x20 && c < 0x7f;
      return ok;
    };
    for (const json& p : *peers) {
      if (!p.is_object() || !name_ok(p.value("worker", json())) ||
          !name_ok(p.value("host", json()))) {
        r.fail("peers",
               "must be an array of {\"worker\", \"host\"}, each printable ASCII of at most " +
                   std::to_string(kMaxPeerNameBytes) + " bytes");
        break;
      }
      l.peers.push_back({p["worker"].get<std::string>(), p["host"].get<std::string>()});
    }
    if (errors.empty() && static_cast<int>(l.peers.size()) != l.world)
      r.fail("peers", "must name every rank (" + std::to_string(l.world) + ")");
  }
  return first_error_or(errors, std::move(l));
}

Result<RvAll> decode_rv_all(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "rv_all", errors);
  RvAll out;
  read_job(r, out.job, out.attempt);
  r.integer("round", out.round, true, 0, kMaxRounds);
  if (const json* blobs = r.array("blobs", true, kMaxWorld)) {
    for (const json& b : *blobs) {
      if (!b.is_string() || b.get_ref<const std::string&>().size() > kMaxBlobBytes) {
        r.fail("blobs", "must be an array of strings of at most 1 MiB");
        break;
      }
      out.blobs.push_back(b.get<std::string>());
    }
  }
  return first_error_or(errors, std::move(out));
}

Result<Stop> decode_stop(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "stop", errors);
  Stop out;
  read_job(r, out.job, out.attempt);
  out.reason = read_reason(r);
  return first_error_or(errors, std::move(out));
}

Result<CheckpointOrder> decode_checkpoint_order(const json& m) {
  std::vector<Error> errors;
  FieldReader r(m, "checkpoint", errors);
  CheckpointOrder out;
  read_job(r, out.job, out.attempt);
  r.boolean("stop", out.stop);
  return first_error_or(errors, std::move(out));
}

}  // namespace mohge::proto
