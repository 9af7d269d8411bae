#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "storage/sha256.hpp"

namespace mohge {
namespace {

// FIPS 180-2 test vector, from a string and from a file.
TEST(Sha256, MatchesTheStandardVectorForStringsAndFiles) {
  const std::string abc_hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  EXPECT_EQ(sha256_hex("abc"), abc_hash);
  const auto file = std::filesystem::temp_directory_path() / "mohge-sha256-abc.txt";
  std::ofstream(file) << "abc";
  Result<std::string> h = file_sha256(file);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h.value(), abc_hash);
  std::filesystem::remove(file);
  EXPECT_FALSE(file_sha256(file).ok());
}

}  // namespace
}  // namespace mohge
