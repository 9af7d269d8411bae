// safetensors: round trip, the exact byte layout, and refusal of damaged files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "storage/safetensors.hpp"

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
  std::ofstream(p, std::ios::binary) << bytes;
}

TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const std::vector<int64_t> b = {42, -7};
  SafetensorsWriter w;
  w.add_f32("model.a.weight", {2, 3}, a.data());
  w.add_i64("state.b", {2}, b.data());
  w.set_metadata("mohge_spec", R"({"name":"x"})");
  const fs::path p = temp("round.safetensors");
  ASSERT_TRUE(w.write(p).ok());

  Result<SafetensorsFile> f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  EXPECT_EQ(f.value().metadata().at("mohge_spec"), R"({"name":"x"})");
  ASSERT_EQ(f.value().entries().size(), 2u);
  std::vector<float> a2(6);
  ASSERT_TRUE(f.value().read_f32("model.a.weight", {2, 3}, a2.data()).ok());
  EXPECT_EQ(a2, a);
  std::vector<int64_t> b2(2);
  ASSERT_TRUE(f.value().read_i64("state.b", {2}, b2.data()).ok());
  EXPECT_EQ(b2, b);
  fs::remove(p);
}

TEST(Safetensors, ByteLayoutFollowsTheFormat) {
  const std::vector<float> a = {1.0f, 2.0f};
  SafetensorsWriter w;
  w.add_f32("t", {2}, a.data());
  const fs::path p = temp("layout.safetensors");
  ASSERT_TRUE(w.write(p).ok());
  const std::string bytes = read_all(p);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u) << "header padded to a multiple of 8";
  EXPECT_EQ(bytes.size(), 8 + n + 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["t"]["dtype"], "F32");
  EXPECT_EQ(header["t"]["shape"], nlohmann::json::array({2}));
  EXPECT_EQ(header["t"]["data_offsets"], nlohmann::json::array({0, 8}));
  float back[2];
  std::memcpy(back, bytes.data() + 8 + n, 8);
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], 2.0f);
  fs::remove(p);
}

TEST(Safetensors, RefusesDamagedFilesWithTheReason) {
  const std::vector<float> a(16, 1.0f);
  SafetensorsWriter w;
  w.add_f32("w", {4, 4}, a.data());
  const fs::path p = temp("damaged.safetensors");
  ASSERT_TRUE(w.write(p).ok());
  const std::string good = read_all(p);

  write_all(p, good.substr(0, good.size() - 4));  // truncated data
  Result<SafetensorsFile> f = SafetensorsFile::open(p);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, ErrorCode::kDataLoss);
  EXPECT_NE(f.error().message.find("outside"), std::string::npos) << f.error().message;

  write_all(p, good.substr(0, 20));  // header cut
  f = SafetensorsFile::open(p);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message.find("header length"), std::string::npos) << f.error().message;

  std::string bad_json = good;
  bad_json[9] = '#';
  write_all(p, bad_json);
  f = SafetensorsFile::open(p);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message.find("not JSON"), std::string::npos) << f.error().message;

  write_all(p, good);
  f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.ok());
  std::vector<float> dst(16);
  Status s = f.value().read_f32("w", {2, 8}, dst.data());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("tensor w has shape (4, 4), expected (2, 8)"), std::string::npos)
      << s.error().message;
  s = f.value().read_f32("missing", {4, 4}, dst.data());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("no tensor missing"), std::string::npos);
  EXPECT_EQ(SafetensorsFile::open(temp("absent")).error().code, ErrorCode::kNotFound);
  fs::remove(p);
}

}  // namespace
}  // namespace mohge
