// The token file reader (llm.c layout, storage/token_file.hpp) on any file: tokens or an
// error naming the problem, never a crash or a huge allocation from a header's claim.
#include <cstddef>
#include <cstdint>

#include "storage/token_file.hpp"
#include "tests/fuzz/fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = mohge::fuzz::scratch() / "tokens.bin";
  mohge::fuzz::write_file(file, data, size);
  (void)mohge::token_file_read(file);
  return 0;
}
