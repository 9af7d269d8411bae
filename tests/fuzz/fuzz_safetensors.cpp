// The safetensors reader on any file (a checkpoint on shared storage may be truncated or
// corrupt), both as one file and as a sharded checkpoint whose index is the input: opening
// and reading every tensor returns data or an error, never a crash or an out-of-bounds read.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "storage/safetensors.hpp"
#include "storage/sharded.hpp"
#include "tests/fuzz/fuzz_util.hpp"

namespace {

void read_all(const mohge::SafetensorsFile& f) {
  for (const mohge::SafetensorsEntry& e : f.entries()) {
    int64_t n = 1;
    for (int64_t d : e.shape) n = d > 0 && n < (int64_t{1} << 24) / d ? n * d : int64_t{1} << 24;
    if (n >= (int64_t{1} << 24)) continue;  // too large to allocate here; the reader checks sizes
    if (e.dtype == "F32") {
      std::vector<float> out(static_cast<size_t>(n));
      (void)f.read_f32(e.name, e.shape, out.data());
    } else if (e.dtype == "I64") {
      std::vector<int64_t> out(static_cast<size_t>(n));
      (void)f.read_i64(e.name, e.shape, out.data());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto dir = mohge::fuzz::scratch();
  // 1. The input as a single safetensors file.
  mohge::fuzz::write_file(dir / "model.safetensors", data, size);
  if (auto f = mohge::SafetensorsFile::open(dir / "model.safetensors"); f.ok()) read_all(f.value());
  // 2. The input as the index of a sharded checkpoint whose one shard is a valid small file.
  static bool shard_written = false;
  if (!shard_written) {
    shard_written = true;
    std::vector<float> w(6, 1.0f);
    mohge::SafetensorsWriter writer;
    writer.add_f32("w", {2, 3}, w.data());
    (void)writer.write(dir / "shard.safetensors");
  }
  std::filesystem::remove(dir / "model.safetensors");
  mohge::fuzz::write_file(dir / "model.safetensors.index.json", data, size);
  if (auto src = mohge::TensorSource::open(dir, "model"); src.ok()) {
    std::vector<float> out(6);
    for (const std::string& name : src.value().names())
      (void)src.value().read_f32(name, {2, 3}, out.data());
  }
  std::filesystem::remove(dir / "model.safetensors.index.json");
  return 0;
}
