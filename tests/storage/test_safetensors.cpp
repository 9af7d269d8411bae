// safetensors: round trip, the exact byte layout, refusal of damaged files and bad input,
// each error naming the problem.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "storage/safetensors.hpp"
#include "storage/sharded.hpp"

namespace mohge {
namespace {

namespace fs = std::filesystem;

fs::path temp(const std::string& name) {
  return fs::path(::testing::TempDir()) / ("st-" + std::to_string(::getpid()) + "-" + name);
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_all(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return s;
}

// A file with the given header text (padded to 8) and `data_bytes` zero bytes of data.
std::string raw_file(std::string header, size_t data_bytes) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

// The message of the error open() gives for `bytes`; fails the test if it opens.
std::string open_error(const std::string& bytes) {
  const fs::path p = temp("crafted.safetensors");
  write_all(p, bytes);
  Result<SafetensorsFile> f = SafetensorsFile::open(p);
  fs::remove(p);
  EXPECT_FALSE(f.ok());
  if (f.ok()) return "";
  EXPECT_EQ(f.error().code, ErrorCode::kDataLoss) << f.error().message;
  EXPECT_NE(f.error().message.find(p.string()), std::string::npos) << "names the path";
  return f.error().message;
}

TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const std::vector<int64_t> b = {42, -7};
  SafetensorsWriter w;
  w.add_f32("zeta.weight", {2, 3}, a.data());  // added first, sorts last by name
  w.add_i64("alpha.step", {2}, b.data());
  w.add_f32("empty", {0, 3}, nullptr);
  w.set_metadata("mohge_spec", R"({"name":"x"})");
  w.set_metadata("step", "12");
  const fs::path p = temp("round.safetensors");
  ASSERT_TRUE(w.write(p).ok());

  Result<SafetensorsFile> f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  EXPECT_EQ(f.value().metadata().at("mohge_spec"), R"({"name":"x"})");
  EXPECT_EQ(f.value().metadata().at("step"), "12");
  ASSERT_EQ(f.value().entries().size(), 3u);
  EXPECT_EQ(f.value().entries()[0].name, "zeta.weight") << "entries in data-section order";
  EXPECT_EQ(f.value().entries()[1].name, "alpha.step");
  std::vector<float> a2(6);
  ASSERT_TRUE(f.value().read_f32("zeta.weight", {2, 3}, a2.data()).ok());
  EXPECT_EQ(a2, a);
  std::vector<int64_t> b2(2);
  ASSERT_TRUE(f.value().read_i64("alpha.step", {2}, b2.data()).ok());
  EXPECT_EQ(b2, b);
  EXPECT_TRUE(f.value().read_f32("empty", {0, 3}, nullptr).ok());
  EXPECT_TRUE(f.value().contains("empty"));
  EXPECT_FALSE(f.value().contains("missing"));
  fs::remove(p);
}

TEST(Safetensors, ByteLayoutIsExact) {
  const std::vector<float> a = {1.0f, 2.0f};
  SafetensorsWriter w;
  w.add_f32("t", {2}, a.data());
  w.set_metadata("k", "v");
  const fs::path p = temp("layout.safetensors");
  ASSERT_TRUE(w.write(p).ok());
  const std::string bytes = read_all(p);

  // 79 bytes of JSON + 1 space of padding = 80, a multiple of 8; then 2 floats.
  const std::string json_text =
      R"({"__metadata__":{"k":"v"},"t":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}})";
  ASSERT_EQ(json_text.size(), 79u);
  std::string expected = le64(80) + json_text + " ";
  expected.append(reinterpret_cast<const char*>(a.data()), 8);
  EXPECT_EQ(bytes, expected);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x50\0\0\0\0\0\0\0", 8)) << "length 80, LE";
  fs::remove(p);
}

TEST(Safetensors, RefusesDamagedFilesWithTheReason) {
  const std::vector<float> a(16, 1.0f);
  SafetensorsWriter w;
  w.add_f32("w", {4, 4}, a.data());
  const fs::path p = temp("damaged.safetensors");
  ASSERT_TRUE(w.write(p).ok());
  const std::string good = read_all(p);
  fs::remove(p);

  EXPECT_NE(open_error(good.substr(0, good.size() - 4)).find("tensor w: data_offsets [0, 64)"),
            std::string::npos);
  EXPECT_NE(open_error(good.substr(0, 20)).find("header length"), std::string::npos);
  EXPECT_NE(open_error("abc").find("shorter than the 8-byte header length"), std::string::npos);
  std::string bad_json = good;
  bad_json[9] = '#';
  EXPECT_NE(open_error(bad_json).find("not JSON"), std::string::npos);
  EXPECT_NE(open_error(raw_file("[1,2]", 0)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(open_error(good + "xxxx").find("cover 64 of the 68"), std::string::npos);
}

// An index whose weight_map is empty (found by fuzz_safetensors: it made the source look like
// a single file that was never opened, and listing its names read past an empty map).
TEST(Safetensors, ShardedIndexWithoutTensorsOrWithAMissingShardIsRefused) {
  const fs::path dir = temp("sharded");
  fs::create_directories(dir);
  write_all(dir / "model.safetensors.index.json", R"({"metadata": {}, "weight_map": {}})");
  Result<TensorSource> empty = TensorSource::open(dir, "model");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().code, ErrorCode::kDataLoss);
  EXPECT_NE(empty.error().message.find("maps no tensors"), std::string::npos)
      << empty.error().message;

  write_all(dir / "model.safetensors.index.json",
            R"({"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}})");
  Result<TensorSource> missing = TensorSource::open(dir, "model");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("maps w to model-00001-of-00001.safetensors, which is "
                                         "missing"),
            std::string::npos)
      << missing.error().message;

  const std::vector<float> a(6, 2.0f);
  SafetensorsWriter w;
  w.add_f32("w", {2, 3}, a.data());
  ASSERT_TRUE(w.write(dir / "model-00001-of-00001.safetensors").ok());
  Result<TensorSource> good = TensorSource::open(dir, "model");
  ASSERT_TRUE(good.ok()) << good.error().message;
  EXPECT_EQ(good.value().names(), std::vector<std::string>{"w"});
  std::vector<float> out(6);
  ASSERT_TRUE(good.value().read_f32("w", {2, 3}, out.data()).ok());
  EXPECT_EQ(out, a);
  fs::remove_all(dir);
}

TEST(Safetensors, RefusesInconsistentHeadersNamingTheTensor) {
  // Byte count ≠ dtype size × shape product.
  EXPECT_NE(open_error(raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20))
                .find("tensor w: 20 bytes, but shape (2, 3) of F32 needs 24"),
            std::string::npos);
  EXPECT_NE(open_error(raw_file(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2))
                .find("tensor w: unknown dtype Q4"),
            std::string::npos);
  EXPECT_NE(open_error(raw_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8))
                .find("tensor w: shape [-2] must hold non-negative integers"),
            std::string::npos);
  EXPECT_NE(open_error(raw_file(R"({"w":{"dtype":"F32","shape":[2]}})", 8))
                .find("tensor w: needs \"data_offsets\""),
            std::string::npos);
  EXPECT_NE(
      open_error(
          raw_file(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})",
                   8))
          .find("too large"),
      std::string::npos);
  // Overlap, hole.
  EXPECT_NE(open_error(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                8))
                .find("tensors a and b overlap"),
            std::string::npos);
  EXPECT_NE(open_error(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                12))
                .find("bytes [4, 8) belong to no tensor"),
            std::string::npos);
  EXPECT_NE(open_error(raw_file(R"({"__metadata__":{"step":3}})", 0))
                .find("__metadata__ value step is not a string"),
            std::string::npos);
}

TEST(Safetensors, ReadNamesTheTensorOnWrongShapeOrDtype) {
  const std::vector<float> a(16, 1.0f);
  SafetensorsWriter w;
  w.add_f32("w", {4, 4}, a.data());
  const fs::path p = temp("shape.safetensors");
  ASSERT_TRUE(w.write(p).ok());
  Result<SafetensorsFile> f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  std::vector<float> dst(16);
  Status s = f.value().read_f32("w", {2, 8}, dst.data());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("tensor w has shape (4, 4), expected (2, 8)"), std::string::npos)
      << s.error().message;
  std::vector<int64_t> idst(16);
  s = f.value().read_i64("w", {4, 4}, idst.data());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("tensor w is F32, expected I64"), std::string::npos);
  s = f.value().read_f32("missing", {4, 4}, dst.data());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("no tensor missing"), std::string::npos);
  fs::remove(p);
  EXPECT_EQ(SafetensorsFile::open(temp("absent")).error().code, ErrorCode::kNotFound);
}

TEST(Safetensors, WriterRefusesBadInputAndLeavesNoFile) {
  const std::vector<float> a(4, 1.0f);
  const fs::path p = temp("refused.safetensors");
  auto refusal = [&](const SafetensorsWriter& w) {
    Status s = w.write(p);
    EXPECT_FALSE(s.ok());
    EXPECT_FALSE(fs::exists(p));
    return s.ok() ? std::string() : s.error().message;
  };
  SafetensorsWriter dup;
  dup.add_f32("w", {4}, a.data());
  dup.add_f32("w", {4}, a.data());
  EXPECT_NE(refusal(dup).find("tensor w is added twice"), std::string::npos);
  SafetensorsWriter reserved;
  reserved.add_f32("__metadata__", {4}, a.data());
  EXPECT_NE(refusal(reserved).find("reserved"), std::string::npos);
  SafetensorsWriter negative;
  negative.add_f32("w", {-1, 4}, a.data());
  EXPECT_NE(refusal(negative).find("tensor w has shape (-1, 4)"), std::string::npos);
  SafetensorsWriter no_data;
  no_data.add_f32("w", {4}, nullptr);
  EXPECT_NE(refusal(no_data).find("tensor w has no data"), std::string::npos);
  SafetensorsWriter latin1;
  latin1.add_f32("caf\xe9", {4}, a.data());
  EXPECT_NE(refusal(latin1).find("UTF-8"), std::string::npos);
}

}  // namespace
}  // namespace mohge
