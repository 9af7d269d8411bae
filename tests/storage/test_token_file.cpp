// Token files in the llm.c layout: round trip, header fields, refusal of bad files.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "storage/token_file.hpp"

namespace mohge {
namespace {

namespace fs = std::filesystem;

fs::path temp(const std::string& name) {
  return fs::path(::testing::TempDir()) / ("tok-" + std::to_string(::getpid()) + "-" + name);
}

void write_raw(const fs::path& p, int32_t magic, int32_t version, int32_t count, int body_tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), 1024);
  std::vector<uint16_t> body(static_cast<size_t>(body_tokens), 7);
  out.write(reinterpret_cast<const char*>(body.data()), body_tokens * 2);
}

TEST(TokenFile, RoundTripWithTheLlmcHeader) {
  const std::vector<uint16_t> tokens = {0, 1, 65535, 300, 2};
  const fs::path p = temp("ok.bin");
  ASSERT_TRUE(token_file_write(p, tokens).ok());
  EXPECT_EQ(fs::file_size(p), 1024u + 10u);
  std::ifstream in(p, std::ios::binary);
  int32_t header[3];
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 5);
  Result<std::vector<uint16_t>> back = token_file_read(p);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back.value(), tokens);
  fs::remove(p);
}

TEST(TokenFile, RefusesWrongMagicVersionAndSize) {
  const fs::path p = temp("bad.bin");
  write_raw(p, 20240521, 1, 4, 4);
  Result<std::vector<uint16_t>> r = token_file_read(p);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("magic 20240521, expected 20240520"), std::string::npos)
      << r.error().message;

  write_raw(p, 20240520, 2, 4, 4);
  r = token_file_read(p);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("version 2"), std::string::npos) << r.error().message;

  write_raw(p, 20240520, 1, 10, 4);  // header promises more than the body holds
  r = token_file_read(p);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kDataLoss);
  EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;

  write_raw(p, 20240520, 1, 2, 4);  // trailing bytes
  r = token_file_read(p);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kDataLoss);

  write_raw(p, 20240520, 1, -4, 4);
  r = token_file_read(p);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("negative"), std::string::npos) << r.error().message;

  std::ofstream(p, std::ios::binary | std::ios::trunc) << "short";
  r = token_file_read(p);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("header"), std::string::npos);

  fs::remove(p);
  EXPECT_EQ(token_file_read(p).error().code, ErrorCode::kNotFound);
}

}  // namespace
}  // namespace mohge
