// The control-plane messages as typed values (api/PROTOCOL.md). Every message a peer sends is
// decoded here before any handler sees it: each field is checked for its type and range,
// strings and arrays are bounded, and a message that breaks a rule becomes an Error naming the
// field and the rule ("hello.protocol: must be an integer"). Handlers take these structs, never
// the raw JSON, so nothing a peer sends reaches a JSON accessor that could throw.
//
// Decoders are pure functions of their input; they never throw (a bug that would make one
// throw is caught at the connection's dispatch boundary, which closes the connection).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/result.hpp"

namespace mohge::proto {

constexpr size_t kMaxWorkerNameBytes = 64;    // [A-Za-z0-9._-]
constexpr size_t kMaxTextBytes = 256;         // host, version, instance, secret
constexpr size_t kMaxReasonBytes = 4096;      // error and refusal messages
constexpr size_t kMaxLogLineBytes = 4096;     // longer log lines are cut (on a UTF-8 boundary)
constexpr size_t kMaxLogLines = 1000;         // per log message
constexpr size_t kMaxRunning = 1024;          // ranks one worker may report running
constexpr size_t kMaxDevices = 64;            // devices one worker may announce
constexpr size_t kMaxDeviceNameBytes = 128;   // a device's model name
constexpr size_t kMaxPeerNameBytes = 128;     // a launch's peers[].worker and .host
constexpr size_t kMaxBlobBytes = 1 << 20;     // a rendezvous blob (base64 of a UCX address)
constexpr size_t kMaxRecords = 1000;          // metric records per message
constexpr size_t kMaxCheckpointFiles = 4096;  // files one rank reports for a checkpoint
constexpr int kMaxWorld = 4096;

/// The attempt fence: a file in a job's run folder holding the number of the attempt that owns
/// the folder. The coordinator writes it before launching an attempt; every rank verifies it
/// before writing into the folder, so a rank of a superseded attempt writes nothing more.
inline constexpr const char* kAttemptFenceFile = "attempt";
constexpr int kMaxRounds = 1000;  // rendezvous rounds per attempt

/// One rank of one attempt of a job, as a worker reports it running.
struct RunningRank {
  int64_t job = 0;
  int attempt = 0;
  int rank = 0;
  int world = 0;
  int64_t step = 0;
};

// ---- worker → coordinator -----------------------------------------------------------------

struct Hello {
  int protocol = 0;
  std::string name;      // unique per cluster: 1–64 of [A-Za-z0-9._-]
  std::string instance;  // random per daemon process: a reconnect of the same daemon
  std::string secret;    // the cluster join secret
  std::string host;
  std::string backend = "cpu";  // cpu | cuda
  std::string version;
  nlohmann::json devices = nlohmann::json::array();  // [{index, kind, cores?, name?, memory_mb?}]
  int threads = 0;
  std::vector<RunningRank> running;
};

/// One GPU of a worker, as NVML sees it in a heartbeat.
struct GpuLoad {
  int index = 0;
  double utilization_pct = 0;  // 0–100
  int64_t memory_used_mb = 0;
  int64_t memory_total_mb = 0;
};

/// At most this many GPUs per heartbeat are kept.
inline constexpr size_t kMaxHeartbeatGpus = 16;

/// Host utilisation; only these figures are kept (and shown on the dashboard).
struct Load {
  double load1 = 0;
  int64_t rss_bytes = 0;
  int cores = 0;
  std::vector<GpuLoad> gpus;
  nlohmann::json to_json() const;
};

struct Heartbeat {
  std::vector<RunningRank> running;
  Load load;
};

struct RvPublish {
  int round = 0;
  std::string blob;  // base64
};
struct MetricsReport {
  nlohmann::json records;  // array of records, each checked by check_metric_record
};
struct LogReport {
  std::optional<double> at;
  std::vector<std::string> lines;  // each at most kMaxLogLineBytes
};
struct FileEntry {
  std::string name;  // a plain file name (no '/')
  int64_t bytes = 0;
  std::string sha256;  // 64 lowercase hex digits
};
struct CheckpointWritten {
  int world = 1;
  int64_t step = 0;
  int keep = 3;
  std::string path;  // relative to the storage root; confined by the coordinator
  std::vector<FileEntry> files;
};
struct RankExited {
  bool ok = false;
  bool stopped = false;
  int64_t step = 0;
  std::string error_code, error_message;
  // error_code "unreachable": the peer ranks this rank could not reach over the data plane.
  std::vector<int> unreachable;
};

/// A report about one rank of one attempt: rv_publish, metrics, log, checkpoint_written or
/// rank_exited. `seq` numbers it for the acknowledgement (PROTOCOL.md, Session 4).
struct Report {
  std::string type;
  std::optional<int64_t> seq;
  int64_t job = 0;
  int attempt = 0;
  int rank = 0;
  std::variant<RvPublish, MetricsReport, LogReport, CheckpointWritten, RankExited> body;
};

/// True for the five report types above.
bool is_report_type(const std::string& type);

Result<Hello> decode_hello(const nlohmann::json& m);
Result<Heartbeat> decode_heartbeat(const nlohmann::json& m);
Result<Report> decode_report(const nlohmann::json& m);

/// A metric record (DESIGN §7): an object with an integer "step" whose other values are
/// numbers, booleans, or arrays and objects of those (at most 6 levels, 4096 elements per
/// array, 256 keys per object, keys of [A-Za-z0-9_.] up to 64 bytes). No strings: nothing in a
/// record can carry markup to the dashboard.
Status check_metric_record(const nlohmann::json& record, const std::string& field);

/// `text` cut to at most `max_bytes` bytes without splitting a UTF-8 sequence.
std::string utf8_prefix(const std::string& text, size_t max_bytes);

// ---- coordinator → worker -----------------------------------------------------------------

struct Welcome {
  int protocol = 0;
  double heartbeat_s = 1.0;
  std::string coordinator_version;
};
struct Refused {
  std::string reason;
  bool retry = false;  // a passing condition (e.g. the name's old connection is still open)
};
/// The coordinator could not accept a message (it closes the connection after this frame).
/// `seq`: the report it refused, which the worker must not send again.
struct ErrorFrame {
  std::string reason;
  std::optional<int64_t> seq;
};
struct Ack {
  std::vector<int64_t> seqs;
};
struct Launch {
  int64_t job = 0;
  int attempt = 0;
  int rank = 0;
  int world = 1;
  nlohmann::json spec;  // parsed by parse_job_spec where it is used
  std::string run_dir;  // relative to the storage root, no ".."
  bool resume = false;
  double comm_timeout_s = 60.0;
  // Per rank, the worker that runs it and that worker's host: named in data-plane errors, and
  // ranks on different hosts never use shared memory. Optional; when present, one entry per
  // rank, each name printable ASCII of at most kMaxPeerNameBytes.
  struct Peer {
    std::string worker, host;
  };
  std::vector<Peer> peers;
};
struct RvAll {
  int64_t job = 0;
  int attempt = 0;
  int round = 0;
  std::vector<std::string> blobs;  // base64, one per rank
};
/// cancel or abort.
struct Stop {
  int64_t job = 0;
  int attempt = 0;
  std::string reason;
};
struct CheckpointOrder {
  int64_t job = 0;
  int attempt = 0;
  bool stop = false;
};

Result<Welcome> decode_welcome(const nlohmann::json& m);
Result<Refused> decode_refused(const nlohmann::json& m);
Result<ErrorFrame> decode_error(const nlohmann::json& m);
Result<Ack> decode_ack(const nlohmann::json& m);
Result<Launch> decode_launch(const nlohmann::json& m);
Result<RvAll> decode_rv_all(const nlohmann::json& m);
Result<Stop> decode_stop(const nlohmann::json& m);
Result<CheckpointOrder> decode_checkpoint_order(const nlohmann::json& m);

}  // namespace mohge::proto
