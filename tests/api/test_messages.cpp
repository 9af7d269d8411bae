// Control-plane message decoding (api/messages.hpp): every field checked, bounded, and named
// in the error; nothing a peer sends can make a decoder throw.
#include <gtest/gtest.h>

#include "api/job_spec.hpp"
#include "api/messages.hpp"
#include "api/paths.hpp"

namespace mohge::proto {
namespace {

using nlohmann::json;

json good_hello() {
  return {{"type", "hello"},
          {"protocol", 2},
          {"name", "gpu-07"},
          {"secret", "s3cret"},
          {"instance", "abc"},
          {"host", "node7"},
          {"backend", "cuda"},
          {"devices", json::array({{{"index", 0}, {"kind", "cuda"}}})},
          {"threads", 4},
          {"running", json::array({{{"job", 3}, {"attempt", 2}, {"rank", 1}, {"world", 2}}})}};
}

TEST(Messages, AGoodHelloDecodes) {
  const Result<Hello> h = decode_hello(good_hello());
  ASSERT_TRUE(h.ok()) << h.error().to_string();
  EXPECT_EQ(h.value().name, "gpu-07");
  EXPECT_EQ(h.value().backend, "cuda");
  ASSERT_EQ(h.value().running.size(), 1u);
  EXPECT_EQ(h.value().running[0].job, 3);
  EXPECT_EQ(h.value().running[0].attempt, 2);
  EXPECT_EQ(h.value().devices[0]["kind"], "cuda");
}

// A GPU announces its model and memory; both are checked and kept, unknown device fields are
// not passed on.
TEST(Messages, AGpusNameAndMemoryAreKept) {
  json m = good_hello();
  m["devices"] = json::array(
      {{{"index", 1}, {"kind", "cuda"}, {"name", "NVIDIA H200"}, {"memory_mb", 143771}, {"x", 1}}});
  const Result<Hello> h = decode_hello(m);
  ASSERT_TRUE(h.ok()) << h.error().to_string();
  EXPECT_EQ(h.value().devices[0]["name"], "NVIDIA H200");
  EXPECT_EQ(h.value().devices[0]["memory_mb"], 143771);
  EXPECT_FALSE(h.value().devices[0].contains("x"));
  for (const json& bad : {json{{"index", 0}, {"kind", "cuda"}, {"name", std::string(200, 'n')}},
                          json{{"index", 0}, {"kind", "cuda"}, {"name", 5}},
                          json{{"index", 0}, {"kind", "cuda"}, {"memory_mb", -1}}}) {
    m["devices"] = json::array({bad});
    const Result<Hello> r = decode_hello(m);
    ASSERT_FALSE(r.ok()) << bad.dump();
    EXPECT_EQ(r.error().field.rfind("hello.devices[0].", 0), 0u) << r.error().to_string();
  }
}

// A heartbeat carries each GPU's utilisation and memory (NVML); the figures are bounded,
// kept, and only they are passed on.
TEST(Messages, AHeartbeatsGpuFiguresAreCheckedAndKept) {
  const json gpu = {{"index", 1},
                    {"utilization_pct", 87.5},
                    {"memory_used_mb", 61440},
                    {"memory_total_mb", 143771},
                    {"x", "<script>"}};
  json m = {{"type", "heartbeat"},
            {"running", json::array()},
            {"load", {{"load1", 1.5}, {"cores", 16}, {"gpus", json::array({gpu})}}}};
  const Result<Heartbeat> h = decode_heartbeat(m);
  ASSERT_TRUE(h.ok()) << h.error().to_string();
  ASSERT_EQ(h.value().load.gpus.size(), 1u);
  const json out = h.value().load.to_json();
  EXPECT_EQ(out["gpus"][0]["utilization_pct"], 87.5);
  EXPECT_EQ(out["gpus"][0]["memory_used_mb"], 61440);
  EXPECT_EQ(out["gpus"][0]["memory_total_mb"], 143771);
  EXPECT_FALSE(out["gpus"][0].contains("x"));
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, json>>{{"utilization_pct", 100.5},
                                                 {"utilization_pct", "87"},
                                                 {"memory_used_mb", -1},
                                                 {"memory_total_mb", 1e300},
                                                 {"index", 5000}}) {
    json bad = gpu;
    bad[key] = value;
    m["load"]["gpus"] = json::array({bad});
    const Result<Heartbeat> r = decode_heartbeat(m);
    ASSERT_FALSE(r.ok()) << key << " = " << value.dump();
    EXPECT_EQ(r.error().field, "heartbeat.load.gpus[0]." + key) << r.error().to_string();
  }
  m["load"]["gpus"] = json::array();
  for (int i = 0; i < 17; ++i) m["load"]["gpus"].push_back(gpu);
  const Result<Heartbeat> many = decode_heartbeat(m);
  ASSERT_FALSE(many.ok());
  EXPECT_EQ(many.error().field, "heartbeat.load.gpus") << many.error().to_string();
  m["load"]["gpus"] = "all of them";
  EXPECT_FALSE(decode_heartbeat(m).ok());
}

TEST(Messages, EveryBadHelloFieldIsNamed) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"protocol", "2"},
      {"name", 7},
      {"name", ""},
      {"name", "a b"},
      {"name", "<img>"},
      {"backend", "tpu"},
      {"threads", 1.5},
      {"threads", -3},
      {"devices", json::object()},
      {"devices", json::array({"cuda:0"})},
      {"running", json::array({{{"job", 0}, {"attempt", 1}, {"rank", 0}, {"world", 1}}})},
      {"running", json::array({{{"job", 1}, {"attempt", 1}, {"rank", 0}, {"world", 99999}}})},
      {"secret", std::string(1000, 's')},
      {"host", json::array()}};
  for (const auto& [field, value] : cases) {
    json m = good_hello();
    m[field] = value;
    const Result<Hello> h = decode_hello(m);
    ASSERT_FALSE(h.ok()) << field << " = " << value.dump();
    EXPECT_EQ(h.error().field.rfind("hello." + field, 0), 0u)
        << field << ": " << h.error().to_string();
  }
  EXPECT_FALSE(decode_hello(json::array()).ok());
  EXPECT_FALSE(decode_hello(json("hello")).ok());
}

TEST(Messages, ReportsCarryTheirJobRankAndCheckedBody) {
  const json m = {{"type", "checkpoint_written"},
                  {"seq", 9},
                  {"job", 4},
                  {"attempt", 1},
                  {"rank", 1},
                  {"world", 2},
                  {"step", 100},
                  {"keep", 2},
                  {"path", "runs/job-4/checkpoints/step-00000100"},
                  {"files", json::array({{{"name", "model-00002-of-00002.safetensors"},
                                          {"bytes", 10},
                                          {"sha256", std::string(64, 'e')}}})}};
  const Result<Report> r = decode_report(m);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r.value().seq, 9);
  EXPECT_EQ(r.value().job, 4);
  EXPECT_EQ(r.value().rank, 1);
  const auto& ck = std::get<CheckpointWritten>(r.value().body);
  EXPECT_EQ(ck.world, 2);
  EXPECT_EQ(ck.files.at(0).bytes, 10);

  const std::vector<std::pair<std::string, json>> bad = {
      {"path", "/abs"},
      {"path", "runs/../../etc"},
      {"rank", 2},  // not below world
      {"world", 0},
      {"files", json::array({{{"name", "a/b"}, {"bytes", 1}, {"sha256", std::string(64, 'e')}}})},
      {"files", json::array({{{"name", "a"}, {"bytes", -1}, {"sha256", std::string(64, 'e')}}})},
      {"files", json::array({{{"name", "a"}, {"bytes", 1}, {"sha256", std::string(64, 'E')}}})},
      {"job", "4"},
      {"seq", -1}};
  for (const auto& [field, value] : bad) {
    json x = m;
    x[field] = value;
    EXPECT_FALSE(decode_report(x).ok()) << field << " = " << value.dump();
  }
}

TEST(Messages, LogLinesAreCutOnAUtf8Boundary) {
  std::string line(kMaxLogLineBytes - 1, 'a');
  line += "\xc3\xa9\xc3\xa9";  // "éé": the cut falls inside the first
  const Result<Report> r = decode_report(
      {{"type", "log"}, {"job", 1}, {"attempt", 1}, {"rank", 0}, {"lines", json::array({line})}});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  const std::string& cut = std::get<LogReport>(r.value().body).lines.at(0);
  EXPECT_EQ(cut.size(), kMaxLogLineBytes - 1);
  EXPECT_NO_THROW((void)json(cut).dump());  // still valid UTF-8
  EXPECT_EQ(utf8_prefix("abc", 10), "abc");
  EXPECT_EQ(utf8_prefix("\xe2\x82\xac", 2), "");  // "€" is 3 bytes
}

TEST(Messages, MetricRecordsHoldOnlyNumbers) {
  EXPECT_TRUE(check_metric_record(
                  {{"step", 3},
                   {"loss", 2.5},
                   {"layers", json::array({{{"ranks", json::array({{{"tokens", {1, 2}}}})}}})},
                   {"difficulty", {{"frequency", json::array({json::array({0.5, 0.5})})}}}},
                  "r")
                  .ok());
  EXPECT_FALSE(check_metric_record({{"loss", 2.5}}, "r").ok());                 // no step
  EXPECT_FALSE(check_metric_record({{"step", "3"}}, "r").ok());                 // not an integer
  EXPECT_FALSE(check_metric_record({{"step", 3}, {"note", "<b>"}}, "r").ok());  // a string
  EXPECT_FALSE(check_metric_record({{"step", 3}, {"<b>", 1}}, "r").ok());       // a bad key
  json deep = 1;
  for (int i = 0; i < 6; ++i) deep = json::array({deep});
  EXPECT_FALSE(check_metric_record({{"step", 3}, {"x", deep}}, "r").ok());
  const Status s = check_metric_record({{"step", 3}, {"layers", json::array({{{"x", "y"}}})}}, "r");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().field, "r.layers[0].x");
}

TEST(Messages, OrdersToWorkersAreChecked) {
  const json launch = {{"type", "launch"},
                       {"job", 2},
                       {"attempt", 1},
                       {"rank", 0},
                       {"world", 1},
                       {"spec", json::object()},
                       {"run_dir", "runs/job-2"}};
  EXPECT_TRUE(decode_launch(launch).ok());
  for (const auto& [field, value] :
       std::vector<std::pair<std::string, json>>{{"run_dir", "/tmp"},
                                                 {"run_dir", "../x"},
                                                 {"rank", 1},
                                                 {"spec", "x"},
                                                 {"comm_timeout_s", "soon"}}) {
    json x = launch;
    x[field] = value;
    EXPECT_FALSE(decode_launch(x).ok()) << field;
  }
  // peers: one {worker, host} per rank, printable ASCII, bounded.
  json with_peers = launch;
  with_peers["peers"] = json::array({{{"worker", "w1"}, {"host", "node-1"}}});
  const Result<Launch> decoded = decode_launch(with_peers);
  ASSERT_TRUE(decoded.ok()) << decoded.error().to_string();
  ASSERT_EQ(decoded.value().peers.size(), 1u);
  EXPECT_EQ(decoded.value().peers[0].host, "node-1");
  for (const json& bad : std::vector<json>{
           json::array(),                                                         // not per rank
           json::array({"w1"}),                                                   // not an object
           json::array({{{"worker", "w1"}}}),                                     // no host
           json::array({{{"worker", "w\u00e9"}, {"host", "h"}}}),                 // not ASCII
           json::array({{{"worker", "w1"}, {"host", "a\nb"}}}),                   // control char
           json::array({{{"worker", std::string(129, 'w')}, {"host", "h"}}})}) {  // too long
    json x = launch;
    x["peers"] = bad;
    const Result<Launch> r = decode_launch(x);
    ASSERT_FALSE(r.ok()) << bad.dump();
    EXPECT_EQ(r.error().field, "launch.peers") << bad.dump();
  }
  EXPECT_FALSE(decode_rv_all({{"job", 1}, {"attempt", 1}, {"round", 0}, {"blobs", {1}}}).ok());
  EXPECT_FALSE(decode_ack({{"seqs", {"1"}}}).ok());
  EXPECT_FALSE(decode_stop({{"job", 1}}).ok());
  EXPECT_TRUE(decode_stop({{"job", 1}, {"attempt", 2}, {"reason", "x"}}).ok());
  EXPECT_FALSE(decode_welcome({{"protocol", 2}, {"heartbeat_s", 0}}).ok());
}

TEST(Paths, OnlyRelativePathsWithoutDotDotAreConfined) {
  EXPECT_TRUE(path_is_confined("datasets/brown/train.bin"));
  EXPECT_TRUE(path_is_confined("a/./b"));
  for (const std::string& p : std::vector<std::string>{"", "/etc/passwd", "../x", "a/../../x",
                                                       "a/..", std::string("a\0b", 3)})
    EXPECT_FALSE(path_is_confined(p)) << p;
}

TEST(Paths, JobDataPathsMustStayInTheStorageRoot) {
  for (const char* p : {"/etc/passwd", "../outside.bin", "datasets/../../x.bin"}) {
    json spec = {{"name", "x"},
                 {"model",
                  {{"vocab_size", 32},
                   {"seq_len", 8},
                   {"layers", 1},
                   {"d_model", 8},
                   {"heads", 2},
                   {"ffn", {{"kind", "dense"}, {"width", 8}}}}},
                 {"data", {{"train", p}, {"val", "v.bin"}}},
                 {"train", {{"steps", 1}, {"batch_size", 1}, {"lr", 0.1}}}};
    const Result<JobSpec> s = parse_job_spec(spec);
    ASSERT_FALSE(s.ok()) << p;
    EXPECT_EQ(s.error().field, "data.train") << s.error().to_string();
  }
}

}  // namespace
}  // namespace mohge::proto
